"""End-to-end client streams (RFC 6120 §4-§8, XEP-0368, XEP-0030, XEP-0092, XEP-0199).

A real ``switchboard core`` and a real Redis; slixmpp clients where a real client library is
the point, the raw client where the exact bytes of the protocol are. Most tests share one core;
two more cores carry the settings some tests need (a short idle timeout without mandatory TLS,
and tight authentication limits), so that no test disturbs another one's counters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from core.server import default_modules
from core.storage.accounts import AccountExists
from core.xmpp.module import Dispatcher
from core.xmpp.ns import (
    NS_BIND,
    NS_CLIENT,
    NS_PING,
    NS_SASL,
    NS_SESSION,
    NS_STREAMS,
    NS_TLS,
    qn,
)
from core.xmpp.parser import StreamClose, StreamOpen
from core.xmpp.sasl import plain_initial
from tests.harness import (
    CoreProcess,
    OpenSSLClient,
    RawClient,
    separate_db,
    slix_client,
    stanza_error,
)

# Unusual enough that finding it in a log can only mean it was logged.
PASSWORD = "Tr0ub4dor-e2e-7Qx"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"
COMPONENT = "conference.localhost"
IDLE_TIMEOUT = 1.0
MAX_FAILURES_PER_MINUTE = 4


# Fixtures ------------------------------------------------------------------------------


def _start(redis_server: str, workdir: Path, env: dict[str, str]) -> Iterator[CoreProcess]:
    proc = CoreProcess(separate_db(redis_server), workdir, env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def core(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """The shared core, with one component configured so that disco#items has an item."""
    env = {
        "SWITCHBOARD_COMPONENTS_MUC_DOMAIN": COMPONENT,
        "SWITCHBOARD_COMPONENTS_MUC_SECRET": "component-secret",
    }
    yield from _start(redis_server, tmp_path_factory.mktemp("core"), env)


@pytest.fixture(scope="module")
def relaxed_core(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CoreProcess]:
    """TLS optional and a one-second idle timeout: plaintext offers and keepalives."""
    env = {
        "SWITCHBOARD_C2S_REQUIRE_ENCRYPTION": "false",
        "SWITCHBOARD_C2S_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
    }
    yield from _start(redis_server, tmp_path_factory.mktemp("relaxed"), env)


@pytest.fixture(scope="module")
def strict_core(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CoreProcess]:
    """Tight authentication limits, on a Redis database of its own so that the failure
    counters of other tests never reach it. Each test uses its own loopback addresses."""
    env = {
        "SWITCHBOARD_AUTH_MAX_FAILURES": "3",
        "SWITCHBOARD_AUTH_MAX_FAILURES_PER_MINUTE": str(MAX_FAILURES_PER_MINUTE),
    }
    yield from _start(redis_server, tmp_path_factory.mktemp("strict"), env)


def account(core: CoreProcess, name: str) -> str:
    """Create ``name`` on ``core`` (password PASSWORD) unless it exists; returns its bare JID."""
    with contextlib.suppress(AccountExists):
        core.add_user(name, PASSWORD)
    return f"{name}@{core.domain}"


# Raw-client helpers --------------------------------------------------------------------


async def authenticated(port: int, user: str, **kwargs: str) -> tuple[RawClient, etree._Element]:
    """A raw client past SASL and the stream restart, with the features it was offered."""
    c = RawClient(port)
    features = await c.authenticate(user, PASSWORD, **kwargs)
    return c, features


async def bound(port: int, user: str, resource: str = "raw") -> RawClient:
    c, _ = await authenticated(port, user)
    reply = await c.bind(resource)
    assert reply.get("type") == "result", etree.tostring(reply)
    return c


async def next_message(client: object, timeout: float = 5.0) -> object:
    return await asyncio.wait_for(client.inbox.get(), timeout)  # type: ignore[attr-defined]


# STARTTLS and SASL ---------------------------------------------------------------------


