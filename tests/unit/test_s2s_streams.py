"""Single s2s streams driven byte by byte (RFC 6120 §4, §6, §8; XEP-0178; XEP-0220).

The peer's side is scripted over a StringTransport; the services come from test_s2s.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from twisted.internet.testing import StringTransport

from core.s2s.inbound import S2SInbound
from core.xmpp import dialback
from core.xmpp.ns import NS_CLIENT, NS_SASL, NS_SERVER, NS_STREAMS, qn
from core.xmpp.parser import StreamOpen, StreamParser
from tests.unit.test_s2s import A, B, C, Network, add_node, bodies, bounced, message, send

# Incoming streams, byte by byte -------------------------------------------------------


class Wire:
    """An incoming stream fed by hand over a StringTransport (no TLS required here)."""

    def __init__(self, tmp_path: Path, **s2s: Any) -> None:
        self.net = Network()
        s2s.setdefault("require_encryption", False)
        self.node = add_node(self.net, tmp_path, B, **s2s)
        self.transport = StringTransport()
        self.stream = S2SInbound(self.node.service)
        self.stream.makeConnection(self.transport)
        self.parser = StreamParser()
        self.header: StreamOpen | None = None

    def send(self, data: str) -> list[etree._Element]:
        self.stream.dataReceived(data.encode())
        return self.read()

    def read(self) -> list[etree._Element]:
        """The elements the stream wrote since the last read."""
        out = []
        for ev in self.parser.feed(self.transport.value()):
            if isinstance(ev, StreamOpen):
                self.header = ev
            elif isinstance(ev, etree._Element):
                out.append(ev)
        self.transport.clear()
        return out

    def open(self, frm: str = A, to: str = B, ns: str = NS_SERVER, version: str = "1.0") -> Any:
        return self.send(
            f"<stream:stream xmlns='{ns}' xmlns:db='jabber:server:dialback' "
            f"xmlns:stream='{NS_STREAMS}' from='{frm}' to='{to}' version='{version}'>"
        )

    def authenticate(self, domain: str = A) -> None:
        """Dialback for ``domain``, with the verification answered as valid."""
        asked: list[Any] = []
        self.node.service.verify_dialback = lambda **kw: asked.append(kw)  # type: ignore[method-assign]
        out = self.send(f"<db:result from='{domain}' to='{B}'>key</db:result>")
        assert out == [] and asked and asked[0]["stream_id"] == self.stream.stream_id
        asked[0]["callback"]("valid", None)
        (answer,) = self.read()
        assert (answer.get("type"), answer.get("from"), answer.get("to")) == ("valid", B, domain)


def stream_error(out: list[etree._Element]) -> str | None:
    for el in out:
        if el.tag == qn(NS_STREAMS, "error"):
            return etree.QName(el[0]).localname
    return None


@pytest.mark.parametrize(
    ("kwargs", "condition"),
    [
        ({"ns": NS_CLIENT}, "invalid-namespace"),
        ({"version": "0.9"}, "unsupported-version"),
        ({"to": "elsewhere.example"}, "host-unknown"),
        ({"frm": "not a domain"}, "invalid-from"),
    ],
)
def test_bad_stream_headers(tmp_path: Path, kwargs: dict[str, str], condition: str) -> None:
    """The header's namespace, version, 'to' and 'from' are checked (RFC 6120 §4.7-§4.8)."""
    wire = Wire(tmp_path)
    assert stream_error(wire.open(**kwargs)) == condition
    assert wire.transport.disconnecting


def test_features_before_and_without_tls(tmp_path: Path) -> None:
    """With TLS required only STARTTLS is offered; without, dialback (with errors)."""
    required = Wire(tmp_path / "r", require_encryption=True)
    (features,) = required.open()
    assert [etree.QName(c).localname for c in features] == ["starttls"]
    optional = Wire(tmp_path / "o")
    (features,) = optional.open()
    assert [etree.QName(c).localname for c in features] == ["starttls", "dialback"]
    assert optional.header is not None and optional.header.attrs["from"] == B


def test_stanzas_need_an_authenticated_sender(tmp_path: Path) -> None:
    """Before authentication: not-authorized; after: other domains are invalid-from."""
    wire = Wire(tmp_path)
    wire.open()
    out = wire.send(f"<message from='alice@{A}' to='bob@{B}'><body>x</body></message>")
    assert stream_error(out) == "not-authorized"
    wire = Wire(tmp_path / "2")
    wire.open()
    wire.authenticate(A)
    assert wire.send(f"<message from='alice@{A}/r' to='bob@{B}'><body>ok</body></message>") == []
    assert bodies(wire.node) == ["ok"]
    out = wire.send(f"<message from='eve@{C}' to='bob@{B}'><body>x</body></message>")
    assert stream_error(out) == "invalid-from"
    assert bodies(wire.node) == ["ok"]


