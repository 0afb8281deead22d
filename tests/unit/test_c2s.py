"""Client streams over in-memory transports (RFC 6120 §4-§8, §10.1; XEP-0368).

Each test drives one or more C2SStream instances of a real CoreServer (real Redis, task.Clock)
as a client would, and reads the server's answers as parsed XML.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from twisted.internet import ssl

from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_BIND, NS_CLIENT, NS_SASL, NS_STREAMS, NS_TLS, qn
from core.xmpp.parser import StreamClose, StreamOpen
from core.xmpp.sasl import ScramClient, plain_initial
from core.xmpp.stanza import make
from tests.unit.helpers import (
    DOMAIN,
    HEADER,
    PASSWORD,
    Client,
    add_account,
    assert_xml,
    b64,
    bind_request,
    client_tls_options,
    elements,
    running_server,
    sasl_auth,
    sasl_element,
    stanza_error,
    stream_error,
    until,
)

STREAMS = f"xmlns:stream='{NS_STREAMS}'"
SASL = f"xmlns='{NS_SASL}'"
FEATURES_AUTH = f"""
<stream:features {STREAMS}>
  <starttls xmlns='{NS_TLS}'/>
  <mechanisms {SASL}><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>
  </mechanisms>
</stream:features>"""

PING = f"<iq type='get' id='p' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
Body = Callable[..., Awaitable[None]]


def run(
    redis_url: str, tmp_path: Path, body: Body, *, users: tuple[str, ...] = (), **cfg: Any
) -> None:
    """Run ``body(server)`` on a fresh event loop with a server (plain streams allowed unless
    the test says otherwise) and the given accounts."""
    cfg.setdefault("require_encryption", False)

    async def main() -> None:
        async with running_server(redis_url, tmp_path, **cfg) as server:
            for user in users:
                await add_account(server, user)
            await body(server)

    asyncio.run(main())


# -- Stream headers (RFC 6120 §4.7, §4.8, §4.9.1.2) --------------------------------------


def test_header_gets_header_and_features(redis_url: str, tmp_path: Path) -> None:
    """The answer header carries from, a fresh id, version 1.0 and 'to' = the client's 'from';
    the features offer STARTTLS and SCRAM but no PLAIN on a plain stream."""

    async def body(server: Any) -> None:
        c = Client(server)
        features = await c.open(extra=" from='alice@localhost' xml:lang='fr'")
        assert c.header is not None
        assert c.header.tag == qn(NS_STREAMS, "stream")
        assert c.header.prefix == "stream" and c.header.nsmap[None] == NS_CLIENT
        attrs = c.header.attrs
        assert attrs["from"] == DOMAIN and attrs["version"] == "1.0"
        assert attrs["to"] == "alice@localhost"
        assert len(attrs["id"]) >= 16 and attrs["id"] == c.stream.stream_id
        assert_xml(features, FEATURES_AUTH)
        assert c.stream.lang == "fr"
        other = Client(server)
        await other.open()
        assert other.header is not None and other.header.attrs["id"] != attrs["id"]

    run(redis_url, tmp_path, body)


def test_required_tls_is_the_only_feature(redis_url: str, tmp_path: Path) -> None:
    """With encryption required, the first features are <starttls><required/></starttls>."""

    async def body(server: Any) -> None:
        features = await Client(server).open()
        assert_xml(
            features,
            f"<stream:features {STREAMS}><starttls xmlns='{NS_TLS}'><required/></starttls>"
            "</stream:features>",
        )

    run(redis_url, tmp_path, body, require_encryption=True)


@pytest.mark.parametrize(
    ("header", "condition"),
    [
        (HEADER.format(to="example.org", extra=""), "host-unknown"),
        (HEADER.format(to="a@@b", extra=""), "host-unknown"),
        (
            f"<stream:stream xmlns='{NS_CLIENT}' {STREAMS} version='1.0'>",
            "host-unknown",
        ),
        (
            f"<stream:stream xmlns='{NS_CLIENT}' xmlns:stream='urn:wrong' to='{DOMAIN}' "
            "version='1.0'>",
            "invalid-namespace",
        ),
        (
            f"<stream:stream xmlns='jabber:server' {STREAMS} to='{DOMAIN}' version='1.0'>",
            "invalid-namespace",
        ),
        (
            f"<stream xmlns='{NS_STREAMS}' to='{DOMAIN}' version='1.0'>",
            "bad-namespace-prefix",
        ),
        (
            HEADER.format(to=DOMAIN, extra="").replace("' version='1.0'", "' version='2.0'"),
            "unsupported-version",
        ),
        (HEADER.format(to=DOMAIN, extra="").replace("' version='1.0'", "'"), "unsupported-version"),
    ],
    ids=[
        "other-host",
        "bad-to",
        "no-to",
        "stream-namespace",
        "content-namespace",
        "no-prefix",
        "version-2",
        "no-version",
    ],
)
def test_bad_header_is_refused(redis_url: str, tmp_path: Path, header: str, condition: str) -> None:
    """A bad header gets a header of our own, the stream error, and the stream closes."""

    async def body(server: Any) -> None:
        c = Client(server)
        assert await c.open_error(header) == condition
        assert c.stream not in server.c2s_streams  # connectionLost ran

    run(redis_url, tmp_path, body)


def test_minor_version_above_ours_is_accepted(redis_url: str, tmp_path: Path) -> None:
    """§4.7.5: a higher minor version is answered with ours, 1.0."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open(
            raw=HEADER.format(to=DOMAIN, extra="").replace("' version='1.0'", "' version='1.1'")
        )
        assert c.header is not None and c.header.attrs["version"] == "1.0"

    run(redis_url, tmp_path, body)