def test_starttls_with_generated_certificate(core: CoreProcess, run_async: object) -> None:
    """Before TLS only a required STARTTLS is offered; TLS uses the certificate created in
    data_dir; afterwards every mechanism and both channel-binding types are offered."""

    async def scenario() -> None:
        c = RawClient(core.c2s_port)
        await c.connect()
        features = await c.open_stream()
        assert [child.tag for child in features] == [qn(NS_TLS, "starttls")]
        assert features[0].find(qn(NS_TLS, "required")) is not None
        features = await c.starttls()
        sslobj = c.writer.get_extra_info("ssl_object")
        crt = core.workdir / "data" / "tls" / "localhost.crt"
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        generated = x509.load_pem_x509_certificate(crt.read_bytes()).public_bytes(Encoding.DER)
        assert sslobj.getpeercert(binary_form=True) == generated
        mechanisms = [m.text for m in features.iter(qn(NS_SASL, "mechanism"))]
        assert mechanisms == [
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1",
            "PLAIN",
        ]
        assert features.find(qn(NS_TLS, "starttls")) is None
        cb_types = {cb.get("type") for cb in features.iter(qn(NS_SASL_CB, "channel-binding"))}
        expected = {"tls-server-end-point"}
        if sslobj.version() == "TLSv1.3":
            expected.add("tls-exporter")
        assert cb_types == expected
        await c.close()

    run_async(scenario())


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_slixmpp_mechanism_and_messages(
    core: CoreProcess, run_async: object, mechanism: str
) -> None:
    """Two slixmpp clients log in with the mechanism and exchange messages both ways by full
    JID; the server stamps 'from' with the sender's full JID."""
    tag = mechanism.lower().replace("-", "")
    alice = account(core, f"alice-{tag}")
    bob = account(core, f"bob-{tag}")

    async def scenario() -> None:
        async with (
            slix_client(core.c2s_port, f"{alice}/a", PASSWORD, mechanism=mechanism) as a,
            slix_client(core.c2s_port, f"{bob}/b", PASSWORD, mechanism=mechanism) as b,
        ):
            assert a.plugin["feature_mechanisms"].mech.name == mechanism
            assert b.plugin["feature_mechanisms"].mech.name == mechanism
            a.send_message(mto=f"{bob}/b", mbody="hello bob", mtype="chat")
            msg = await next_message(b)
            assert msg["body"] == "hello bob"
            assert str(msg["from"]) == f"{alice}/a"
            b.send_message(mto=f"{alice}/a", mbody="hello alice", mtype="chat")
            msg = await next_message(a)
            assert msg["body"] == "hello alice"
            assert str(msg["from"]) == f"{bob}/b"

    run_async(scenario())
    line = core.wait_log(f"authenticated as {alice}")
    assert mechanism in line


@pytest.mark.parametrize(
    "mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
)
@pytest.mark.parametrize("tls", ["starttls", "direct"])
def test_raw_mechanism(core: CoreProcess, run_async: object, mechanism: str, tls: str) -> None:
    """Each mechanism succeeds over STARTTLS and direct TLS (-PLUS bound to the server
    certificate, RFC 5929), and the SCRAM server signature verifies."""
    user = account(core, f"raw-{tls}-{mechanism.lower()}").split("@")[0]

    async def scenario() -> None:
        c = RawClient(core.c2s_port if tls == "starttls" else core.tls_port)
        jid = await c.login(user, PASSWORD, mechanism=mechanism, tls=tls, resource="m")
        assert jid == f"{user}@localhost/m"
        await c.close()

    run_async(scenario())


def test_scram_plus_with_tls_exporter(core: CoreProcess) -> None:
    """SCRAM-SHA-256-PLUS bound with tls-exporter (RFC 9266) succeeds on TLS 1.3; data from
    another channel is refused."""
    user = account(core, "exporter").split("@")[0]
    c = OpenSSLClient(core.c2s_port)
    try:
        features = c.starttls()
        if c.conn.get_protocol_version_name() != "TLSv1.3":
            pytest.skip("tls-exporter needs TLS 1.3")
        cb_types = {cb.get("type") for cb in features.iter(qn(NS_SASL_CB, "channel-binding"))}
        assert "tls-exporter" in cb_types
        result = c.scram_plus(user, PASSWORD, c.tls_exporter())
        assert result.tag == qn(NS_SASL, "success"), etree.tostring(result)
    finally:
        c.close()


