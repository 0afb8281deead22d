"""The MUC service's protocol handlers (Module API): which stanza goes to which part of the
service. Presence and messages to rooms and occupants arrive as hooks; IQs by payload.

XEP-0045 §6 (disco), §7 (occupants), §8-§10 (muc#admin, muc#owner); XEP-0199 and XEP-0410
(pings to rooms and occupants).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from lxml import etree

from components.muc import disco
from components.muc.names import QN_ADMIN_QUERY, QN_OWNER_QUERY
from components.muc.register import QN_REGISTER_QUERY
from components.muc.service import MucService
from core.xmpp.errors import StanzaError
from core.xmpp.module import Dispatcher, Identity, IqContext, IqHandler, Module, Target
from core.xmpp.ns import (
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_MUC,
    NS_PING,
    QN_DISCO_INFO,
    QN_DISCO_ITEMS,
    QN_PING,
)

Element = etree._Element


def build_module(service: Callable[[], MucService], name: str = "Chatrooms") -> Module:
    """The ``muc`` module; ``service`` returns the MucService once the process has one."""
    module = Module(
        "muc",
        spec="XEP-0045",
        features=[NS_MUC, NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING],
        identities=[Identity("conference", "text", name)],
    )

    @module.on("presence")
    async def on_presence(app: Any, stanza: Element) -> None:
        await service().handle_presence(stanza)

    @module.on("message")
    async def on_message(app: Any, stanza: Element) -> None:
        await service().handle_message(stanza)

    @module.on("link-down")
    async def on_link_down(app: Any, reason: str) -> None:
        # While the link is down the core may give our rooms to other instances.
        service().forget_all()

    @module.on("link-up")
    async def on_link_up(app: Any) -> None:
        service().forget_all()

    @module.iq("get", QN_DISCO_INFO, to="server")
    async def service_info(ctx: IqContext) -> Element:
        """§6.2: identity conference/text and the service's features."""
        if ctx.payload.get("node"):
            raise StanzaError("item-not-found")
        return disco.service_info(name)

    @module.iq("get", QN_DISCO_ITEMS, to="server")
    async def service_items(ctx: IqContext) -> Element:
        """§6.3: the public rooms."""
        if ctx.payload.get("node"):
            raise StanzaError("item-not-found")
        return disco.service_items(await service().public_rooms())

    @module.iq("get", QN_PING, to="server")
    async def ping_service(ctx: IqContext) -> None:
        """XEP-0199: the service is alive."""
        return None

    @module.iq("get", QN_DISCO_INFO, to="entity")
    async def room_info(ctx: IqContext) -> Element | None:
        """§6.4: a room's identity, features and muc#roominfo form."""
        if ctx.to.resource is not None:
            return await to_occupant(service(), ctx)
        return await service().room_info(ctx.sender, ctx.to, ctx.payload.get("node"))

    @module.iq("get", QN_DISCO_ITEMS, to="entity")
    async def room_items(ctx: IqContext) -> Element | None:
        """§6.5: a room's occupants, to occupants."""
        if ctx.to.resource is not None:
            return await to_occupant(service(), ctx)
        return await service().room_items(ctx.sender, ctx.to, ctx.payload.get("node"))

    @module.iq("get", QN_PING, to="entity")
    async def ping_entity(ctx: IqContext) -> Element | None:
        """XEP-0199 to a room; XEP-0410 self-ping to one's own occupant JID."""
        if ctx.to.resource is not None:
            return await to_occupant(service(), ctx)
        await service().ping_room(ctx.sender, ctx.to)
        return None

    for itype, qname, serve, with_payload in _ROOM_IQS:
        module.iq(itype, qname, to="entity")(_room_handler(service, serve, with_payload))
    return module


# IQs to a room's bare JID, each answered by one MucService method called with the sender, the
# room and, where the last column says so, the query: (type, payload, method, with the query).
_ROOM_IQS: tuple[tuple[str, str, Callable[..., Awaitable[Element | None]], bool], ...] = (
    # §8.5, §9.2, §9.5, §9.8, §10.5, §10.8: role and affiliation lists
    ("get", QN_ADMIN_QUERY, MucService.admin_get, True),
    # §8-§10: role and affiliation changes
    ("set", QN_ADMIN_QUERY, MucService.admin_set, True),
    # §10.2: the configuration form
    ("get", QN_OWNER_QUERY, MucService.owner_get, False),
    # §10.1.2, §10.1.3, §10.2, §10.9: configure, cancel, destroy
    ("set", QN_OWNER_QUERY, MucService.owner_set, True),
    # §7.10: the registration form, or the nick registered
    ("get", QN_REGISTER_QUERY, MucService.register_get, False),
    # §7.10: register with the room (membership with a reserved nick)
    ("set", QN_REGISTER_QUERY, MucService.register_set, True),
)


def _room_handler(
    service: Callable[[], MucService],
    serve: Callable[..., Awaitable[Element | None]],
    with_payload: bool,
) -> IqHandler:
    """The handler of an IQ that only a room's bare JID answers, served by ``serve``."""

    async def handler(ctx: IqContext) -> Element | None:
        _to_room(ctx)
        if with_payload:
            return await serve(service(), ctx.sender, ctx.to, ctx.payload)
        return await serve(service(), ctx.sender, ctx.to)

    handler.__name__ = handler.__qualname__ = serve.__name__
    return handler


async def to_occupant(service: MucService, ctx: IqContext) -> Element | None:
    """An IQ to an occupant JID: a self-ping answered here, or an IQ relayed to the occupant
    whose answer the component client sends when it comes (``answer_later``), so that the
    room's other stanzas are not held up behind a slow client."""
    relay = await service.occupant_iq(ctx.iq, ctx.sender, ctx.to)
    if relay is None:
        return None
    answer_later = getattr(ctx.host, "answer_later", None)
    if answer_later is None:
        return await relay
    answer_later(ctx.iq, relay)
    return None


def _to_room(ctx: IqContext) -> None:
    if ctx.to.resource is not None:
        raise StanzaError("bad-request", "send this to the room's bare JID")


class MucDispatcher(Dispatcher):
    """The Module API dispatcher, plus: any other IQ to an occupant JID is forwarded to that
    occupant (XEP-0045 §7.5 applied to IQs, e.g. vCard or version queries)."""

    def __init__(self, modules: list[Module], service: Callable[[], MucService]) -> None:
        super().__init__(modules)
        self._service = service

    def find_iq(self, type: str, qname: str, target: Target) -> IqHandler | None:
        handler = super().find_iq(type, qname, target)
        if handler is None and target == "entity":
            return self._forward
        return handler

    async def _forward(self, ctx: IqContext) -> Element | None:
        if ctx.to.resource is None:
            raise StanzaError("service-unavailable")
        return await to_occupant(self._service(), ctx)