def test_not_well_formed_xml_closes_with_a_header_first(redis_url: str, tmp_path: Path) -> None:
    """§4.9.1.2: broken XML before any header still gets our header, then the error."""

    async def body(server: Any) -> None:
        c = Client(server)
        events = await c.exchange("<?xml version='1.0'?><!DOCTYPE x>")
        assert isinstance(events[0], StreamOpen)
        assert stream_error(elements(events)[0]) == "restricted-xml"
        assert isinstance(events[-1], StreamClose) and c.closed

    run(redis_url, tmp_path, body)


# -- Before authentication (RFC 6120 §4.3, §5, §6) ---------------------------------------


@pytest.mark.parametrize(
    "stanza",
    [
        "<message to='bob@localhost'><body>hi</body></message>",
        "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<presence/>",
        bind_request("res"),
    ],
    ids=["message", "iq", "presence", "bind"],
)
def test_stanzas_before_auth_are_not_authorized(
    redis_url: str, tmp_path: Path, stanza: str
) -> None:
    """§4.9.3.12: anything but SASL or STARTTLS before authentication is <not-authorized/>."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        events = await c.exchange(stanza)
        assert stream_error(elements(events)[0]) == "not-authorized"
        assert isinstance(events[-1], StreamClose) and c.closed

    run(redis_url, tmp_path, body)


def test_auth_before_required_tls(redis_url: str, tmp_path: Path) -> None:
    """§6.4.1: <auth/> before the required TLS fails with <encryption-required/>; a stanza
    closes the stream with <not-authorized/>."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        failure = await c.element(sasl_auth("SCRAM-SHA-256", b"n,,n=alice,r=abc"))
        assert_xml(failure, f"<failure {SASL}><encryption-required/><text>*</text></failure>")
        assert not c.closed
        events = await c.exchange("<presence/>")
        assert stream_error(elements(events)[0]) == "not-authorized"

    run(redis_url, tmp_path, body, require_encryption=True, users=("alice",))


# -- SASL (RFC 6120 §6) ------------------------------------------------------------------


@pytest.mark.parametrize("hash_name", ["sha256", "sha1"])
def test_scram_without_tls(redis_url: str, tmp_path: Path, hash_name: str) -> None:
    """SCRAM-SHA-256 and SCRAM-SHA-1 succeed on a plain stream; the server's signature
    verifies and the restarted stream offers binding and the optional session."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        success = await c.scram("alice", hash_name=hash_name)
        assert_xml(success, f"<success {SASL}>*</success>")
        assert c.stream.username == "alice"
        c.parser.reset()
        features = await c.open()
        assert_xml(
            features,
            f"<stream:features {STREAMS}><bind xmlns='{NS_BIND}'/>"
            "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>"
            "</stream:features>",
        )

    run(redis_url, tmp_path, body, users=("alice",))


def test_scram_without_initial_response(redis_url: str, tmp_path: Path) -> None:
    """§6.4.2: <auth/> without data gets an empty challenge ('='), then the exchange goes on."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        scram = ScramClient("sha256", "alice", PASSWORD)
        challenge = await c.element(f"<auth {SASL} mechanism='SCRAM-SHA-256'/>")
        assert_xml(challenge, f"<challenge {SASL}>=</challenge>")
        challenge = await c.element(sasl_element("response", scram.first()))
        assert challenge is not None and challenge.tag == qn(NS_SASL, "challenge")
        success = await c.element(sasl_element("response", scram.respond(b64(challenge.text))))
        assert success is not None and success.tag == qn(NS_SASL, "success")
        scram.verify(b64(success.text))

    run(redis_url, tmp_path, body, users=("alice",))