def test_plain_not_offered_without_tls(relaxed_core: CoreProcess, run_async: object) -> None:
    """Without TLS (not required here) SCRAM is offered but PLAIN is not, and PLAIN is refused
    with encryption-required; after STARTTLS PLAIN is offered."""
    user = account(relaxed_core, "plaintext").split("@")[0]

    async def scenario() -> None:
        c = RawClient(relaxed_core.c2s_port)
        await c.connect()
        features = await c.open_stream()
        starttls = features.find(qn(NS_TLS, "starttls"))
        assert starttls is not None and starttls.find(qn(NS_TLS, "required")) is None
        mechanisms = [m.text for m in features.iter(qn(NS_SASL, "mechanism"))]
        assert mechanisms == ["SCRAM-SHA-256", "SCRAM-SHA-1"]
        assert features.find(qn(NS_SASL_CB, "sasl-channel-binding")) is None
        result = await c.auth(user, PASSWORD, "PLAIN")
        assert result.tag == qn(NS_SASL, "failure")
        assert result.find(qn(NS_SASL, "encryption-required")) is not None
        features = await c.starttls()
        assert "PLAIN" in [m.text for m in features.iter(qn(NS_SASL, "mechanism"))]
        await c.close()

        plain = RawClient(relaxed_core.c2s_port)
        assert await plain.login(user, PASSWORD, tls="none") == f"{user}@localhost/raw"
        await plain.close()

    run_async(scenario())


def test_sasl_abort(core: CoreProcess, run_async: object) -> None:
    """<abort/> in the middle of SCRAM is answered with <aborted/>; a new attempt succeeds."""
    user = account(core, "aborter").split("@")[0]

    async def scenario() -> None:
        c = RawClient(core.c2s_port)
        await c.connect()
        await c.open_stream()
        await c.starttls()
        first = base64.b64encode(f"n,,n={user},r=abcdefghijklmnop".encode()).decode()
        await c.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
        assert (await c.next_element()).tag == qn(NS_SASL, "challenge")
        await c.send(f"<abort xmlns='{NS_SASL}'/>")
        failure = await c.next_element()
        assert failure.tag == qn(NS_SASL, "failure")
        assert failure.find(qn(NS_SASL, "aborted")) is not None
        result = await c.auth(user, PASSWORD)
        assert result.tag == qn(NS_SASL, "success")
        await c.close()

    run_async(scenario())


def test_second_auth_and_stray_response(core: CoreProcess, run_async: object) -> None:
    """A <response/> with no exchange in progress is a malformed-request failure that leaves
    the stream open; a second <auth/> during an exchange starts over and can succeed."""
    user = account(core, "restarter").split("@")[0]

    async def scenario() -> None:
        c = RawClient(core.c2s_port)
        await c.connect()
        await c.open_stream()
        await c.starttls()
        await c.send(f"<response xmlns='{NS_SASL}'>=</response>")
        failure = await c.next_element()
        assert failure.tag == qn(NS_SASL, "failure")
        assert failure.find(qn(NS_SASL, "malformed-request")) is not None
        first = base64.b64encode(f"n,,n={user},r=abcdefghijklmnop".encode()).decode()
        await c.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>{first}</auth>")
        assert (await c.next_element()).tag == qn(NS_SASL, "challenge")
        result = await c.auth(user, PASSWORD, "PLAIN")
        assert result.tag == qn(NS_SASL, "success"), etree.tostring(result)
        await c.close()

    run_async(scenario())


# Authentication limits (strict core) ---------------------------------------------------


async def _attempt(core: CoreProcess, c: RawClient | None, user: str, password: str, source: str):
    """One PLAIN attempt on ``c`` (a new TLS stream from ``source`` when None)."""
    if c is None:
        c = RawClient(core.c2s_port)
        await c.connect(source=source)
        await c.open_stream()
        await c.starttls()
    await c.send(
        f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>"
        f"{base64.b64encode(plain_initial(user, password)).decode()}</auth>"
    )
    return c, await c.next_element()


def _condition(el: etree._Element) -> str:
    assert el.tag == qn(NS_SASL, "failure") or el.tag == qn(NS_SASL, "success"), el.tag
    if el.tag == qn(NS_SASL, "success"):
        return "success"
    return next(etree.QName(c).localname for c in el if etree.QName(c).localname != "text")


def test_wrong_password_then_policy_violation(strict_core: CoreProcess, run_async: object) -> None:
    """Each wrong password is a not-authorized failure; after auth.max_failures (3) of them
    the stream ends with <policy-violation/>."""
    user = account(strict_core, "guessed").split("@")[0]

    async def scenario() -> None:
        c = None
        for _ in range(3):
            c, el = await _attempt(strict_core, c, user, "wrong", "127.0.0.2")
            assert _condition(el) == "not-authorized"
        assert await c.stream_error() == "policy-violation"
        assert await c.closed()

    run_async(scenario())


