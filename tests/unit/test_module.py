"""The Module API (core/xmpp/module.py): registration, dispatch and run_iq (RFC 6120 §8.2.3),
and service discovery derived from the registrations (XEP-0030)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from lxml import etree

from core.modules import disco
from core.xmpp.errors import StanzaError
from core.xmpp.jid import JID, parse_jid
from core.xmpp.module import Dispatcher, Identity, IqContext, Module, run_iq
from core.xmpp.ns import NS_CLIENT, NS_DISCO_INFO, NS_DISCO_ITEMS, NS_STANZAS, qn
from tests.unit.helpers import assert_xml, xml

C = f"xmlns='{NS_CLIENT}'"
QN_A = "{urn:a}query"
QN_B = "{urn:b}query"
SENDER = parse_jid("alice@localhost/r")
SERVER = parse_jid("localhost")


@dataclass
class Host:
    """What handlers reach through ``ctx.host``: the dispatcher and the component list."""

    dispatcher: Dispatcher
    components: list[str] = field(default_factory=list)
    config: Any = None

    def component_domains(self) -> list[str]:
        return self.components


def request(payload: str = "<query xmlns='urn:a'/>", itype: str = "get") -> etree._Element:
    return xml(
        f"<iq {C} type='{itype}' id='q1' from='alice@localhost/r' to='localhost'>{payload}</iq>"
    )


def serve(
    dispatcher: Dispatcher, iq: etree._Element, target: str = "server", to: JID = SERVER
) -> Any:
    return asyncio.run(
        run_iq(
            dispatcher,
            iq,
            sender=SENDER,
            to=to,
            target=target,  # type: ignore[arg-type]
            host=Host(dispatcher),
            session="the session",
        )
    )


# -- Registration ------------------------------------------------------------------------


def test_registration_records_routes_hooks_and_features() -> None:
    """Decorators register handlers, hooks and stream features and return the function."""
    m = Module("m", spec="XEP-0000", features=["urn:a"])

    async def handler(ctx: IqContext) -> None:
        return None

    async def hook(*args: Any) -> None:
        return None

    def feature(session: Any) -> etree._Element | None:
        return None

    assert m.iq("get", QN_A, to="account")(handler) is handler
    assert m.on("session-bound")(hook) is hook
    assert m.stream_feature(feature) is feature
    assert [(r.type, r.qname, r.target) for r in m.iq_routes] == [("get", QN_A, "account")]
    assert m.hooks == {"session-bound": [hook]}
    assert m.stream_features == [feature]


@pytest.mark.parametrize(("itype", "target"), [("result", "server"), ("get", "anyone")])
def test_registration_refuses_bad_type_or_target(itype: str, target: str) -> None:
    """Only get/set are served, and only to the known targets."""
    with pytest.raises(ValueError):
        Module("m").iq(itype, QN_A, to=target)  # type: ignore[arg-type]


def test_dispatcher_refuses_duplicates() -> None:
    """A module loads once; one (type, payload, target) has one handler."""
    a, b = Module("a"), Module("b")

    @a.iq("get", QN_A)
    async def one(ctx: IqContext) -> None: ...

    @b.iq("get", QN_A)
    async def two(ctx: IqContext) -> None: ...

    d = Dispatcher([a])
    with pytest.raises(ValueError, match="loaded twice"):
        d.add(a)
    with pytest.raises(ValueError, match="two handlers"):
        d.add(b)


def test_find_iq_target_rules() -> None:
    """'account' handlers also serve 'self'; 'self' handlers serve nobody else; 'server' and
    'entity' are their own targets; type and payload must match."""
    m = Module("m")
    handlers = {}
    for itype, qname, target in [
        ("get", QN_A, "account"),
        ("set", QN_A, "self"),
        ("get", QN_B, "server"),
        ("get", QN_B, "entity"),
    ]:

        async def h(ctx: IqContext) -> None: ...

        m.iq(itype, qname, to=target)(h)  # type: ignore[arg-type]
        handlers[(itype, qname, target)] = h
    d = Dispatcher([m])
    assert d.find_iq("get", QN_A, "account") is handlers[("get", QN_A, "account")]
    assert d.find_iq("get", QN_A, "self") is handlers[("get", QN_A, "account")]
    assert d.find_iq("set", QN_A, "self") is handlers[("set", QN_A, "self")]
    assert d.find_iq("set", QN_A, "account") is None
    assert d.find_iq("get", QN_A, "server") is None
    assert d.find_iq("get", QN_B, "server") is handlers[("get", QN_B, "server")]
    assert d.find_iq("get", QN_B, "entity") is handlers[("get", QN_B, "entity")]
    assert d.find_iq("set", QN_B, "server") is None
    assert d.find_iq("get", "{urn:c}query", "server") is None
    assert d.serves(QN_A) and d.serves(QN_B) and not d.serves("{urn:c}query")


def test_features_identities_and_stream_features() -> None:
    """Features are the sorted union over modules; stream features skip None."""
    a = Module("a", features=["urn:z", "urn:a"], account_features=["urn:acc"])
    b = Module("b", features=["urn:a", "urn:b"], identities=[Identity("pubsub", "pep")])
    a.stream_feature(lambda session: etree.Element("{urn:f}f"))
    b.stream_feature(lambda session: None)
    d = Dispatcher([a, b])
    assert d.features == ["urn:a", "urn:b", "urn:z"]
    assert d.account_features == ["urn:acc"]
    assert d.identities == [Identity("pubsub", "pep")]
    assert [e.tag for e in d.stream_features(object())] == ["{urn:f}f"]


def test_emit_runs_hooks_in_order_and_survives_failures(caplog: pytest.LogCaptureFixture) -> None:
    """Hooks run in load order with the event's arguments; a failing hook is logged and the
    next one still runs."""
    calls: list[tuple[str, Any]] = []
    a, b = Module("a"), Module("b")

    @a.on("session-bound")
    async def first(session: Any) -> None:
        calls.append(("first", session))
        raise RuntimeError("hook bug")

    @b.on("session-bound")
    async def second(session: Any) -> None:
        calls.append(("second", session))

    d = Dispatcher([a, b])
    assert d.has_hooks("session-bound") and not d.has_hooks("other")
    with caplog.at_level(logging.ERROR, logger="core.xmpp.module"):
        asyncio.run(d.emit("session-bound", "s"))
    assert calls == [("first", "s"), ("second", "s")]
    assert "hook bug" in caplog.text


# -- run_iq ------------------------------------------------------------------------------


def module_with(handler: Any, qname: str = QN_A, target: str = "server") -> Dispatcher:
    m = Module("m")
    m.iq("get", qname, to=target)(handler)  # type: ignore[arg-type]
    return Dispatcher([m])


def test_run_iq_result_with_payload_and_context() -> None:
    """The handler gets the request, its payload, both addresses, the host and the session;
    its return value is the result's payload."""
    seen: list[IqContext] = []

    async def handler(ctx: IqContext) -> etree._Element:
        seen.append(ctx)
        return etree.Element("{urn:a}query", nsmap={None: "urn:a"}, answer="42")

    d = module_with(handler)
    reply = serve(d, request())
    assert_xml(
        reply,
        f"<iq {C} type='result' id='q1' to='alice@localhost/r' from='localhost'>"
        "<query xmlns='urn:a' answer='42'/></iq>",
    )
    ctx = seen[0]
    assert ctx.type == "get" and ctx.payload.tag == QN_A
    assert ctx.sender == SENDER and ctx.to == SERVER
    assert ctx.session == "the session" and ctx.host.dispatcher is d