def test_plain_refused_without_tls(redis_url: str, tmp_path: Path) -> None:
    """§6.4.1, §13.9.4: PLAIN is not offered on a plain stream and fails with
    <encryption-required/> when tried."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        failure = await c.element(sasl_auth("PLAIN", plain_initial("alice", PASSWORD)))
        assert_xml(failure, f"<failure {SASL}><encryption-required/></failure>")

    run(redis_url, tmp_path, body, users=("alice",))


def test_plain_when_allowed_without_tls(redis_url: str, tmp_path: Path) -> None:
    """With allow_plain_without_tls PLAIN is offered and works; success carries no data."""

    async def body(server: Any) -> None:
        c = Client(server)
        features = await c.open()
        names = [m.text for m in features.iter(qn(NS_SASL, "mechanism"))]
        assert names[-1] == "PLAIN"
        success = await c.element(sasl_auth("PLAIN", plain_initial("alice", PASSWORD)))
        assert_xml(success, f"<success {SASL}/>")

    run(redis_url, tmp_path, body, users=("alice",), allow_plain_without_tls=True)


@pytest.mark.parametrize(
    ("auth", "condition"),
    [
        (sasl_auth("DIGEST-MD5", None), "invalid-mechanism"),
        (f"<auth {SASL}>bm90aGluZw==</auth>", "invalid-mechanism"),
        (f"<auth {SASL} mechanism='SCRAM-SHA-256'>not base64!</auth>", "incorrect-encoding"),
        (sasl_auth("SCRAM-SHA-256", b"x,,n=alice,r=abc"), "malformed-request"),
        (sasl_auth("SCRAM-SHA-256-PLUS", b"p=tls-exporter,,n=alice,r=abc"), "invalid-mechanism"),
        (sasl_element("response", b"n,,n=alice,r=abc"), "malformed-request"),
    ],
    ids=["unknown", "no-mechanism", "base64", "gs2-header", "plus-without-tls", "response"],
)
def test_sasl_failures(redis_url: str, tmp_path: Path, auth: str, condition: str) -> None:
    """§6.5: each bad <auth/> or stray <response/> gets its <failure/> and the stream stays."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        failure = await c.element(auth)
        assert failure is not None and failure.tag == qn(NS_SASL, "failure")
        assert etree.QName(failure[0]).localname == condition
        assert not c.closed
        assert (await c.scram("alice")).tag == qn(NS_SASL, "success")  # type: ignore[union-attr]

    run(redis_url, tmp_path, body, users=("alice",))


def test_sasl_abort_then_retry(redis_url: str, tmp_path: Path) -> None:
    """§6.4.4: <abort/> ends the exchange with <failure><aborted/>; a new one may start."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        scram = ScramClient("sha256", "alice", PASSWORD)
        challenge = await c.element(sasl_auth(scram.mechanism, scram.first()))
        assert challenge is not None and challenge.tag == qn(NS_SASL, "challenge")
        failure = await c.element(f"<abort {SASL}/>")
        assert_xml(failure, f"<failure {SASL}><aborted/></failure>")
        # The aborted exchange is gone: its final message is now a stray response.
        stray = await c.element(sasl_element("response", scram.respond(b64(challenge.text))))
        assert stray is not None and stray[0].tag == qn(NS_SASL, "malformed-request")
        assert (await c.scram("alice")).tag == qn(NS_SASL, "success")  # type: ignore[union-attr]

    run(redis_url, tmp_path, body, users=("alice",))


def test_wrong_password_then_policy_violation(redis_url: str, tmp_path: Path) -> None:
    """§6.4.5: each failed attempt is <not-authorized/>; after max_failures the stream closes
    with <policy-violation/>. An unknown user fails the same way."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        assert_xml(await c.scram("alice", "wrong"), f"<failure {SASL}><not-authorized/></failure>")
        assert_xml(await c.scram("nobody"), f"<failure {SASL}><not-authorized/></failure>")
        assert not c.closed
        events = await c.exchange(sasl_auth("PLAIN", plain_initial("alice", "wrong")))
        got = elements(events)
        assert got[0][0].tag == qn(NS_SASL, "encryption-required")  # no PLAIN here: no count
        assert not c.closed
        auth = ScramClient("sha1", "alice", "wrong")
        await c.element(sasl_auth(auth.mechanism, auth.first()))
        events = await c.exchange(sasl_element("response", b"c=biws,r=x,p=AAAA"))
        got = elements(events)
        assert got[0].tag == qn(NS_SASL, "failure")
        assert stream_error(got[1]) == "policy-violation"
        assert c.closed

    run(redis_url, tmp_path, body, users=("alice",), auth__max_failures=3)


def test_failures_per_address_are_limited(redis_url: str, tmp_path: Path) -> None:
    """Failed logins are counted in Redis across connections: past the limit, even the right
    password gets <temporary-auth-failure/>."""

    async def body(server: Any) -> None:
        first = Client(server)
        await first.open()
        assert (await first.scram("alice", "wrong"))[0].tag == qn(  # type: ignore[index]
            NS_SASL, "not-authorized"
        )
        second = Client(server)
        await second.open()
        failure = await second.scram("alice")
        assert failure is not None
        assert failure[0].tag == qn(NS_SASL, "temporary-auth-failure")

    run(redis_url, tmp_path, body, users=("alice",), auth__max_failures_per_minute=1)