def test_temporary_auth_failure_per_account(strict_core: CoreProcess, run_async: object) -> None:
    """Once an account has had auth.max_failures_per_minute failures, even the right password
    gets temporary-auth-failure, from any address; other accounts are not affected."""
    victim = account(strict_core, "victim").split("@")[0]
    other = account(strict_core, "bystander").split("@")[0]

    async def scenario() -> None:
        sources = ["127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4"]
        c = None
        for i, source in enumerate(sources[:MAX_FAILURES_PER_MINUTE]):
            c, el = await _attempt(strict_core, c if i % 2 else None, victim, "wrong", source)
            assert _condition(el) == "not-authorized"
        c, el = await _attempt(strict_core, None, victim, PASSWORD, "127.0.0.5")
        assert _condition(el) == "temporary-auth-failure"
        c, el = await _attempt(strict_core, None, other, PASSWORD, "127.0.0.5")
        assert _condition(el) == "success"
        await c.close()

    run_async(scenario())


def test_temporary_auth_failure_per_address(strict_core: CoreProcess, run_async: object) -> None:
    """Once an address has had auth.max_failures_per_minute failures (on any accounts), it gets
    temporary-auth-failure even for a right password; another address logs in."""
    users = [account(strict_core, f"spray{i}").split("@")[0] for i in range(5)]

    async def scenario() -> None:
        c = None
        for i in range(MAX_FAILURES_PER_MINUTE):
            c, el = await _attempt(
                strict_core, c if i % 2 else None, users[i], "wrong", "127.0.0.6"
            )
            assert _condition(el) == "not-authorized"
        c, el = await _attempt(strict_core, None, users[4], PASSWORD, "127.0.0.6")
        assert _condition(el) == "temporary-auth-failure"
        c, el = await _attempt(strict_core, None, users[4], PASSWORD, "127.0.0.7")
        assert _condition(el) == "success"
        await c.close()

    run_async(scenario())


def test_scram_plus_wrong_channel_binding(strict_core: CoreProcess, run_async: object) -> None:
    """SCRAM-SHA-256-PLUS with channel-binding data of another channel is refused."""
    user = account(strict_core, "mitm").split("@")[0]
    c = OpenSSLClient(strict_core.c2s_port)
    try:
        c.starttls()
        result = c.scram_plus(user, PASSWORD, b"\0" * 32)
        assert result.tag == qn(NS_SASL, "failure")
        assert result.find(qn(NS_SASL, "not-authorized")) is not None
    finally:
        c.close()


# Resource binding ----------------------------------------------------------------------


def test_bind_chosen_and_generated_resources(core: CoreProcess, run_async: object) -> None:
    """After the restart bind and an optional session are offered; a chosen resource is
    bound as given, an omitted one is generated, unique and unpredictable."""
    user = account(core, "binder")

    async def scenario() -> None:
        c, features = await authenticated(core.c2s_port, user.split("@")[0])
        assert features.find(qn(NS_BIND, "bind")) is not None
        session = features.find(qn(NS_SESSION, "session"))
        assert session is not None and session.find(qn(NS_SESSION, "optional")) is not None
        assert features.find(qn(NS_SASL, "mechanisms")) is None
        reply = await c.bind("laptop")
        assert reply.get("type") == "result"
        assert reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid") == f"{user}/laptop"
        await c.close()
        generated = set()
        for _ in range(2):
            c, _ = await authenticated(core.c2s_port, user.split("@")[0])
            reply = await c.bind(None)
            jid = reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
            assert jid.startswith(f"{user}/")
            generated.add(jid.split("/", 1)[1])
            await c.close()
        assert len(generated) == 2
        assert all(len(r) >= 12 for r in generated)

    run_async(scenario())


@pytest.mark.parametrize("resource", ["&#x7f;bad", "\u0378", "x" * 1024])
def test_bind_bad_resource(core: CoreProcess, run_async: object, resource: str) -> None:
    """A resource that fails resourceprep (RFC 7622 §3.4) gets bad-request; the stream stays
    usable and a valid resource is then bound."""
    user = account(core, "badres").split("@")[0]

    async def scenario() -> None:
        c, _ = await authenticated(core.c2s_port, user)
        reply = await c.bind(resource)
        assert reply.get("type") == "error"
        assert stanza_error(reply) == ("modify", "bad-request")
        reply = await c.bind("good")
        assert reply.get("type") == "result"
        await c.close()

    run_async(scenario())


