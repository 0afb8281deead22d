"""Last Activity (XEP-0012): the server's uptime, and when an account last went offline.

A query to an account's bare JID is answered by the server (RFC 6121 §8.5.2.1.3): 0 seconds
while the account has an available resource, else the seconds since its last unavailable
presence with that presence's status as text. Only the account itself and contacts allowed to
see its presence may ask (XEP-0012 §3, §8: a subscription, and presence-out not blocked by
XEP-0016/XEP-0191): others get ``forbidden``, and so does anyone asking about an account that
does not exist, so that the answer does not reveal accounts. Queries to a full JID reach the
client, which answers for itself.
"""

from __future__ import annotations

import time
from typing import Any

from lxml import etree

from core.xmpp.errors import StanzaError
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_CLIENT, NS_LAST, qn

QN_LAST_QUERY = qn(NS_LAST, "query")
QN_STATUS = qn(NS_CLIENT, "status")

module = Module("last", spec="XEP-0012", features=[NS_LAST], account_features=[NS_LAST])


def _query(seconds: float, text: str | None = None) -> etree._Element:
    q = etree.Element(QN_LAST_QUERY, nsmap={None: NS_LAST})
    q.set("seconds", str(max(0, int(seconds))))
    if text:
        q.text = text
    return q


@module.iq("get", QN_LAST_QUERY, to="server")
async def uptime(ctx: IqContext) -> etree._Element:
    """XEP-0012 §5: how long the server has been up."""
    return _query(time.time() - ctx.host.started_at)


@module.iq("get", QN_LAST_QUERY, to="account", any_account=True)
async def last_activity(ctx: IqContext) -> etree._Element:
    """XEP-0012 §3: when the account last logged out, to those allowed to see its presence."""
    server: Any = ctx.host
    bare = str(ctx.to.bare)
    if not await server.presence.may_see(bare, ctx.sender):
        raise StanzaError("forbidden", "only subscribed contacts see last activity")
    if server.router.available_sessions(bare):
        return _query(0)
    last = await server.presence.last.get(bare)
    if last is None:
        raise StanzaError("service-unavailable", "no last activity is known")
    status = None
    if last.presence:
        try:
            status = etree.fromstring(last.presence).findtext(QN_STATUS)
        except etree.XMLSyntaxError:
            status = None
    return _query(time.time() - last.time, status)
