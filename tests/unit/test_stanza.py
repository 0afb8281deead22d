"""Stanza helpers (RFC 6120 §8): replies, errors, and the namespace moves between streams."""

from __future__ import annotations

import pytest
from lxml import etree

from core.xmpp.errors import StanzaError
from core.xmpp.ns import NS_CLIENT, NS_COMPONENT, NS_SERVER, NS_STANZAS
from core.xmpp.parser import StreamParser
from core.xmpp.stanza import (
    child,
    error_reply,
    iq_result,
    kind_of,
    make,
    new_id,
    payload_of,
    serialize,
    to_client_ns,
)
from tests.unit.helpers import assert_xml, xml

C = f"xmlns='{NS_CLIENT}'"
ERR = f"xmlns='{NS_STANZAS}'"


def on_stream(data: bytes, ns: str) -> etree._Element:
    """The stanza ``data`` as the peer of a stream whose content namespace is ``ns`` reads it,
    without mapping that namespace."""
    return etree.fromstring(b"<w xmlns='" + ns.encode() + b"'>" + data + b"</w>")[0]


def parsed(stanza: str, ns: str = NS_CLIENT) -> etree._Element:
    """A stanza as the stream parser delivers it (declarations inherited from the header)."""
    header = (
        f"<stream:stream xmlns='{ns}' xmlns:stream='http://etherx.jabber.org/streams' "
        "version='1.0'>"
    )
    events = StreamParser().feed((header + stanza).encode())
    return events[1]


def test_new_ids_are_unpredictable() -> None:
    """§4.7.3: ids are random, at least 96 bits, and never repeat in practice."""
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 16 for i in ids)


def test_make_child_and_kind() -> None:
    """make() builds a stanza in the client namespace; child() adds payloads."""
    msg = make("message", to="bob@localhost", frm="alice@localhost/a", type="chat", id="m1")
    child(msg, "body", text="hi")
    child(msg, "x", "urn:example")
    assert kind_of(msg) == "message"
    assert kind_of(xml("<foo xmlns='jabber:client'/>")) is None
    assert_xml(
        msg,
        f"<message {C} to='bob@localhost' from='alice@localhost/a' type='chat' id='m1'>"
        "<body>hi</body><x xmlns='urn:example'/></message>",
    )
    assert b"ns0" not in serialize(msg)


@pytest.mark.parametrize(
    ("iq", "tag"),
    [
        (f"<iq {C}><query xmlns='q'/></iq>", "{q}query"),
        (f"<iq {C}/>", None),
        (f"<iq {C}><a xmlns='q'/><b xmlns='q'/></iq>", None),
        (f"<iq {C}>text<a xmlns='q'/>tail</iq>", "{q}a"),
    ],
    ids=["one", "none", "two", "text-around"],
)
def test_payload_of(iq: str, tag: str | None) -> None:
    """§8.2.3: the one payload of a get/set, or None when there are zero or several."""
    p = payload_of(xml(iq))
    assert (p.tag if p is not None else None) == tag


def test_iq_result_swaps_addresses() -> None:
    """§8.2.3: the result goes back to the sender, from the addressee, with the same id."""
    request = xml(
        f"<iq {C} type='get' id='7' from='a@localhost/r' to='localhost'><q xmlns='x'/></iq>"
    )
    assert_xml(
        iq_result(request), f"<iq {C} type='result' id='7' to='a@localhost/r' from='localhost'/>"
    )
    payload = etree.Element("{x}answer", nsmap={None: "x"})
    assert_xml(
        iq_result(request, payload),
        f"<iq {C} type='result' id='7' to='a@localhost/r' from='localhost'>"
        "<answer xmlns='x'/></iq>",
    )


@pytest.mark.parametrize(
    "stanza",
    [
        f"<message {C} type='error' id='1'/>",
        f"<presence {C} type='error'/>",
        f"<iq {C} type='error' id='1'/>",
        f"<iq {C} type='result' id='1'/>",
    ],
    ids=["message-error", "presence-error", "iq-error", "iq-result"],
)
def test_no_error_reply_to_errors_or_results(stanza: str) -> None:
    """§8.3.1: never answer an error with an error, nor an IQ result."""
    assert error_reply(xml(stanza), StanzaError("bad-request")) is None