def test_run_iq_empty_result() -> None:
    """A handler returning None gives an empty result."""

    async def handler(ctx: IqContext) -> None:
        return None

    reply = serve(module_with(handler), request())
    assert_xml(reply, f"<iq {C} type='result' id='q1' to='alice@localhost/r' from='localhost'/>")


@pytest.mark.parametrize(
    ("iq", "target", "condition"),
    [
        (request(""), "server", "bad-request"),
        (request("<query xmlns='urn:a'/><query xmlns='urn:b'/>"), "server", "bad-request"),
        (request("<other xmlns='urn:a'/>"), "server", "service-unavailable"),
        (request(), "account", "service-unavailable"),
        (request(itype="set"), "server", "service-unavailable"),
    ],
    ids=["no-payload", "two-payloads", "unknown-payload", "other-target", "other-type"],
)
def test_run_iq_refusals(iq: etree._Element, target: str, condition: str) -> None:
    """§8.2.3: zero or two payloads are bad-request; nothing registered is
    service-unavailable (§8.3.3.19)."""

    async def handler(ctx: IqContext) -> None:
        raise AssertionError("not to be called")

    reply = serve(module_with(handler), iq, target)
    assert reply is not None and reply.get("type") == "error" and reply.get("id") == "q1"
    assert reply.find(f"{{{NS_CLIENT}}}error/{{{NS_STANZAS}}}{condition}") is not None


def test_run_iq_maps_stanza_error() -> None:
    """A StanzaError raised by the handler becomes the error reply, text and type kept."""

    async def handler(ctx: IqContext) -> None:
        raise StanzaError("not-allowed", "members only", type="auth")

    reply = serve(module_with(handler), request())
    assert_xml(
        reply,
        f"""<iq {C} id='q1' to='alice@localhost/r' from='localhost' type='error'>
              <query xmlns='urn:a'/>
              <error type='auth'><not-allowed xmlns='{NS_STANZAS}'/>
                <text xmlns='{NS_STANZAS}'>members only</text></error>
            </iq>""",
    )


