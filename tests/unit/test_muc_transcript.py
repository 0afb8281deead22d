"""The transcript harness of the MUC tests: stanzas go into a real MucService (on the test
session's Redis), the stanzas it sends come out and are compared as parsed trees.

Other ``test_muc_*`` modules import ``Muc`` and the ``muc`` fixture from here.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio
from lxml import etree

from components.muc.env import Env
from components.muc.handlers import MucDispatcher, build_module
from components.muc.service import MucService
from components.muc.settings import MucSettings
from components.muc.store import RoomStore
from core.xmpp.jid import parse_jid
from core.xmpp.module import run_iq
from core.xmpp.ns import NS_CLIENT, qn
from tests.unit.helpers import assert_xml

Element = etree._Element
SERVICE = "conference.localhost"
ROOM = "coven@conference.localhost"
T0 = 1_700_000_000.0
MUC = "http://jabber.org/protocol/muc"
USER = "http://jabber.org/protocol/muc#user"
OCC = "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='*'/>"


def stanza(text: str) -> Element:
    """One stanza written in a test, in the jabber:client namespace unless it says otherwise."""
    wrapper = etree.fromstring(f"<w xmlns='{NS_CLIENT}'>{text}</w>")
    return next(c for c in wrapper if isinstance(c.tag, str))


def expect(actual: Element | None, text: str) -> None:
    """Assert ``actual`` is the stanza ``text`` ('*' matches any value)."""
    assert_xml(actual, stanza(text))


def by_recipient(out: list[Element]) -> dict[str, list[Element]]:
    grouped: dict[str, list[Element]] = {}
    for el in out:
        grouped.setdefault(el.get("to", ""), []).append(el)
    return grouped


def statuses(el: Element) -> set[str]:
    return {s.get("code", "") for s in el.iter(qn(USER, "status"))}


def error_condition(el: Element) -> str | None:
    err = el.find(qn(NS_CLIENT, "error"))
    if err is None:
        return None
    for c in err:
        if c.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}") and not c.tag.endswith(
            "}text"
        ):
            return etree.QName(c).localname
    return None


class Muc:
    """A MUC service on Redis with a clock the test sets; ``send`` returns what it sent."""

    def __init__(self, client: redis.asyncio.Redis, settings: MucSettings | None = None) -> None:
        self.now = T0
        self.sent: list[Element] = []
        self.forwarded: list[Element] = []
        self.answer: Callable[[Element], Element] | None = None
        env = Env(
            SERVICE,
            settings or MucSettings(server_domain="localhost"),
            clock=lambda: self.now,
            new_secret=lambda: "room-secret",
        )
        self.service = MucService(RoomStore(client, SERVICE), env, self._sent, iq=self._iq)
        self.dispatcher = MucDispatcher([build_module(lambda: self.service)], lambda: self.service)

    def _sent(self, el: Element) -> None:
        # As the component client does, the stanza is done with on return (a groupchat
        # message is one element whose 'to' changes from one recipient to the next).
        self.sent.append(copy.deepcopy(el))

    async def _iq(self, iq: Element, timeout: float | None = None) -> Element:
        self.forwarded.append(iq)
        if self.answer is None:
            raise TimeoutError
        return self.answer(iq)

    async def send(self, text: str | Element) -> list[Element]:
        el = stanza(text) if isinstance(text, str) else text
        kind = etree.QName(el).localname
        reply = None
        if kind == "presence":
            await self.service.handle_presence(el)
        elif kind == "message":
            await self.service.handle_message(el)
        else:
            to = parse_jid(el.get("to", SERVICE))
            reply = await run_iq(
                self.dispatcher,
                el,
                sender=parse_jid(el.get("from", "")),
                to=to,
                target="entity" if to.local is not None else "server",
                host=None,
            )
        out = list(self.sent)
        self.sent.clear()
        if reply is not None:
            out.append(reply)
        return out

    async def join(
        self, full: str, nick: str, room: str = ROOM, extra: str = "", attrs: str = ""
    ) -> list[Element]:
        return await self.send(
            f"<presence from='{full}' to='{room}/{nick}'{attrs}>"
            f"<x xmlns='{MUC}'>{extra}</x></presence>"
        )

    async def create(self, full: str, nick: str, room: str = ROOM, **config: str) -> None:
        """An unlocked room owned by ``full``'s bare JID, configured with ``config``."""
        await self.join(full, nick, room)
        fields = "".join(
            f"<field var='{var}'><value>{value}</value></field>" for var, value in config.items()
        )
        out = await self.configure(full, fields, room)
        assert out[-1].get("type") == "result", etree.tostring(out[-1])

    async def configure(self, full: str, fields: str, room: str = ROOM) -> list[Element]:
        return await self.send(
            f"<iq type='set' id='cfg' from='{full}' to='{room}'>"
            "<query xmlns='http://jabber.org/protocol/muc#owner'>"
            "<x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value>"
            f"</field>{fields}</x></query></iq>"
        )


@pytest.fixture
def muc(redis_client: redis.asyncio.Redis) -> Iterator[Muc]:
    """A MUC service on the emptied session Redis."""
    yield Muc(redis_client)


Run = Callable[[Awaitable[Any]], Any]

# The cast of the XEP-0045 examples, shared by the test_muc_* transcripts.
CRONE = "crone1@shakespeare.lit/desktop"
WITCH = "wiccarocks@shakespeare.lit/laptop"
HAG = "hag66@shakespeare.lit/pda"


def witches_room(muc: Muc, run_async: Run, **config: str) -> None:
    """The room of the examples: CRONE creates it as firstwitch (with ``config``), then WITCH
    and HAG join as secondwitch and thirdwitch."""
    run_async(muc.create(CRONE, "firstwitch", **config))
    run_async(muc.join(WITCH, "secondwitch"))
    run_async(muc.join(HAG, "thirdwitch"))


def test_harness_parses_stanzas_in_the_client_namespace() -> None:
    """Stanzas written in tests are jabber:client stanzas with foreign payloads kept."""
    el = stanza(f"<presence to='a@b/c'><x xmlns='{MUC}'/></presence>")
    assert el.tag == qn(NS_CLIENT, "presence")
    assert el[0].tag == qn(MUC, "x")


def test_harness_sees_what_the_service_sends(muc: Muc, run_async: Run) -> None:
    """A join comes back as the stanzas the service sent, in order."""
    out = run_async(muc.join("hag66@shakespeare.lit/pda", "thirdwitch"))
    assert [etree.QName(el).localname for el in out] == ["presence", "message"]