def test_error_reply_to_iq_keeps_payload() -> None:
    """§8.3.1: the error swaps the addresses, keeps the id and may echo the payload."""
    request = xml(
        f"<iq {C} type='set' id='s' from='a@localhost/r' to='b@localhost'><q xmlns='x'>v</q></iq>"
    )
    reply = error_reply(request, StanzaError("not-allowed", "no"))
    assert_xml(
        reply,
        f"""<iq {C} id='s' to='a@localhost/r' from='b@localhost' type='error'>
              <q xmlns='x'>v</q>
              <error type='cancel'><not-allowed {ERR}/><text {ERR}>no</text></error>
            </iq>""",
    )
    assert request.find("{x}q") is not None  # the request is untouched


def test_error_reply_to_message_keeps_body_and_thread_only() -> None:
    """The bounce of a message carries its body and thread, not its other payloads."""
    msg = xml(
        f"<message {C} id='m' from='a@localhost/r' to='b@x.org'><body>hi</body>"
        "<thread>t1</thread><subject>s</subject><x xmlns='urn:private'/></message>"
    )
    reply = error_reply(msg, StanzaError("remote-server-not-found"))
    assert_xml(
        reply,
        f"""<message {C} id='m' to='a@localhost/r' from='b@x.org' type='error'>
              <body>hi</body><thread>t1</thread>
              <error type='cancel'><remote-server-not-found {ERR}/></error>
            </message>""",
    )


def test_error_reply_without_addresses_and_with_own_from() -> None:
    """A stanza with no 'from' or 'to' gets an error without them; ``frm`` sets the sender."""
    plain = error_reply(xml(f"<presence {C} type='subscribe'/>"), StanzaError("forbidden"))
    assert_xml(
        plain,
        f"<presence {C} type='error'><error type='auth'><forbidden {ERR}/></error></presence>",
    )
    named = error_reply(
        xml(f"<presence {C} to='x@localhost'/>"), StanzaError("gone"), frm="localhost"
    )
    assert named is not None and named.get("from") == "localhost"


def test_serialize_is_utf8_and_reparses() -> None:
    """Non-ASCII names and text come out as UTF-8 (RFC 6120 §11.6), not as character
    references (illegal in names), and the bytes parse back to the same tree."""
    stanza = parsed(
        "<message to='jü@localhost'><body>héllo €</body><naïve xmlns='urn:x'/></message>"
    )
    data = serialize(stanza)
    assert "héllo €".encode() in data and "naïve".encode() in data
    assert_xml(xml(data), stanza)


def test_serialize_leaves_out_a_tail() -> None:
    """A stanza taken from a tree does not carry the text that followed it there."""
    parent = xml(f"<wrapper {C}><message id='1'/>trailing</wrapper>")
    data = serialize(parent[0])
    assert data.endswith(b"/>") and b"trailing" not in data


@pytest.mark.parametrize("ns", [NS_SERVER, NS_COMPONENT])
def test_serialize_moves_to_other_content_namespace(ns: str) -> None:
    """§4.8.3: on a jabber:server or component stream the stanza and its client-namespace
    children are in that stream's namespace, which they inherit from the stream header (no
    declaration of their own); foreign payloads keep theirs."""
    stanza = parsed("<message to='b@x.org'><body>hi</body><x xmlns='urn:x'><y/></x></message>")
    data = serialize(stanza, ns)
    assert data.startswith(b"<message to=") and b"jabber:" not in data
    moved = on_stream(data, ns)
    assert_xml(
        moved,
        f"<message xmlns='{ns}' to='b@x.org'><body>hi</body><x xmlns='urn:x'><y/></x></message>",
    )


@pytest.mark.parametrize("ns", [NS_SERVER, NS_COMPONENT])
def test_to_client_ns_round_trip(ns: str) -> None:
    """A stanza received on a server or component stream moves into jabber:client with its
    attributes, text and foreign payloads, and serialises back to the same tree."""
    original = parsed(
        "<iq type='set' id='1' from='a@x.org/r' to='localhost' xml:lang='en'>"
        "<query xmlns='urn:q'><item a='1'>t</item></query><error type='cancel'>"
        f"<conflict {ERR}/></error></iq>",
        ns,
    )
    inside = to_client_ns(original, ns)
    assert inside.tag == f"{{{NS_CLIENT}}}iq"
    assert inside.find(f"{{{NS_CLIENT}}}error") is not None
    assert inside.find("{urn:q}query/{urn:q}item").text == "t"  # type: ignore[union-attr]
    assert inside.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert_xml(on_stream(serialize(inside, ns), ns), original)


