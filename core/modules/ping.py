"""XEP-0199: XMPP Ping, answered by the server."""

from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_PING, QN_PING

module = Module("ping", spec="XEP-0199", features=[NS_PING])


@module.iq("get", QN_PING, to="server")
async def ping(ctx: IqContext) -> None:
    """An empty result tells the client the server is alive."""
    return None