def test_failure_answer_waits_on_the_clock(redis_url: str, tmp_path: Path) -> None:
    """The failure answer comes failure_delay seconds later, on the server's clock."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        scram = ScramClient("sha256", "alice", "wrong")
        challenge = await c.element(sasl_auth(scram.mechanism, scram.first()))
        assert challenge is not None
        c.send(sasl_element("response", scram.respond(b64(challenge.text))))
        due = server.reactor.seconds() + 2.0
        await until(lambda: any(call.getTime() == due for call in server.reactor.getDelayedCalls()))
        assert c.read() == []
        server.reactor.advance(2.0)
        await c.settle()
        assert_xml(elements(c.read())[0], f"<failure {SASL}><not-authorized/></failure>")

    run(redis_url, tmp_path, body, users=("alice",), auth__failure_delay=2.0)


@pytest.mark.parametrize(
    ("authzid", "ok"),
    [("alice@localhost", True), ("Alice@LOCALHOST", True), ("bob@localhost", False)],
)
def test_plain_authzid(redis_url: str, tmp_path: Path, authzid: str, ok: bool) -> None:
    """§6.3.8: an authorization identity other than the user's own JID is
    <invalid-authzid/>; the user's JID in another case is the same JID."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        answer = await c.element(sasl_auth("PLAIN", plain_initial("alice", PASSWORD, authzid)))
        assert answer is not None
        if ok:
            assert answer.tag == qn(NS_SASL, "success")
        else:
            assert_xml(answer, f"<failure {SASL}><invalid-authzid/><text>*</text></failure>")

    run(redis_url, tmp_path, body, users=("alice", "bob"), allow_plain_without_tls=True)


def test_credential_store_failure_is_temporary(redis_url: str, tmp_path: Path) -> None:
    """An unexpected failure while looking up credentials is logged and answered with
    <temporary-auth-failure/>; the stream stays open."""

    async def body(server: Any) -> None:
        async def broken(*_: Any) -> None:
            raise RuntimeError("store down")

        server.credentials = broken
        c = Client(server)
        await c.open()
        failure = await c.scram("alice")
        assert failure is not None and failure[0].tag == qn(NS_SASL, "temporary-auth-failure")
        assert not c.closed

    run(redis_url, tmp_path, body, users=("alice",))


# -- STARTTLS, direct TLS and channel binding (RFC 6120 §5, XEP-0368, RFC 9266, RFC 5929) --


def test_starttls_then_scram_plus_tls_exporter(redis_url: str, tmp_path: Path) -> None:
    """STARTTLS on TLS 1.3: the new features offer every mechanism, -PLUS first, with both
    channel-binding types (XEP-0440); SCRAM-SHA-256-PLUS binds with tls-exporter."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        features = await c.starttls()
        assert c.ssl_connection().get_protocol_version_name() == "TLSv1.3"
        assert c.stream.tls_active
        assert_xml(
            features,
            f"""<stream:features {STREAMS}>
              <mechanisms {SASL}>
                <mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism>
                <mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>
                <mechanism>PLAIN</mechanism>
              </mechanisms>
              <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>
                <channel-binding type='tls-server-end-point'/>
                <channel-binding type='tls-exporter'/>
              </sasl-channel-binding>
            </stream:features>""",
        )
        success = await c.scram("alice", cb_type="tls-exporter", plus=True)
        assert success is not None and success.tag == qn(NS_SASL, "success")

    run(redis_url, tmp_path, body, users=("alice",), require_encryption=True)


def test_tls_12_offers_only_server_end_point(redis_url: str, tmp_path: Path) -> None:
    """On TLS 1.2 tls-exporter is not offered (RFC 9266 §3); SCRAM-SHA-1-PLUS binds with
    tls-server-end-point, and a client claiming tls-exporter is refused."""

    async def body(server: Any) -> None:
        c = Client(server, max_tls=ssl.TLSVersion.TLSv1_2)
        await c.open()
        features = await c.starttls()
        assert c.ssl_connection().get_protocol_version_name() == "TLSv1.2"
        cb = features.find(qn("urn:xmpp:sasl-cb:0", "sasl-channel-binding"))
        assert cb is not None and [e.get("type") for e in cb] == ["tls-server-end-point"]
        refused = await c.element(
            sasl_auth("SCRAM-SHA-256-PLUS", b"p=tls-exporter,,n=alice,r=abcdef")
        )
        assert refused is not None and refused[0].tag == qn(NS_SASL, "not-authorized")
        success = await c.scram(
            "alice", hash_name="sha1", cb_type="tls-server-end-point", plus=True
        )
        assert success is not None and success.tag == qn(NS_SASL, "success")

    run(redis_url, tmp_path, body, users=("alice",), require_encryption=True)


def test_scram_plus_with_other_channel_data_fails(redis_url: str, tmp_path: Path) -> None:
    """RFC 5802 §6: binding data that is not this channel's fails the exchange."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        await c.starttls()
        scram = ScramClient(
            "sha256",
            "alice",
            PASSWORD,
            cb_type="tls-exporter",
            cb_data=b"\0" * 32,
            plus_advertised=True,
        )
        challenge = await c.element(sasl_auth(scram.mechanism, scram.first()))
        assert challenge is not None
        failure = await c.element(sasl_element("response", scram.respond(b64(challenge.text))))
        assert_xml(failure, f"<failure {SASL}><not-authorized/><text>*</text></failure>")

    run(redis_url, tmp_path, body, users=("alice",), require_encryption=True)