def test_to_client_ns_is_identity_for_client_stanzas() -> None:
    """Client stanzas are used as they are."""
    stanza = parsed("<presence/>")
    assert to_client_ns(stanza, NS_CLIENT) is stanza


def mapped(stanza: str, ns: str) -> etree._Element:
    """A stanza of a ``ns`` stream as the parser of a server or component stream delivers it,
    with the stream's namespace read as jabber:client."""
    header = (
        f"<stream:stream xmlns='{ns}' xmlns:stream='http://etherx.jabber.org/streams' "
        "version='1.0'>"
    )
    parser = StreamParser(content_ns_map={ns: NS_CLIENT})
    return parser.feed((header + stanza).encode())[1]


@pytest.mark.parametrize("ns", [NS_SERVER, NS_COMPONENT])
def test_to_client_ns_keeps_stanzas_read_as_client(ns: str) -> None:
    """A stanza the parser already read in jabber:client is used as it is, no copy, and
    serialises with the one declaration of jabber:client (RFC 6120 §4.8.3, §4.8.5)."""
    stanza = mapped(
        "<message to='b@x.org' type='groupchat'><body>hi</body>"
        "<x xmlns='urn:x'><y/></x><p:z xmlns:p='urn:p'><w/></p:z></message>",
        ns,
    )
    assert to_client_ns(stanza, ns) is stanza
    assert serialize(stanza) == (
        b'<message xmlns="jabber:client" to="b@x.org" type="groupchat"><body>hi</body>'
        b'<x xmlns="urn:x"><y/></x><p:z xmlns:p="urn:p"><w/></p:z></message>'
    )
    assert serialize(stanza, ns).startswith(b'<message to="b@x.org" type="groupchat">')


@pytest.mark.parametrize("ns", [NS_SERVER, NS_COMPONENT])
def test_to_client_ns_moves_what_the_peer_qualified_itself(ns: str) -> None:
    """§4.8.3: the peer may declare the stream's namespace again on a stanza or on an element
    inside one; such elements move to jabber:client too, foreign payloads stay as they are."""
    whole = mapped(f"<iq xmlns='{ns}' type='get' id='1'><query xmlns='urn:q'/></iq>", ns)
    inner = mapped(
        f"<message to='b@x.org'><body xmlns='{ns}'>hi</body><x xmlns='urn:x'/>"
        f"<s:thread xmlns:s='{ns}'>t</s:thread></message>",
        ns,
    )
    for stanza, expected in [
        (whole, "<iq xmlns='jabber:client' type='get' id='1'><query xmlns='urn:q'/></iq>"),
        (
            inner,
            "<message xmlns='jabber:client' to='b@x.org'><body>hi</body><x xmlns='urn:x'/>"
            "<thread>t</thread></message>",
        ),
    ]:
        moved = to_client_ns(stanza, ns)
        assert moved is not stanza
        assert_xml(xml(serialize(moved)), expected)
        assert b"jabber:server" not in serialize(moved)
        assert b"jabber:component" not in serialize(moved)


@pytest.mark.parametrize("ns", [NS_SERVER, NS_COMPONENT])
def test_what_serialize_writes_is_read_back_without_a_copy(ns: str) -> None:
    """A stanza serialised for a server or component stream is read by the parser at the
    other end straight into jabber:client: to_client_ns has nothing left to move."""
    stanza = parsed(
        "<message to='b@x.org' type='groupchat' id='1'><body>hi</body>"
        "<x xmlns='urn:x'><item/></x></message>"
    )
    header = f"<stream:stream xmlns='{ns}' xmlns:stream='http://etherx.jabber.org/streams'>"
    parser = StreamParser(content_ns_map={ns: NS_CLIENT})
    _, received = parser.feed(header.encode() + serialize(stanza, ns))
    assert isinstance(received, etree._Element)
    assert to_client_ns(received, ns) is received
    assert serialize(received) == serialize(stanza)