@pytest.mark.parametrize(
    ("stanza", "condition"),
    [
        (f"<message to='bob@{B}'/>", "improper-addressing"),
        (f"<message from='alice@{A}'/>", "improper-addressing"),
        (f"<message from='alice@{A}' to='bob@{C}'/>", "host-unknown"),
        (f"<foo from='alice@{A}' to='bob@{B}'/>", "unsupported-stanza-type"),
    ],
)
def test_stanza_addressing(tmp_path: Path, stanza: str, condition: str) -> None:
    """RFC 6120 §8.1.1.1, §8.1.2.1: 'to' and 'from' are required; 'to' must be ours."""
    wire = Wire(tmp_path)
    wire.open()
    wire.authenticate(A)
    assert stream_error(wire.send(stanza)) == condition


def test_stanzas_in_jabber_server_reach_the_router_in_jabber_client(tmp_path: Path) -> None:
    """RFC 6120 §4.8.3: stanzas that inherit jabber:server from the header, stanzas and
    elements the peer qualifies with jabber:server itself, and (taken as the same stanzas)
    ones it qualifies with jabber:client all reach the router wholly in jabber:client."""
    wire = Wire(tmp_path)
    wire.open()
    wire.authenticate(A)
    addr = f"from='alice@{A}/r' to='bob@{B}'"
    out = wire.send(
        f"<message {addr}><body>a</body></message>"
        f"<message xmlns='{NS_SERVER}' {addr}><body>b</body></message>"
        f"<message {addr}><body xmlns='{NS_SERVER}'>c</body></message>"
        f"<message xmlns='{NS_CLIENT}' {addr}><body>d</body></message>"
    )
    assert out == []
    assert bodies(wire.node) == ["a", "b", "c", "d"]
    for stanza, *_ in wire.node.router.routed:
        assert {el.tag for el in stanza.iter()} == {qn(NS_CLIENT, "message"), qn(NS_CLIENT, "body")}


def test_dialback_answers_and_errors(tmp_path: Path) -> None:
    """db:verify is answered for our keys; requests for domains we do not serve get
    item-not-found; an invalid verification closes the stream; answers on an incoming
    stream are ignored (XEP-0220 §3.1)."""
    wire = Wire(tmp_path)
    wire.open()
    key = dialback.generate_key(wire.node.service.secret, A, B, "s1")
    (answer,) = wire.send(f"<db:verify from='{A}' to='{B}' id='s1'>{key}</db:verify>")
    assert (answer.get("type"), answer.get("from"), answer.get("to")) == ("valid", B, A)
    (answer,) = wire.send(f"<db:verify from='{A}' to='{B}' id='s2'>{key}</db:verify>")
    assert answer.get("type") == "invalid"
    (answer,) = wire.send(f"<db:result from='{A}' to='{C}'>k</db:result>")
    assert dialback.Dialback.from_element(answer).condition == "item-not-found"
    assert wire.send(f"<db:result from='{A}' to='{B}' type='valid'/>") == []
    assert not wire.stream.authenticated
    asked: list[Any] = []
    wire.node.service.verify_dialback = lambda **kw: asked.append(kw)  # type: ignore[method-assign]
    wire.send(f"<db:result from='{A}' to='{B}'>k</db:result>")
    asked[0]["callback"]("error", "remote-server-not-found")
    (answer,) = wire.read()
    db = dialback.Dialback.from_element(answer)
    assert (db.type, db.condition) == ("error", "remote-server-not-found")
    assert not wire.transport.disconnecting
    wire.send(f"<db:result from='{A}' to='{B}'>k</db:result>")
    asked[1]["callback"]("invalid", None)
    out = wire.read()
    assert out[0].get("type") == "invalid"
    assert stream_error(out) == "not-authorized"
    assert wire.transport.disconnecting


