"""XEP-0030: Service Discovery of the server and of accounts.

The server's features are exactly those of the loaded modules; its items are the configured
components.
"""

from lxml import etree

from core.xmpp.errors import StanzaError
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_DISCO_INFO, NS_DISCO_ITEMS, QN_DISCO_INFO, QN_DISCO_ITEMS, qn

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
    return info_element(None, identities, ctx.host.dispatcher.features)


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
    """An account's bare JID, answered by the server on its behalf (§3.1, RFC 6121 §8.5.2.1.3)."""
    if ctx.payload.get("node"):
        raise StanzaError("item-not-found")
    from core.xmpp.module import Identity

    features = sorted({NS_DISCO_INFO, NS_DISCO_ITEMS, *ctx.host.dispatcher.account_features})
    return info_element(None, [Identity("account", "registered")], features)


@module.iq("get", QN_DISCO_ITEMS, to="account")
async def account_items(ctx: IqContext) -> etree._Element:
    """An account's items: none are published by the server itself."""
    if ctx.payload.get("node"):
        raise StanzaError("item-not-found")
    return etree.Element(QN_DISCO_ITEMS, nsmap={None: NS_DISCO_ITEMS})