def test_bind_conflict_new_session_wins(core: CoreProcess, run_async: object) -> None:
    """Binding a resource already in use closes the old stream with <conflict/>, and the new
    session receives what is sent to that full JID (RFC 6120 §7.7.2.2)."""
    user = account(core, "twice").split("@")[0]
    sender = account(core, "caller").split("@")[0]

    async def scenario() -> None:
        old = await bound(core.c2s_port, user, "dup")
        new = await bound(core.c2s_port, user, "dup")
        assert new.jid == old.jid == f"{user}@localhost/dup"
        assert await old.stream_error() == "conflict"
        assert await old.closed()
        other = await bound(core.c2s_port, sender)
        await other.send(f"<message to='{user}@localhost/dup' id='m1'><body>hi</body></message>")
        msg = await new.next_element()
        assert msg.tag == qn(NS_CLIENT, "message") and msg.get("id") == "m1"
        for c in (new, other):
            await c.close()

    run_async(scenario())


def test_legacy_session_is_a_no_op(core: CoreProcess, run_async: object) -> None:
    """The RFC 3921 session request is answered with an empty result."""
    user = account(core, "legacy").split("@")[0]

    async def scenario() -> None:
        c = await bound(core.c2s_port, user)
        reply = await c.request(f"<iq type='set' id='s1'><session xmlns='{NS_SESSION}'/></iq>")
        assert reply.get("type") == "result" and len(reply) == 0
        await c.close()

    run_async(scenario())


# Server features: ping, disco, version -----------------------------------------------


def test_ping_disco_and_version(core: CoreProcess, run_async: object) -> None:
    """XEP-0199 ping, XEP-0030 info (features exactly those the loaded modules register) and
    items (the configured components), and XEP-0092 version of the server."""
    user = account(core, "explorer")
    expected = set(Dispatcher(default_modules()).features)

    async def scenario() -> None:
        plugins = ("xep_0030", "xep_0199", "xep_0092")
        async with slix_client(core.c2s_port, f"{user}/x", PASSWORD, plugins=plugins) as c:
            rtt = await c.plugin["xep_0199"].ping(jid="localhost", timeout=5)
            assert rtt is not None and rtt >= 0
            info = await c.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
            assert set(info["disco_info"]["features"]) == expected
            assert ("server", "im") in {(i[0], i[1]) for i in info["disco_info"]["identities"]}
            items = await c.plugin["xep_0030"].get_items(jid="localhost", timeout=5)
            assert [i[0] for i in items["disco_items"]["items"]] == [COMPONENT]
            version = await c.plugin["xep_0092"].get_version("localhost", timeout=5)
            sv = version["software_version"]
            assert sv["name"] == "Switchboard"
            from importlib.metadata import version as package_version

            assert sv["version"] == package_version("switchboard")

    run_async(scenario())


def test_unknown_iq_payload_is_service_unavailable(core: CoreProcess, run_async: object) -> None:
    """An IQ get/set with a payload nobody serves gets service-unavailable, whether sent to the
    server, to one's own account or to another account."""
    user = account(core, "unknowniq").split("@")[0]
    account(core, "unknowniq-peer")

    async def scenario() -> None:
        c = await bound(core.c2s_port, user)
        for i, to in enumerate(["to='localhost'", "", "to='unknowniq-peer@localhost'"]):
            reply = await c.request(
                f"<iq type='get' id='u{i}' {to}><nothing xmlns='urn:example:none'/></iq>"
            )
            assert reply.get("type") == "error"
            assert stanza_error(reply) == ("cancel", "service-unavailable")
        await c.close()

    run_async(scenario())


