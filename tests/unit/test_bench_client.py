"""The load generator's byte-level XMPP client (bench/client.py): element scanning, the
SCRAM-SHA-1 client against the server's own SCRAM (RFC 5802), and negotiation over an
in-memory transport."""

from __future__ import annotations

import asyncio
import base64

import pytest

from bench import client
from bench.client import Connection, NegotiationError, ScramSha1, element_end, element_text
from core.xmpp import sasl


def test_element_end_finds_empty_and_full_elements() -> None:
    """An empty-element tag and a start/end pair are both found, whichever comes first."""
    buf = b"<stream:stream x='1'><success xmlns='s'>dj1h</success><proceed xmlns='t'/>"
    start, end = element_end(buf, (b"success",))
    assert buf[start:end] == b"<success xmlns='s'>dj1h</success>"
    start, end = element_end(buf, (b"proceed", b"success"))
    assert buf[start:end].startswith(b"<success")
    start, end = element_end(buf, (b"proceed",))
    assert buf[start:end] == b"<proceed xmlns='t'/>"


def test_element_end_waits_for_the_rest() -> None:
    """An element cut off by the end of the buffer is not reported until complete."""
    assert element_end(b"<iq type='result' id='bind'><bind><jid>a</jid>", (b"iq",)) == (-1, -1)
    assert element_end(b"<iq type='result'", (b"iq",)) == (-1, -1)


def test_element_end_does_not_match_longer_names() -> None:
    """Looking for <iq/> must not stop at an element whose name merely starts with iq."""
    buf = b"<iqx a='1'/><iq id='p'/>"
    start, end = element_end(buf, (b"iq",))
    assert buf[start:end] == b"<iq id='p'/>"


def test_element_text_reads_character_data() -> None:
    """The base64 payload of a challenge is its text; an empty element has none."""
    assert element_text(b"<challenge xmlns='x'>cj1h</challenge>") == b"cj1h"
    assert element_text(b"<success xmlns='x'/>") == b""


def test_scram_client_authenticates_against_the_server_mechanism() -> None:
    """The generator's SCRAM-SHA-1 client completes an exchange with core.xmpp.sasl, and
    verifies the server signature."""
    creds = sasl.derive_scram_credentials("secret", "sha1", iterations=4096)

    async def lookup(username: str, hash_name: str) -> sasl.ScramCredentials | None:
        return creds if username == "alice" and hash_name == "sha1" else None

    async def check(username: str, password: str) -> bool:
        return False

    async def exchange() -> str:
        server = sasl.create_server_mechanism(
            "SCRAM-SHA-1", lookup=lookup, check=check, channel_bindings={}, tls=False
        )
        scram = ScramSha1("alice", "secret")
        challenge = await server.step(scram.first())
        assert isinstance(challenge, sasl.Challenge)
        success = await server.step(scram.respond(challenge.data))
        assert isinstance(success, sasl.Success)
        assert success.data is not None
        scram.verify(success.data)
        return success.username

    assert asyncio.run(exchange()) == "alice"


def test_scram_client_refuses_a_wrong_server_signature() -> None:
    """A server that does not know the password cannot prove it (RFC 5802 §9)."""
    scram = ScramSha1("alice", "secret", nonce="abc")
    salt = base64.b64encode(b"0123456789abcdef").decode()
    scram.respond(f"r=abcdef,s={salt},i=4096".encode())
    with pytest.raises(NegotiationError):
        scram.verify(b"v=" + base64.b64encode(b"x" * 20))


def test_scram_client_refuses_a_nonce_not_extending_its_own() -> None:
    """The server nonce must start with the client nonce (RFC 5802 §5.1)."""
    scram = ScramSha1("alice", "secret", nonce="abc")
    salt = base64.b64encode(b"salt").decode()
    with pytest.raises(NegotiationError):
        scram.respond(f"r=zzz,s={salt},i=4096".encode())


class _Transport(asyncio.Transport):
    """Records writes and answers each client step with a scripted server reply."""

    def __init__(self, conn: Connection, script: list[tuple[bytes, bytes]]) -> None:
        super().__init__()
        self.conn = conn
        self.script = script
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(data)
        if self.script:
            expect, reply = self.script.pop(0)
            assert expect in data, (expect, data)
            asyncio.get_running_loop().call_soon(self.conn.data_received, reply)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def test_login_negotiates_plain_up_to_a_bound_resource() -> None:
    """Stream header, PLAIN, restart and bind, fed in pieces, end with the bound JID."""
    features = (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        b"xmlns:stream='http://etherx.jabber.org/streams' id='x' from='localhost' version='1.0'>"
        b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
    )
    bind_features = (
        b"<stream:stream xmlns='jabber:client' xmlns:stream='x' id='y' version='1.0'>"
        b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
    )
    script = [
        (b"<stream:stream", features),
        (b"mechanism='PLAIN'", b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
        (b"<stream:stream", bind_features),
        (
            b"<resource>r1</resource>",
            b'<iq type="result" id="bind"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind">'
            b"<jid>u1@localhost/r1</jid></bind></iq>",
        ),
    ]

    async def go() -> str:
        conn = Connection()
        conn.connection_made(_Transport(conn, script))
        return await conn.login(
            domain="localhost", username="u1", password="pw", resource="r1", mechanism="PLAIN"
        )

    assert asyncio.run(go()) == "u1@localhost/r1"
    assert not script


def test_login_reports_a_sasl_failure() -> None:
    """A <failure/> ends the login with NegotiationError, not a hang."""
    features = (
        b"<stream:stream xmlns:stream='x'><stream:features><mechanisms>"
        b"<mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>"
    )
    script = [
        (b"<stream:stream", features),
        (
            b"SCRAM-SHA-1",
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>",
        ),
    ]

    async def go() -> None:
        conn = Connection()
        conn.connection_made(_Transport(conn, script))
        await conn.login(domain="localhost", username="u1", password="pw", resource="r", timeout=2)

    with pytest.raises(NegotiationError, match="not-authorized"):
        asyncio.run(go())


def test_templates_are_well_formed_xml() -> None:
    """What the generator sends parses as XML (inside a stream wrapper)."""
    from lxml import etree

    wrapper = b"<w xmlns:stream='http://etherx.jabber.org/streams'>%s</w>"
    for data in (
        client.auth_element("PLAIN", b"\0u\0p"),
        client.response_element(b"c=biws"),
        client.bind_element("r"),
        client.ping_element("localhost"),
        client.ROSTER_GET,
        client.PRESENCE,
        client.STARTTLS,
    ):
        etree.fromstring(wrapper % data)