def test_starttls_discards_what_was_pipelined(redis_url: str, tmp_path: Path) -> None:
    """§5.4.3.3: data sent with <starttls/> before <proceed/> is not acted on after TLS."""

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        events = await c.exchange(
            f"<starttls xmlns='{NS_TLS}'/>" + sasl_auth("PLAIN", plain_initial("alice", PASSWORD))
        )
        assert_xml(elements(events)[0], f"<proceed xmlns='{NS_TLS}'/>")
        assert len(elements(events)) == 1 and not c.closed
        c.client_end.startTLS(client_tls_options(server))
        c.parser.reset()
        await c.settle()
        features = await c.open()
        assert features.find(qn(NS_SASL, "mechanisms")) is not None
        assert c.stream.username is None

    run(redis_url, tmp_path, body, users=("alice",), require_encryption=True)


def test_direct_tls_plain_and_bind(redis_url: str, tmp_path: Path) -> None:
    """XEP-0368: TLS from the first byte with ALPN xmpp-client; no STARTTLS offered; PLAIN
    works over TLS and the session binds."""

    async def body(server: Any) -> None:
        c = Client(server, direct_tls=True)
        features = await c.open()
        assert c.ssl_connection().get_alpn_proto_negotiated() == b"xmpp-client"
        assert features.find(qn(NS_TLS, "starttls")) is None
        assert c.stream.direct_tls and c.stream.tls_active
        success = await c.element(sasl_auth("PLAIN", plain_initial("alice", PASSWORD)))
        assert_xml(success, f"<success {SASL}/>")
        c.parser.reset()
        await c.open()
        reply = await c.element(bind_request("tls"))
        assert reply is not None and reply.get("type") == "result"
        assert server.router.session(c.stream.jid) is c.stream

    run(redis_url, tmp_path, body, users=("alice",))


def test_direct_tls_scram_plus_server_end_point(redis_url: str, tmp_path: Path) -> None:
    """Channel binding works on direct TLS: SCRAM-SHA-1-PLUS with tls-server-end-point."""

    async def body(server: Any) -> None:
        c = Client(server, direct_tls=True)
        await c.open()
        success = await c.scram(
            "alice", hash_name="sha1", cb_type="tls-server-end-point", plus=True
        )
        assert success is not None and success.tag == qn(NS_SASL, "success")

    run(redis_url, tmp_path, body, users=("alice",))


# -- Resource binding (RFC 6120 §7) ------------------------------------------------------


async def authed(server: Any, user: str = "alice") -> Client:
    """A client whose stream is authenticated and restarted, ready to bind."""
    c = Client(server)
    await c.open()
    success = await c.scram(user)
    assert success is not None and success.tag == qn(NS_SASL, "success")
    c.parser.reset()
    await c.open()
    return c


def test_bind_chosen_resource(redis_url: str, tmp_path: Path) -> None:
    """§7.6: the result carries the full JID; the router and Redis know the session."""

    async def body(server: Any) -> None:
        c = await authed(server)
        reply = await c.element(bind_request("phone"))
        assert_xml(
            reply,
            f"<iq xmlns='{NS_CLIENT}' type='result' id='bind1'><bind xmlns='{NS_BIND}'>"
            "<jid>alice@localhost/phone</jid></bind></iq>",
        )
        assert server.router.session(c.stream.jid) is c.stream
        assert await server.sessions.nodes_of("alice@localhost") == {"phone": "unit"}

    run(redis_url, tmp_path, body, users=("alice",))


def test_bind_generated_resource(redis_url: str, tmp_path: Path) -> None:
    """§7.6.1: without a resource the server generates one."""

    async def body(server: Any) -> None:
        c = await authed(server)
        reply = await c.element(bind_request(None))
        assert reply is not None
        jid = reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        assert jid is not None and jid.startswith("alice@localhost/") and len(jid) > 20

    run(redis_url, tmp_path, body, users=("alice",))


@pytest.mark.parametrize("resource", ["res\u0085", "\u200b"])
def test_bind_invalid_resource(redis_url: str, tmp_path: Path, resource: str) -> None:
    """§7.7.2.1: a resource the OpaqueString profile refuses is <bad-request/>; the client
    may try again."""

    async def body(server: Any) -> None:
        c = await authed(server)
        reply = await c.element(bind_request(resource))
        assert stanza_error(reply) == ("modify", "bad-request")
        assert (await c.element(bind_request("ok"))).get("type") == "result"  # type: ignore[union-attr]

    run(redis_url, tmp_path, body, users=("alice",))