@pytest.mark.parametrize(
    "payload",
    ["", f"<ping xmlns='{NS_PING}'/><ping xmlns='{NS_PING}'/>"],
    ids=["no-child", "two-children"],
)
@pytest.mark.parametrize("itype", ["get", "set"])
def test_iq_needs_exactly_one_child(
    core: CoreProcess, run_async: object, payload: str, itype: str
) -> None:
    """An IQ get or set without exactly one child element gets bad-request (RFC 6120 §8.2.3)."""
    user = account(core, "iqcount").split("@")[0]

    async def scenario() -> None:
        c = await bound(core.c2s_port, user)
        reply = await c.request(f"<iq type='{itype}' id='n1' to='localhost'>{payload}</iq>")
        assert reply.get("type") == "error"
        assert stanza_error(reply) == ("modify", "bad-request")
        await c.close()

    run_async(scenario())


# Messages ------------------------------------------------------------------------------


def test_bare_jid_reaches_highest_priority(core: CoreProcess, run_async: object) -> None:
    """A chat message to a bare JID goes to the available resource of highest priority only
    (RFC 6121 §8.5.2.1.1)."""
    alice = account(core, "prio-alice")
    bob = account(core, "prio-bob")

    async def scenario() -> None:
        async with (
            slix_client(core.c2s_port, f"{alice}/low", PASSWORD, presence=False) as low,
            slix_client(core.c2s_port, f"{alice}/high", PASSWORD, presence=False) as high,
            slix_client(core.c2s_port, f"{bob}/b", PASSWORD) as b,
        ):
            low.send_presence(ppriority=1)
            high.send_presence(ppriority=5)
            # A ping answered after each presence means the server has processed it
            # (stanzas of one stream take effect in order, RFC 6120 §10.1).
            for c in (low, high):
                await c.plugin["xep_0199"].ping(jid="localhost", timeout=5)
            b.send_message(mto=alice, mbody="to the bare JID", mtype="chat")
            msg = await next_message(high)
            assert msg["body"] == "to the bare JID"
            assert str(msg["to"]) == alice
            b.send_message(mto=f"{alice}/low", mbody="marker", mtype="chat")
            msg = await next_message(low)
            assert msg["body"] == "marker"

    run_async(scenario())


def test_direct_tls_with_alpn(core: CoreProcess, run_async: object) -> None:
    """Direct TLS (XEP-0368) accepts ALPN xmpp-client, offers SASL straight away without
    STARTTLS, and a slixmpp client on it talks to one on the STARTTLS port."""
    alice = account(core, "direct-alice")
    bob = account(core, "direct-bob")

    async def scenario() -> None:
        c = RawClient(core.tls_port)
        await c.connect(tls=True, alpn=["xmpp-client"])
        sslobj = c.writer.get_extra_info("ssl_object")
        assert sslobj.selected_alpn_protocol() == "xmpp-client"
        features = await c.open_stream()
        assert features.find(qn(NS_TLS, "starttls")) is None
        mechanisms = [m.text for m in features.iter(qn(NS_SASL, "mechanism"))]
        assert "PLAIN" in mechanisms and "SCRAM-SHA-256-PLUS" in mechanisms
        await c.close()
        # ALPN is what clients SHOULD send (XEP-0368 §3); a client without it is served too.
        c = RawClient(core.tls_port)
        await c.connect(tls=True)
        assert c.writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        features = await c.open_stream()
        assert features.find(qn(NS_SASL, "mechanisms")) is not None
        await c.close()
        async with (
            slix_client(core.tls_port, f"{alice}/d", PASSWORD, direct_tls=True) as a,
            slix_client(core.c2s_port, f"{bob}/s", PASSWORD) as b,
        ):
            a.send_message(mto=f"{bob}/s", mbody="over direct TLS", mtype="chat")
            assert (await next_message(b))["body"] == "over direct TLS"
            b.send_message(mto=f"{alice}/d", mbody="over STARTTLS", mtype="chat")
            assert (await next_message(a))["body"] == "over STARTTLS"

    run_async(scenario())
    core.wait_log("(direct TLS)")