def test_sasl_external_refusals(tmp_path: Path) -> None:
    """EXTERNAL needs TLS, an authzid matching the stream's 'from', and a certificate that
    verifies for it; a refused certificate ends the stream (XEP-0178 §4 step 7.2)."""
    wire = Wire(tmp_path)
    wire.open()
    auth = f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>{{}}</auth>"
    (failure,) = wire.send(auth.format("="))
    assert failure.find(qn(NS_SASL, "encryption-required")) is not None
    wire.stream.tls_active = True  # as after STARTTLS; no certificate was presented
    (failure,) = wire.send(auth.format(base64.b64encode(C.encode()).decode()))
    assert failure.find(qn(NS_SASL, "invalid-authzid")) is not None
    (failure,) = wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>=</auth>")
    assert failure.find(qn(NS_SASL, "invalid-mechanism")) is not None
    assert not wire.transport.disconnecting
    (failure,) = wire.send(auth.format("="))
    assert failure.find(qn(NS_SASL, "not-authorized")) is not None
    assert wire.transport.disconnecting and not wire.stream.authenticated


class Outgoing:
    """An outgoing stream to c.example fed by hand (the peer's side is scripted)."""

    def __init__(self, tmp_path: Path) -> None:
        self.net = Network()
        self.node = add_node(self.net, tmp_path, A, require_encryption=False)
        self.node.service.config.hosts[C] = "127.0.0.1:9"
        self.net.silent.add(9)
        send(self.node, message(f"alice@{A}/r", f"carol@{C}", "queued"))
        self.link = self.node.service.links[(A, C)]
        assert self.link.stream is not None
        self.stream = self.link.stream
        self.transport = self.stream.transport
        self.parser = StreamParser()

    def feed(self, data: str) -> list[etree._Element]:
        self.stream.dataReceived(data.encode())
        events = self.parser.feed(self.transport.value())
        self.transport.clear()
        return [e for e in events if isinstance(e, etree._Element)]

    def header(self, features: str, sid: str = "S1") -> list[etree._Element]:
        return self.feed(
            f"<stream:stream xmlns='{NS_SERVER}' xmlns:db='jabber:server:dialback' "
            f"xmlns:stream='{NS_STREAMS}' from='{C}' to='{A}' id='{sid}' version='1.0'>"
            f"<stream:features>{features}</stream:features>"
        )


def test_outgoing_external_refused_falls_back_to_dialback(tmp_path: Path) -> None:
    """EXTERNAL offered and refused: the link tries dialback on the same stream, with the key
    for the peer's stream id; once valid, the queued stanza goes out in jabber:server."""
    out = Outgoing(tmp_path)
    out.stream.tls_active = True  # as after STARTTLS
    mechs = f"<mechanisms xmlns='{NS_SASL}'><mechanism>EXTERNAL</mechanism></mechanisms>"
    (auth,) = out.header(
        mechs + "<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>"
    )
    assert auth.get("mechanism") == "EXTERNAL"
    assert base64.b64decode(auth.text or "") == A.encode()
    (result,) = out.feed(f"<failure xmlns='{NS_SASL}'><not-authorized/></failure>")
    db = dialback.Dialback.from_element(result)
    assert (db.frm, db.to) == (A, C)
    assert db.key == dialback.generate_key(out.node.service.secret, C, A, "S1")
    (stanza,) = out.feed(f"<db:result from='{C}' to='{A}' type='valid'/>")
    assert stanza.tag == qn(NS_SERVER, "message") and stanza.get("id") == "queued"
    assert out.link.ready and out.link.how == "dialback"


@pytest.mark.parametrize(
    ("answer", "condition"),
    [
        (f"<db:result from='{C}' to='{A}' type='invalid'/>", "internal-server-error"),
        (
            f"<db:result from='{C}' to='{A}' type='error'><error type='cancel'>"
            "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
            "remote-server-timeout",
        ),
        (
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            "</stream:error>",
            "remote-server-not-found",
        ),
    ],
)
def test_outgoing_dialback_failures_bounce(tmp_path: Path, answer: str, condition: str) -> None:
    """XEP-0220 §2.1.1: invalid → internal-server-error, a dialback error → timeout; a stream
    error during negotiation → remote-server-not-found. Unsolicited answers change nothing."""
    out = Outgoing(tmp_path)
    out.header("<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>")
    assert out.feed(f"<db:result from='{B}' to='{A}' type='valid'/>") == []
    assert not out.link.ready
    out.feed(answer)
    assert bounced(out.node) == [("queued", condition)]
    assert out.transport.disconnecting and (A, C) not in out.node.service.links


def test_outgoing_requires_tls_when_configured(tmp_path: Path) -> None:
    """s2s.require_encryption and a peer that offers no STARTTLS: no link."""
    out = Outgoing(tmp_path)
    out.node.service.config.require_encryption = True
    out.header("<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>")
    assert bounced(out.node) == [("queued", "remote-server-not-found")]
    assert "does not offer TLS" in (out.node.router.bounced[0][1].text or "")
