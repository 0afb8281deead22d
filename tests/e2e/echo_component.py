"""A tiny XEP-0114 component for end-to-end tests, built on core.xmpp.component.

Run as ``python -m tests.e2e.echo_component --name echo --instance a``; the domain and secret
come from the same configuration as the core (``SWITCHBOARD_COMPONENTS_<NAME>_DOMAIN`` /
``_SECRET``), the core's port from ``--port``.

What it does, so that tests can tell which instance served a stanza:

* a message with a body ``B`` to any JID at the domain is answered from that JID with the
  body ``<instance>|B``;
* the body ``ping-me`` makes it send a XEP-0199 ping to the sender with ``app.iq()`` and
  answer ``<instance>|pong <type of the reply>``;
* XEP-0199 pings to the domain and to any JID at it are answered (Module API);
* XEP-0092 version of the domain answers name ``echo`` and the instance as the version.
"""

from __future__ import annotations

import argparse
import sys

from lxml import etree

from core.runtime.component import component_app, run_component
from core.runtime.config import load_config
from core.xmpp.component import Backoff, ComponentApp
from core.xmpp.errors import StanzaError
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_CLIENT, NS_PING, NS_VERSION, QN_PING, QN_VERSION_QUERY, qn
from core.xmpp.stanza import child, make

module = Module("echo", features=[NS_PING, NS_VERSION])


@module.iq("get", QN_PING, to="server")
async def ping_domain(ctx: IqContext) -> None:
    """XEP-0199 §4.2: an empty result."""
    return None


@module.iq("get", QN_PING, to="entity")
async def ping_entity(ctx: IqContext) -> None:
    """XEP-0199 §4.2, for any JID at the domain."""
    return None


@module.iq("get", QN_VERSION_QUERY, to="server")
async def version(ctx: IqContext) -> etree._Element:
    """XEP-0092: the instance id as the version, so tests can see who answered."""
    q = etree.Element(QN_VERSION_QUERY, nsmap={None: NS_VERSION})
    etree.SubElement(q, qn(NS_VERSION, "name")).text = "echo"
    etree.SubElement(q, qn(NS_VERSION, "version")).text = ctx.host.instance
    return q


@module.on("message")
async def echo(app: ComponentApp, stanza: etree._Element) -> None:
    """Answer a message with its body, prefixed by the instance id."""
    if stanza.get("type") == "error":
        return
    body = stanza.findtext(qn(NS_CLIENT, "body"))
    if body is None:
        return
    if body == "ping-me":
        ping = make("iq", type="get", to=stanza.get("from"), frm=stanza.get("to"))
        child(ping, "ping", NS_PING)
        try:
            reply = await app.iq(ping, timeout=5)
            body = f"pong {reply.get('type')}"
        except StanzaError as e:
            body = f"pong error {e.condition}"
        except (TimeoutError, ConnectionError) as e:
            body = f"pong failed {type(e).__name__}"
    answer = make("message", to=stanza.get("from"), frm=stanza.get("to"), type=stanza.get("type"))
    child(answer, "body", text=f"{app.instance}|{body}")
    app.send(answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="echo", help="the [components.<name>] to serve")
    parser.add_argument("--instance", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--backoff-initial", type=float, default=0.1)
    parser.add_argument("--backoff-max", type=float, default=0.5)
    args = parser.parse_args(argv)
    config = load_config(None)
    app = component_app(
        config,
        args.name,
        [module],
        host=args.host,
        port=args.port,
        instance=args.instance,
        backoff=Backoff(initial=args.backoff_initial, maximum=args.backoff_max),
    )
    return run_component(app, config)


if __name__ == "__main__":
    sys.exit(main())