def test_run_iq_unexpected_exception(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected exception is logged with its traceback and answered with
    internal-server-error (type cancel)."""

    async def handler(ctx: IqContext) -> None:
        raise KeyError("oops")

    with caplog.at_level(logging.ERROR, logger="core.xmpp.module"):
        reply = serve(module_with(handler), request())
    error = reply.find(f"{{{NS_CLIENT}}}error")
    assert error is not None and error.get("type") == "cancel"
    assert error.find(f"{{{NS_STANZAS}}}internal-server-error") is not None
    assert "KeyError" in caplog.text


@pytest.mark.parametrize("itype", ["result", "error"])
def test_run_iq_ignores_results_and_errors(itype: str) -> None:
    """Results and errors are not requests: nothing is answered."""

    async def handler(ctx: IqContext) -> None:
        raise AssertionError("not to be called")

    assert serve(module_with(handler), request(itype=itype)) is None


# -- Service discovery from the registrations (XEP-0030) ---------------------------------


def test_server_disco_info_lists_loaded_modules() -> None:
    """§3.1: the server's identities and features are those of the loaded modules."""
    extra = Module(
        "extra", features=["urn:extra"], identities=[Identity("directory", "user", "Users")]
    )
    d = Dispatcher([disco.module, extra])
    reply = serve(d, request(f"<query xmlns='{NS_DISCO_INFO}'/>"))
    query = reply.find(qn(NS_DISCO_INFO, "query"))
    identities = [(i.get("category"), i.get("type"), i.get("name")) for i in query[0:2]]
    assert identities == [("server", "im", "Switchboard"), ("directory", "user", "Users")]
    features = [f.get("var") for f in query.iter(qn(NS_DISCO_INFO, "feature"))]
    assert features == sorted([NS_DISCO_INFO, NS_DISCO_ITEMS, "urn:extra"])


def test_server_disco_items_and_nodes() -> None:
    """§4.1: the server's items are the component domains; unknown nodes are item-not-found."""
    d = Dispatcher([disco.module])
    host = Host(d, ["muc.localhost", "pubsub.localhost"])
    iq = request(f"<query xmlns='{NS_DISCO_ITEMS}'/>")
    reply = asyncio.run(run_iq(d, iq, sender=SENDER, to=SERVER, target="server", host=host))
    assert [i.get("jid") for i in reply[0]] == ["muc.localhost", "pubsub.localhost"]
    reply = serve(d, request(f"<query xmlns='{NS_DISCO_INFO}' node='x'/>"))
    assert reply.find(f"{{{NS_CLIENT}}}error/{{{NS_STANZAS}}}item-not-found") is not None


def test_account_disco_info_uses_account_features() -> None:
    """An account's info (here asked by the account itself): the account identity, the
    modules' account identities (once each) and the modules' account features."""
    pep = Module(
        "pep",
        account_features=["http://jabber.org/protocol/pubsub#publish"],
        account_identities=[Identity("pubsub", "pep")],
    )
    again = Module("pep-too", account_identities=[Identity("pubsub", "pep")])
    d = Dispatcher([disco.module, pep, again])
    iq = request(f"<query xmlns='{NS_DISCO_INFO}'/>")
    reply = serve(d, iq, target="self", to=SENDER.bare)
    query = reply.find(qn(NS_DISCO_INFO, "query"))
    identities = [
        (i.get("category"), i.get("type")) for i in query.iter(qn(NS_DISCO_INFO, "identity"))
    ]
    assert identities == [("account", "registered"), ("pubsub", "pep")]
    features = [f.get("var") for f in query.iter(qn(NS_DISCO_INFO, "feature"))]
    assert "http://jabber.org/protocol/pubsub#publish" in features and NS_DISCO_INFO in features


def test_account_identities_and_any_account_registration() -> None:
    """Account identities are the union over modules without repeats (not server identities);
    ``any_account`` is recorded per (type, payload) and only for 'account' handlers."""
    a = Module("a", account_identities=[Identity("pubsub", "pep"), Identity("x", "y")])
    b = Module("b", account_identities=[Identity("pubsub", "pep")])

    @a.iq("get", QN_A, to="account", any_account=True)
    async def open_to_all(ctx: IqContext) -> None: ...

    @a.iq("set", QN_A, to="account")
    async def not_open(ctx: IqContext) -> None: ...

    d = Dispatcher([a, b])
    assert d.account_identities == [Identity("pubsub", "pep"), Identity("x", "y")]
    assert d.identities == []
    assert d.serves_any_account("get", QN_A)
    assert not d.serves_any_account("set", QN_A)
    assert not d.serves_any_account("get", QN_B)
    with pytest.raises(ValueError, match="any_account"):
        Module("m").iq("get", QN_B, to="self", any_account=True)