def test_bind_conflict_replaces_old_session(redis_url: str, tmp_path: Path) -> None:
    """§7.7.2.2: binding a resource in use closes the old stream with <conflict/>; the new
    session receives what is sent to the full JID and stays registered in Redis."""

    async def body(server: Any) -> None:
        old = Client(server)
        await old.login("alice", resource="desk")
        new = await authed(server)
        reply = await new.element(bind_request("desk"))
        assert reply is not None and reply.get("type") == "result"
        await old.settle()
        events = old.read()
        assert stream_error(elements(events)[0]) == "conflict"
        assert isinstance(events[-1], StreamClose) and old.closed
        await old.settle()
        assert server.router.session(new.stream.jid) is new.stream
        assert await server.sessions.nodes_of("alice@localhost") == {"desk": "unit"}

    run(redis_url, tmp_path, body, users=("alice",))


@pytest.mark.parametrize("second", ["other", None], ids=["chosen", "generated"])
def test_bind_beyond_max_resources(redis_url: str, tmp_path: Path, second: str | None) -> None:
    """§7.6.2.1: past max_resources a new resource, chosen or generated, is
    <resource-constraint/> (type wait); rebinding one in use is still allowed."""

    async def body(server: Any) -> None:
        first = Client(server)
        await first.login("alice", resource="one")
        c = await authed(server)
        reply = await c.element(bind_request(second))
        assert stanza_error(reply) == ("wait", "resource-constraint")
        reply = await c.element(bind_request("one"))
        assert reply is not None and reply.get("type") == "result"

    run(redis_url, tmp_path, body, users=("alice",), max_resources=1)


def test_stanza_before_bind_is_not_authorized(redis_url: str, tmp_path: Path) -> None:
    """§7.1: after authentication, anything but a bind request closes the stream."""

    async def body(server: Any) -> None:
        c = await authed(server)
        events = await c.exchange("<message to='bob@localhost'><body>x</body></message>")
        assert stream_error(elements(events)[0]) == "not-authorized"

    run(redis_url, tmp_path, body, users=("alice",))


# -- Stanzas of a bound session (RFC 6120 §8, §10) ----------------------------------------


async def bound(server: Any, user: str = "alice", resource: str = "res") -> Client:
    c = Client(server)
    await c.login(user, resource=resource)
    return c


def test_legacy_session_is_a_no_op(redis_url: str, tmp_path: Path) -> None:
    """RFC 3921 §3: the session request is answered with an empty result."""

    async def body(server: Any) -> None:
        c = await bound(server)
        reply = await c.element(
            "<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
        )
        assert_xml(
            reply, f"<iq xmlns='{NS_CLIENT}' type='result' id='s1' to='alice@localhost/res'/>"
        )

    run(redis_url, tmp_path, body, users=("alice",))


def test_from_is_stamped(redis_url: str, tmp_path: Path) -> None:
    """§8.1.2.1: the server stamps the full JID, whether 'from' was absent, the bare JID or
    the full JID; a stanza to another full JID arrives unchanged otherwise."""

    async def body(server: Any) -> None:
        alice = await bound(server)
        bob = await bound(server, "bob", "pc")
        for frm in ("", " from='alice@localhost'", " from='alice@localhost/res'"):
            await alice.exchange(
                f"<message to='bob@localhost/pc' id='m'{frm}><body>x</body></message>"
            )
            await bob.settle()
            got = elements(bob.read())
            assert_xml(
                got[0],
                f"<message xmlns='{NS_CLIENT}' to='bob@localhost/pc' id='m' "
                "from='alice@localhost/res'><body>x</body></message>",
            )

    run(redis_url, tmp_path, body, users=("alice", "bob"))


@pytest.mark.parametrize("frm", ["bob@localhost", "alice@localhost/other", "not a jid@"])
def test_invalid_from_closes_stream(redis_url: str, tmp_path: Path, frm: str) -> None:
    """§4.9.3.9: a 'from' that is not the session's own JID is <invalid-from/>."""

    async def body(server: Any) -> None:
        c = await bound(server)
        events = await c.exchange(f"<message from='{frm}' to='bob@localhost'/>")
        assert stream_error(elements(events)[0]) == "invalid-from"
        assert c.closed

    run(redis_url, tmp_path, body, users=("alice",))


@pytest.mark.parametrize("kind", ["message", "iq", "presence"])
def test_malformed_to_is_jid_malformed(redis_url: str, tmp_path: Path, kind: str) -> None:
    """§8.3.3.8: a 'to' that is no JID bounces with <jid-malformed/> from the server."""

    async def body(server: Any) -> None:
        c = await bound(server)
        payload = "<ping xmlns='urn:xmpp:ping'/>" if kind == "iq" else ""
        itype = " type='get'" if kind == "iq" else ""
        reply = await c.element(f"<{kind} to='a@b@c' id='x1'{itype}>{payload}</{kind}>")
        assert stanza_error(reply) == ("modify", "jid-malformed")
        assert reply is not None and reply.get("to") == "alice@localhost/res"
        assert reply.get("from") is None and reply.get("id") == "x1"

    run(redis_url, tmp_path, body, users=("alice",))


