"""XEP-0030: Service Discovery of the server and of accounts.

The server's features are exactly those of the loaded modules; its items are the configured
components; its info carries the XEP-0157 contact addresses of the ``[contact]`` configuration
as an XEP-0128 extended form. An account's bare JID is answered by the server (identity
account/registered plus the identities and features the modules declare for accounts) to the
account itself and to contacts allowed to see its presence (§8); anyone else gets the
``service-unavailable`` that an unknown account gets for info, and an empty result for items
(an unknown account's items included, §8 rule 2), so disco does not reveal accounts.
Nodes are not served: any 'node' is ``item-not-found`` to those who may see the entity.
"""

from dataclasses import fields
from typing import Any

from lxml import etree

from core.storage.roster import RosterStore
from core.xmpp.errors import StanzaError
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import (
    NS_DATA,
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    QN_DISCO_INFO,
    QN_DISCO_ITEMS,
    qn,
)

module = Module("disco", spec="XEP-0030", features=[NS_DISCO_INFO, NS_DISCO_ITEMS])


def info_element(node: str | None, identities: list, features: list[str]) -> etree._Element:
    q = etree.Element(QN_DISCO_INFO, nsmap={None: NS_DISCO_INFO})
    if node:
        q.set("node", node)
    for ident in identities:
        i = etree.SubElement(
            q, qn(NS_DISCO_INFO, "identity"), category=ident.category, type=ident.type
        )
        if ident.name:
            i.set("name", ident.name)
    for f in features:
        etree.SubElement(q, qn(NS_DISCO_INFO, "feature"), var=f)
    return q


@module.iq("get", QN_DISCO_INFO, to="server")
async def server_info(ctx: IqContext) -> etree._Element:
    """The server's identity and the features of every loaded module (§3.1)."""
    node = ctx.payload.get("node")
    if node:
        raise StanzaError("item-not-found")
    from core.xmpp.module import Identity

    identities = [Identity("server", "im", "Switchboard"), *ctx.host.dispatcher.identities]
    info = info_element(None, identities, ctx.host.dispatcher.features)
    form = contact_form(ctx.host.config)
    if form is not None:
        info.append(form)
    return info


# XEP-0157 §3 (and its registry entry): the FORM_TYPE and the fields of contact addresses.
SERVERINFO = "http://jabber.org/network/serverinfo"


def contact_form(config: Any) -> etree._Element | None:
    """XEP-0128 extended info with the XEP-0157 addresses configured in ``[contact]``; None
    when none is configured."""
    contact = getattr(config, "contact", None)
    if contact is None:
        return None
    filled = [(f.name, getattr(contact, f.name)) for f in fields(contact)]
    filled = [(name, values) for name, values in filled if values]
    if not filled:
        return None
    x = etree.Element(qn(NS_DATA, "x"), nsmap={None: NS_DATA})
    x.set("type", "result")
    form_type = etree.SubElement(x, qn(NS_DATA, "field"), var="FORM_TYPE", type="hidden")
    etree.SubElement(form_type, qn(NS_DATA, "value")).text = SERVERINFO
    for name, values in filled:
        field = etree.SubElement(x, qn(NS_DATA, "field"), var=f"{name}-addresses")
        field.set("type", "list-multi")
        for value in values:
            etree.SubElement(field, qn(NS_DATA, "value")).text = value
    return x


async def may_discover(ctx: IqContext) -> bool:
    """The account itself, or a contact allowed to receive its presence (§8: a 'from' or
    'both' subscription, and presence not blocked by the account's privacy lists)."""
    if ctx.sender.local == ctx.to.local and ctx.sender.domain == ctx.to.domain:
        return True
    owner = str(ctx.to.bare)
    presence = getattr(ctx.host, "presence", None)
    if presence is not None:
        return bool(await presence.may_see(owner, ctx.sender))
    rosters = getattr(ctx.host, "rosters", None)
    roster = await rosters.get(owner) if rosters is not None else None
    if roster is None:
        roster = await RosterStore(ctx.host.redis).load(owner)
    item = roster.items.get(str(ctx.sender.bare))
    return item is not None and item.subscription in ("from", "both")


@module.iq("get", QN_DISCO_ITEMS, to="server")
async def server_items(ctx: IqContext) -> etree._Element:
    """The configured components (§4.1)."""
    if ctx.payload.get("node"):
        raise StanzaError("item-not-found")
    q = etree.Element(QN_DISCO_ITEMS, nsmap={None: NS_DISCO_ITEMS})
    for domain in ctx.host.component_domains():
        etree.SubElement(q, qn(NS_DISCO_ITEMS, "item"), jid=domain)
    return q


@module.iq("get", QN_DISCO_INFO, to="account")
async def account_info(ctx: IqContext) -> etree._Element:
    """An account's bare JID, answered by the server on its behalf (§3.1, RFC 6121 §8.5.2.1.3);
    §8: service-unavailable to those not allowed to see the account's presence."""
    if not await may_discover(ctx):
        raise StanzaError("service-unavailable")
    if ctx.payload.get("node"):
        raise StanzaError("item-not-found")
    from core.xmpp.module import Identity

    dispatcher = ctx.host.dispatcher
    features = sorted({NS_DISCO_INFO, NS_DISCO_ITEMS, *dispatcher.account_features})
    identities = [Identity("account", "registered"), *dispatcher.account_identities]
    return info_element(None, list(dict.fromkeys(identities)), features)


@module.iq("get", QN_DISCO_ITEMS, to="account", any_account=True)
async def account_items(ctx: IqContext) -> etree._Element:
    """An account's items: its available resources, to those allowed to see its presence.
    §8 rule 2: anyone else, and anyone asking about an account that does not exist, gets an
    empty result set, whatever the node (so a node does not tell accounts apart either)."""
    q = etree.Element(QN_DISCO_ITEMS, nsmap={None: NS_DISCO_ITEMS})
    if not await may_discover(ctx):
        return q
    if ctx.payload.get("node"):
        raise StanzaError("item-not-found")
    for s in ctx.host.router.available_sessions(str(ctx.to.bare)):
        etree.SubElement(q, qn(NS_DISCO_ITEMS, "item"), jid=s.full)
    return q