def test_from_is_stamped_and_checked(core: CoreProcess, run_async: object) -> None:
    """'from' is set to the full JID when absent or bare, kept when it is the full JID, and a
    spoofed 'from' ends the stream with <invalid-from/> without reaching anyone."""
    alice = account(core, "stamp-alice").split("@")[0]
    bob = account(core, "stamp-bob").split("@")[0]

    async def scenario() -> None:
        a = await bound(core.c2s_port, alice, "a")
        b = await bound(core.c2s_port, bob, "b")
        for i, frm in enumerate(["", f"from='{alice}@localhost'", f"from='{a.jid}'"]):
            await a.send(f"<message to='{b.jid}' id='f{i}' {frm}><body>x</body></message>")
            msg = await b.next_element()
            assert msg.get("id") == f"f{i}" and msg.get("from") == a.jid
        await a.send(f"<message to='{b.jid}' from='{bob}@localhost/b' id='spoof'/>")
        assert await a.stream_error() == "invalid-from"
        assert await a.closed()
        # Bob gets nothing: the next thing he receives is this ping's answer.
        await b.send(f"<iq type='get' id='p' to='localhost'><ping xmlns='{NS_PING}'/></iq>")
        reply = await b.next_element()
        assert reply.get("id") == "p" and reply.get("type") == "result", etree.tostring(reply)
        await b.close()

    run_async(scenario())


# Stream rules --------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["before-tls", "after-tls", "before-bind"])
def test_stanza_before_authentication(core: CoreProcess, run_async: object, stage: str) -> None:
    """A stanza before the stream is authenticated and bound is a <not-authorized/> stream
    error (RFC 6120 §4.9.3.12), and nothing is routed."""
    user = account(core, "eager").split("@")[0]

    async def scenario() -> None:
        if stage == "before-bind":
            c, _ = await authenticated(core.c2s_port, user)
        else:
            c = RawClient(core.c2s_port)
            await c.connect()
            await c.open_stream()
            if stage == "after-tls":
                await c.starttls()
        await c.send(f"<message to='{user}@localhost'><body>early</body></message>")
        assert await c.stream_error() == "not-authorized"
        assert await c.closed()

    run_async(scenario())


async def _header_error(core: CoreProcess, header: str) -> tuple[StreamOpen, str | None]:
    c = RawClient(core.c2s_port)
    await c.connect()
    await c.send(f"<?xml version='1.0'?>{header}")
    ours = await c.next_event()
    condition = await c.stream_error()
    assert await c.closed()
    return ours, condition


STREAMS = f"xmlns:stream='{NS_STREAMS}'"


@pytest.mark.parametrize(
    ("header", "condition"),
    [
        (
            f"<stream:stream xmlns='{NS_CLIENT}' {STREAMS} to='example.net' version='1.0'>",
            "host-unknown",
        ),
        (f"<stream:stream xmlns='{NS_CLIENT}' {STREAMS} version='1.0'>", "host-unknown"),
        (
            f"<stream:stream xmlns='{NS_CLIENT}' xmlns:stream='urn:example:streams' "
            "to='localhost' version='1.0'>",
            "invalid-namespace",
        ),
        (
            f"<stream:stream xmlns='jabber:server' {STREAMS} to='localhost' version='1.0'>",
            "invalid-namespace",
        ),
        (f"<stream xmlns='{NS_STREAMS}' to='localhost' version='1.0'>", "bad-namespace-prefix"),
        (
            f"<stream:stream xmlns='{NS_CLIENT}' {STREAMS} to='localhost' version='2.0'>",
            "unsupported-version",
        ),
        (f"<stream:stream xmlns='{NS_CLIENT}' {STREAMS} to='localhost'>", "unsupported-version"),
    ],
    ids=[
        "unknown-domain",
        "no-to",
        "stream-namespace",
        "content-namespace",
        "unprefixed",
        "version-2",
        "no-version",
    ],
)
def test_stream_header_errors(
    core: CoreProcess, run_async: object, header: str, condition: str
) -> None:
    """A bad stream header is answered with our own header first, then the stream error
    (RFC 6120 §4.9.1.2), then the close."""
    ours, got = run_async(_header_error(core, header))
    assert isinstance(ours, StreamOpen)
    assert ours.tag == qn(NS_STREAMS, "stream") and ours.prefix == "stream"
    assert ours.attrs.get("from") == "localhost"
    assert got == condition


def test_stream_ids_are_unpredictable(core: CoreProcess, run_async: object) -> None:
    """Every stream, restarted ones included, gets a different id of at least 12 random
    characters (RFC 6120 §4.7.3); our header answers 'from' with 'to' (§4.7.2)."""
    user = account(core, "ids").split("@")[0]

    async def scenario() -> list[str]:
        ids = []
        for _ in range(3):
            c = RawClient(core.c2s_port)
            await c.connect()
            await c.open_stream(extra=f" from='{user}@localhost'")
            assert c.header.attrs.get("to") == f"{user}@localhost"
            ids.append(c.header.attrs["id"])
            await c.starttls()
            ids.append(c.header.attrs["id"])
            await c.close()
        return ids

    ids = run_async(scenario())
    assert len(set(ids)) == len(ids)
    assert all(len(i) >= 12 for i in ids)
    # Not a counter: the ids share no common prefix longer than chance allows.
    assert len({i[:4] for i in ids}) > 1