@pytest.mark.parametrize(
    "iq",
    [
        "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq type='fetch' id='q'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq id='q'><ping xmlns='urn:xmpp:ping'/></iq>",
        f"<iq type='get' id='q' to='{DOMAIN}'/>",
        f"<iq type='get' id='q' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/>"
        "<query xmlns='jabber:iq:version'/></iq>",
        "<iq type='get' id='q'/>",
    ],
    ids=["no-id", "bad-type", "no-type", "no-child", "two-children", "no-child-to-self"],
)
def test_bad_iq_is_bad_request(redis_url: str, tmp_path: Path, iq: str) -> None:
    """§8.2.3: an IQ needs an id, a known type and, for get/set, exactly one child."""

    async def body(server: Any) -> None:
        c = await bound(server)
        reply = await c.element(iq)
        assert stanza_error(reply) == ("modify", "bad-request")
        assert not c.closed

    run(redis_url, tmp_path, body, users=("alice",))


def test_unknown_presence_type_is_bad_request(redis_url: str, tmp_path: Path) -> None:
    """RFC 6121 §4.7.1: a presence type outside the defined values is <bad-request/>."""

    async def body(server: Any) -> None:
        c = await bound(server)
        reply = await c.element("<presence type='online' id='p1'/>")
        assert stanza_error(reply) == ("modify", "bad-request")
        assert not c.stream.available

    run(redis_url, tmp_path, body, users=("alice",))


def test_result_to_server_without_id_is_dropped(redis_url: str, tmp_path: Path) -> None:
    """§8.3.1: a result is never answered with an error, even a malformed one."""

    async def body(server: Any) -> None:
        c = await bound(server)
        assert await c.element(f"<iq type='result' to='{DOMAIN}'/>") is None
        assert not c.closed

    run(redis_url, tmp_path, body, users=("alice",))


@pytest.mark.parametrize("element", ["<foo/>", "<stream:features/>", f"<auth {SASL}/>"])
def test_unsupported_stanza_type(redis_url: str, tmp_path: Path, element: str) -> None:
    """§4.9.3.24: a first-level element that is not a stanza closes the stream."""

    async def body(server: Any) -> None:
        c = await bound(server)
        events = await c.exchange(element)
        assert stream_error(elements(events)[0]) == "unsupported-stanza-type"

    run(redis_url, tmp_path, body, users=("alice",))


def test_server_iqs_through_the_stream(redis_url: str, tmp_path: Path) -> None:
    """A ping to the server is answered; an unknown payload is <service-unavailable/>."""

    async def body(server: Any) -> None:
        c = await bound(server)
        reply = await c.element(
            f"<iq type='get' id='p' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        assert_xml(
            reply,
            f"<iq xmlns='{NS_CLIENT}' type='result' id='p' from='{DOMAIN}' "
            "to='alice@localhost/res'/>",
        )
        reply = await c.element(
            f"<iq type='get' id='u' to='{DOMAIN}'><x xmlns='urn:unknown'/></iq>"
        )
        assert stanza_error(reply) == ("cancel", "service-unavailable")

    run(redis_url, tmp_path, body, users=("alice",))