def test_clean_close(core: CoreProcess, run_async: object) -> None:
    """</stream:stream> from the client is answered with </stream:stream> and the connection
    closes; the session is gone (an IQ to it is service-unavailable, RFC 6121 §8.5.3.2.2)."""
    user = account(core, "closer").split("@")[0]
    peer = account(core, "closer-peer").split("@")[0]

    async def scenario() -> str:
        c = await bound(core.c2s_port, user)
        name = c.sockname
        await c.send("</stream:stream>")
        assert isinstance(await c.next_event(), StreamClose)
        assert await c.closed()
        await asyncio.to_thread(core.wait_log, f"c2s {name} closed")
        p = await bound(core.c2s_port, peer)
        reply = await p.request(
            f"<iq type='get' id='g' to='{c.jid}'><ping xmlns='{NS_PING}'/></iq>"
        )
        assert stanza_error(reply) == ("cancel", "service-unavailable")
        await p.close()
        return name

    name = run_async(scenario())
    assert "closed by client" in core.wait_log(f"c2s {name} closed")


def test_keepalive_and_idle_timeout(relaxed_core: CoreProcess, run_async: object) -> None:
    """Whitespace keepalives (RFC 6120 §4.6.1) keep a stream open well past idle_timeout,
    while a silent stream is closed with <connection-timeout/>."""
    talker = account(relaxed_core, "talker").split("@")[0]
    sleeper = account(relaxed_core, "sleeper").split("@")[0]

    async def scenario() -> None:
        t = RawClient(relaxed_core.c2s_port)
        await t.login(talker, PASSWORD, tls="none")
        s = RawClient(relaxed_core.c2s_port)
        await s.login(sleeper, PASSWORD, tls="none")
        silent = asyncio.ensure_future(s.stream_error(timeout=4 * IDLE_TIMEOUT))
        start = time.monotonic()
        while time.monotonic() - start < 3.5 * IDLE_TIMEOUT:
            await t.send(" ")
            await asyncio.sleep(IDLE_TIMEOUT / 4)
        assert await silent == "connection-timeout"
        reply = await t.request(
            f"<iq type='get' id='k' to='localhost'><ping xmlns='{NS_PING}'/></iq>"
        )
        assert reply.get("type") == "result"
        await t.close()

    run_async(scenario())


# Logs ----------------------------------------------------------------------------------


def test_log_lines_per_connection_and_no_password(core: CoreProcess, run_async: object) -> None:
    """The log has one line per connection event (opened, TLS, authenticated, bound, closed
    with its reason) and never the password, in clear or base64 (PLAIN carries it so)."""
    user = account(core, "logged").split("@")[0]

    async def scenario() -> str:
        c = RawClient(core.c2s_port)
        await c.login(user, PASSWORD, mechanism="PLAIN", resource="log")
        name = c.sockname
        await c.close()
        await asyncio.to_thread(core.wait_log, f"c2s {name} closed")
        return name

    name = run_async(scenario())
    lines = [line for line in core.log().splitlines() if f"c2s {name} " in line]
    events = ["opened", "TLS started", "authenticated as", "bound", "closed"]
    for event in events:
        assert sum(f"c2s {name} {event}" in line for line in lines) == 1, (event, lines)
    assert f"authenticated as {user}@localhost" in "\n".join(lines)
    assert any(f"closed ({user}@localhost/log): closed by client" in line for line in lines)
    log = core.log()
    assert PASSWORD not in log
    assert base64.b64encode(plain_initial(user, PASSWORD)).decode() not in log


def test_no_unexpected_failures_logged(
    core: CoreProcess, relaxed_core: CoreProcess, strict_core: CoreProcess
) -> None:
    """Nothing the tests above did made any core log an error or a traceback."""
    for proc in (core, relaxed_core, strict_core):
        assert proc.alive
        log = proc.log()
        assert " ERROR " not in log and "Traceback" not in log, log[-4000:]