def test_handler_exception_is_internal_server_error(redis_url: str, tmp_path: Path) -> None:
    """An exception in a handler is logged and answered with <internal-server-error/>; the
    stream stays open and its next stanza is served."""
    module = Module("boom")

    @module.iq("get", "{urn:test}boom")
    async def boom(ctx: IqContext) -> None:
        raise RuntimeError("bug")

    from core.modules import ping

    async def body(server: Any) -> None:
        c = await bound(server)
        reply = await c.element(
            f"<iq type='get' id='b' to='{DOMAIN}'><boom xmlns='urn:test'/></iq>"
        )
        assert stanza_error(reply) == ("cancel", "internal-server-error")
        reply = await c.element(
            f"<iq type='get' id='p' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        assert reply is not None and reply.get("type") == "result"

    run(redis_url, tmp_path, body, users=("alice",), modules=[module, ping.module])


def test_routing_failure_is_internal_server_error(redis_url: str, tmp_path: Path) -> None:
    """A failure while the router decides (here the account lookup) is answered with
    <internal-server-error/>, and the stream goes on."""

    async def body(server: Any) -> None:
        c = await bound(server)

        async def broken(_: Any) -> bool:
            raise RuntimeError("store down")

        server.account_exists = broken
        reply = await c.element("<message to='nobody@localhost' id='m'><body>x</body></message>")
        assert stanza_error(reply) == ("cancel", "internal-server-error")
        assert not c.closed

    run(redis_url, tmp_path, body, users=("alice",))


def test_negotiation_failure_closes_with_internal_server_error(
    redis_url: str, tmp_path: Path
) -> None:
    """A failure of our own while negotiating (here a module's stream feature) is logged and
    ends the stream with <internal-server-error/> instead of leaving the client waiting."""
    module = Module("broken-feature")

    @module.stream_feature
    def feature(session: Any) -> None:
        raise RuntimeError("bug")

    async def body(server: Any) -> None:
        c = Client(server)
        await c.open()
        assert (await c.scram("alice")).tag == qn(NS_SASL, "success")  # type: ignore[union-attr]
        c.parser.reset()
        events = await c.exchange(HEADER.format(to=DOMAIN, extra=""))
        assert isinstance(events[0], StreamOpen)
        assert stream_error(elements(events)[0]) == "internal-server-error"
        assert c.closed

    run(redis_url, tmp_path, body, users=("alice",), modules=[module])


def test_stanzas_take_effect_in_order(redis_url: str, tmp_path: Path) -> None:
    """§10.1: stanzas sent together are processed in order, even when the first one waits on
    Redis (an IQ to an account) and the later ones do not."""

    m = Module("account-echo")

    @m.iq("get", "{urn:test}q", to="account")
    async def answer(ctx: IqContext) -> None:
        return None

    from core.modules import ping

    async def body(server: Any) -> None:
        c = await bound(server)
        bob = await bound(server, "bob", "pc")
        events = await c.exchange(
            "<iq type='get' id='1' to='bob@localhost'><q xmlns='urn:test'/></iq>"
            "<iq type='get' id='2' to='nobody@localhost'><q xmlns='urn:test'/></iq>"
            f"<iq type='get' id='3' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        assert [e.get("id") for e in elements(events)] == ["1", "2", "3"]
        assert [e.get("type") for e in elements(events)] == ["result", "error", "result"]
        assert bob.read() == []

    run(redis_url, tmp_path, body, users=("alice", "bob"), modules=[m, ping.module])


def test_own_presence_sets_priority_and_availability(redis_url: str, tmp_path: Path) -> None:
    """RFC 6121 §4.7.2.3: broadcast presence makes the session available with its priority
    (clamped to -128..127); unavailable presence ends that."""

    async def body(server: Any) -> None:
        c = await bound(server)
        assert not c.stream.available
        await c.exchange("<presence><priority>300</priority></presence>")
        assert c.stream.available and c.stream.priority == 127
        await c.exchange("<presence><priority>-5</priority></presence>")
        assert c.stream.priority == -5
        await c.exchange("<presence type='unavailable'/>")
        assert not c.stream.available

    run(redis_url, tmp_path, body, users=("alice",))


# -- Timers and closing (RFC 6120 §4.4, §4.6) ---------------------------------------------


def test_negotiation_timeout(redis_url: str, tmp_path: Path) -> None:
    """A stream not bound within negotiation_timeout closes with <connection-timeout/>; a
    bound one does not."""

    async def body(server: Any) -> None:
        slow = Client(server)
        await slow.open()
        done = await bound(server)
        server.reactor.advance(29)
        await slow.settle()
        assert not slow.closed
        server.reactor.advance(1)
        await slow.settle()
        events = slow.read()
        assert stream_error(elements(events)[0]) == "connection-timeout"
        assert slow.closed
        assert not done.closed

    run(redis_url, tmp_path, body, users=("alice",), negotiation_timeout=30.0, idle_timeout=0)


def test_idle_timeout_counts_whitespace_keepalives(redis_url: str, tmp_path: Path) -> None:
    """§4.6.1: whitespace keeps the stream alive; a full idle period without any traffic
    after a check closes it with <connection-timeout/>."""

    async def body(server: Any) -> None:
        c = await bound(server)
        for _ in range(3):
            server.reactor.advance(60)
            c.send(" ")
            await c.settle()
        assert not c.closed
        server.reactor.advance(60)  # the check sees the last keepalive
        server.reactor.advance(60)  # and then a whole idle period
        await c.settle()
        assert stream_error(elements(c.read())[0]) == "connection-timeout"

    run(redis_url, tmp_path, body, users=("alice",), idle_timeout=60.0)


def test_client_close_ends_session(redis_url: str, tmp_path: Path) -> None:
    """§4.4: the server answers </stream:stream>, closes, and the session is gone from the
    router and from Redis."""

    async def body(server: Any) -> None:
        c = await bound(server)
        events = await c.exchange("</stream:stream>")
        assert events == [StreamClose()] and c.closed
        await c.settle()
        assert server.router.resources("alice@localhost") == {}
        assert await server.sessions.nodes_of("alice@localhost") == {}
        assert c.stream not in server.c2s_streams

    run(redis_url, tmp_path, body, users=("alice",))


def test_lost_connection_ends_session(redis_url: str, tmp_path: Path) -> None:
    """A connection lost without a closing tag unbinds the session too."""

    async def body(server: Any) -> None:
        c = await bound(server)
        await c.disconnect()
        assert server.router.resources("alice@localhost") == {}
        assert await server.sessions.nodes_of("alice@localhost") == {}
        c.stream.send(make("message"))  # a late send writes nothing
        assert c.server_end.value() == b""

    run(redis_url, tmp_path, body, users=("alice",))


def test_stanza_error_replies_are_never_answered(redis_url: str, tmp_path: Path) -> None:
    """§8.3.1: a stanza of type error to an unknown account is dropped, not bounced."""

    async def body(server: Any) -> None:
        c = await bound(server)
        for kind in ("message", "iq"):
            got = await c.exchange(f"<{kind} type='error' id='e' to='nobody@localhost'/>")
            assert got == []

    run(redis_url, tmp_path, body, users=("alice",))
