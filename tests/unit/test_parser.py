"""Tests for the XMPP stream parser (RFC 6120 §4 streams, §11 restricted XML)."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import pytest
from lxml import etree

from core.xmpp.errors import StreamError
from core.xmpp.ns import (
    NS_CLIENT,
    NS_COMPONENT,
    NS_DIALBACK,
    NS_SERVER,
    NS_STREAMS,
    NS_XML,
    QN_STREAM,
)
from core.xmpp.parser import Event, StreamClose, StreamOpen, StreamParser

HEADER = (
    b"<?xml version='1.0'?>"
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='example.com' version='1.0' xml:lang='en'>"
)

# A stream exercising what splitting can break: multi-byte UTF-8 in text, attributes and
# names, predefined entities, character references, CDATA, prefixes and keep-alives.
SAMPLE = (
    HEADER
    + b"\n  <message to='ju\xc3\xa9@example.com' type='chat' id='a&amp;b&#x20;c'>"
    + "<body>h\u00e9llo \u20ac \U0001f600 &lt;&gt;&quot;&apos;&#233;&#x1F600;</body>".encode()
    + b"<x xmlns='urn:example:x' xmlns:p='urn:example:p' p:attr='v'><p:y>z</p:y></x>"
    + b"<data><![CDATA[<not-a-tag> & &foo; ]] ]]></data>"
    + "<na\u00efve/></message> \r\n\t ".encode()
    + b"<presence/><iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>"
    + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"
    + b"</stream:stream>"
)


def feed_all(parser: StreamParser, chunks: list[bytes]) -> list[Event]:
    """Feed the chunks in order and collect every event."""
    events: list[Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def parse(data: bytes, **options: Any) -> list[Event]:
    """Events of ``data`` fed in one go to a fresh parser."""
    return StreamParser(**options).feed(data)


def stanzas(events: list[Event]) -> list[etree._Element]:
    """Only the elements among ``events``."""
    return [e for e in events if isinstance(e, etree._Element)]


def summary(events: list[Event]) -> list[object]:
    """Events as comparable values: headers as-is, elements as canonical XML."""
    return [
        etree.tostring(e, method="c14n") if isinstance(e, etree._Element) else e for e in events
    ]


def refused(data: bytes | list[bytes], **options: Any) -> str:
    """Feed ``data`` (one chunk or several) and return the stream error condition."""
    parser = StreamParser(**options)
    chunks = [data] if isinstance(data, bytes) else data
    with pytest.raises(StreamError) as info:
        feed_all(parser, chunks)
    return info.value.condition


# -- the normal stream ------------------------------------------------------------------


def test_stream_open_reports_header() -> None:
    """The header yields its Clark name, prefix, attributes (xml:lang in Clark form) and nsmap."""
    [opened] = parse(HEADER)
    assert opened == StreamOpen(
        tag=QN_STREAM,
        prefix="stream",
        attrs={"to": "example.com", "version": "1.0", f"{{{NS_XML}}}lang": "en"},
        nsmap={None: NS_CLIENT, "stream": NS_STREAMS},
    )


def test_stream_open_without_declaration_or_prefix() -> None:
    """An unprefixed root with no XML declaration is reported with prefix None."""
    [opened] = parse(b"<stream xmlns='http://etherx.jabber.org/streams' to='a'>")
    assert isinstance(opened, StreamOpen)
    assert opened.tag == QN_STREAM
    assert opened.prefix is None
    assert opened.nsmap == {None: NS_STREAMS}


def test_utf8_byte_order_mark_is_accepted() -> None:
    """A UTF-8 byte order mark before the header is tolerated (XML 1.0 §4.3.3)."""
    events = parse(b"\xef\xbb\xbf" + HEADER + b"<presence/>")
    assert isinstance(events[0], StreamOpen)
    assert stanzas(events)[0].tag == f"{{{NS_CLIENT}}}presence"


def test_stanzas_keep_their_namespaces() -> None:
    """Stanzas inherit the default namespace; children keep their own and their prefixes."""
    events = parse(SAMPLE)
    message, presence, iq, features = stanzas(events)
    assert message.tag == f"{{{NS_CLIENT}}}message"
    assert message.find(f"{{{NS_CLIENT}}}body") is not None
    x = message.find("{urn:example:x}x")
    assert x is not None and x.get("{urn:example:p}attr") == "v"
    y = x.find("{urn:example:p}y")
    assert y is not None and y.prefix == "p"
    assert presence.tag == f"{{{NS_CLIENT}}}presence"
    assert iq.find("{jabber:iq:roster}query") is not None
    assert features.tag == f"{{{NS_STREAMS}}}features"
    assert features.prefix == "stream"


def test_text_entities_and_cdata_are_decoded() -> None:
    """Predefined entities, character references and CDATA come out as text."""
    message = stanzas(parse(SAMPLE))[0]
    assert message.get("id") == "a&b c"
    assert message.get("to") == "ju\u00e9@example.com"
    body = message.findtext(f"{{{NS_CLIENT}}}body")
    assert body == "h\u00e9llo \u20ac \U0001f600 <>\"'\u00e9\U0001f600"
    assert message.findtext(f"{{{NS_CLIENT}}}data") == "<not-a-tag> & &foo; ]] "


def test_stanza_serialises_standalone() -> None:
    """A returned stanza is detached and serialises with its own xmlns declarations."""
    message, _, _, features = stanzas(parse(SAMPLE))
    assert message.getparent() is None and message.tail is None
    # encoding="utf-8": the default ASCII output would write the non-ASCII element name
    # as a character reference, which is not XML.
    xml = etree.tostring(message, encoding="utf-8")
    assert xml.startswith(b'<message xmlns="jabber:client" ')
    assert b"ns0" not in xml
    again = etree.fromstring(xml)
    assert etree.tostring(again, method="c14n") == etree.tostring(message, method="c14n")
    features_xml = etree.tostring(features)
    assert etree.fromstring(features_xml).tag == f"{{{NS_STREAMS}}}features"


def test_close_and_event_order() -> None:
    """One feed can carry header, stanzas and close; they come back in order."""
    events = parse(SAMPLE)
    assert isinstance(events[0], StreamOpen)
    assert isinstance(events[-1], StreamClose)
    assert [type(e) for e in events[1:-1]] == [etree._Element] * 4


def test_split_feeds_give_identical_results() -> None:
    """Byte-by-byte, every two-way split and random chunking all equal one-shot parsing."""
    expected = summary(parse(SAMPLE))
    assert summary(feed_all(StreamParser(), [bytes([b]) for b in SAMPLE])) == expected
    for cut in range(1, len(SAMPLE)):
        assert summary(feed_all(StreamParser(), [SAMPLE[:cut], SAMPLE[cut:]])) == expected
    rng = random.Random(6120)
    for _ in range(50):
        chunks, i = [], 0
        while i < len(SAMPLE):
            n = rng.randint(1, 40)
            chunks.append(SAMPLE[i : i + n])
            i += n
        assert summary(feed_all(StreamParser(), chunks)) == expected


def test_whitespace_keepalives_are_ignored_and_not_counted() -> None:
    """Keep-alive whitespace between stanzas produces nothing and never nears the size limit."""
    parser = StreamParser(max_stanza_bytes=1024)
    parser.feed(HEADER)
    for _ in range(5000):
        assert parser.feed(b" ") == []
    assert parser.bytes_in_stanza == 0
    assert len(parser.feed(b"<presence/>\n")) == 1
    for _ in range(5000):
        assert parser.feed(b"\n") == []
    assert len(parser.feed(b"<presence/>")) == 1


def test_bytes_after_close_are_ignored() -> None:
    """After </stream:stream> the stream is over; trailing bytes do not raise."""
    parser = StreamParser()
    events = parser.feed(HEADER + b"<presence/></stream:stream>garbage<")
    assert isinstance(events[-1], StreamClose)
    assert parser.feed(b"<more/>") == []


def test_reset_expects_a_new_header() -> None:
    """After reset() a fresh header (with XML declaration) starts a new stream."""
    parser = StreamParser()
    parser.feed(HEADER + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    parser.reset()
    header = HEADER.replace(b"jabber:client", b"jabber:server")
    events = parser.feed(header + b"<message><body>x</body></message>")
    assert isinstance(events[0], StreamOpen) and events[0].nsmap[None] == NS_SERVER
    assert stanzas(events)[0].tag == f"{{{NS_SERVER}}}message"


def test_reset_clears_a_refused_stream() -> None:
    """A parser that refused a stream raises again until reset, then works."""
    parser = StreamParser()
    with pytest.raises(StreamError):
        parser.feed(HEADER + b"<a></b>")
    with pytest.raises(StreamError):
        parser.feed(b"<presence/>")
    parser.reset()
    assert len(parser.feed(HEADER + b"<presence/>")) == 2


# -- restricted XML (RFC 6120 §11.1) ----------------------------------------------------

DOCTYPE = b"<!DOCTYPE stream:stream>"
LAUGHS = (
    b'<!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
)


@pytest.mark.parametrize(
    "data",
    [
        b"<?xml version='1.0'?>" + DOCTYPE + HEADER[21:],
        DOCTYPE + HEADER[21:],
        b"<?xml version='1.0'?>" + LAUGHS + HEADER[21:] + b"<message><body>&lol3;</body>",
        HEADER + DOCTYPE,
        HEADER + b"<message>" + LAUGHS + b"</message>",
        HEADER + b"<!ENTITY foo 'bar'>",
        b"<!-- hi -->" + HEADER,
        HEADER + b"<!-- hi -->",
        HEADER + b"<message><!-- hi --></message>",
        b"<?xml version='1.0'?><?pi x?>" + HEADER[21:],
        HEADER + b"<?pi x?>",
        HEADER + b"<message><?pi x?></message>",
        HEADER + b"<?xml version='1.0'?>",
        HEADER + b"<message><body>&foo;</body></message>",
        HEADER + b"<message id='&foo;'/>",
        HEADER + b"<message><body>&ampx;</body></message>",
        HEADER + b"<message><body>&\xc3\xa9;</body></message>",
        HEADER[:-1] + b" from='&foo;'>",
    ],
    ids=[
        "doctype-after-decl",
        "doctype-first",
        "billion-laughs",
        "doctype-in-stream",
        "internal-subset-in-stanza",
        "entity-decl-in-stream",
        "comment-before-header",
        "comment-in-stream",
        "comment-in-stanza",
        "pi-before-header",
        "pi-in-stream",
        "pi-in-stanza",
        "second-declaration",
        "undeclared-entity",
        "undeclared-entity-in-attribute",
        "predefined-name-prefix",
        "non-ascii-entity",
        "undeclared-entity-in-header",
    ],
)
def test_restricted_xml_is_refused(data: bytes) -> None:
    """DTDs, entity declarations and references, comments and PIs get restricted-xml."""
    assert refused(data) == "restricted-xml"
    assert refused([bytes([b]) for b in data]) == "restricted-xml"


def test_restricted_markup_split_across_feeds() -> None:
    """'<!', '<?' and '&name;' cut at any byte are still caught, before lxml sees them."""
    for tail in (b"<!DOCTYPE x>", b"<!-- c -->", b"<?pi?>", b"<body>&foo;</body>"):
        data = HEADER + b"<message>" + tail
        for cut in range(len(HEADER), len(data)):
            assert refused([data[:cut], data[cut:]]) == "restricted-xml", (tail, cut)


def test_undeclared_entity_does_not_break_later_namespaces() -> None:
    """The lxml trap: an entity is refused before it can strip namespaces from later stanzas."""
    parser = StreamParser()
    assert parser.feed(HEADER + b"<message><body>a &")[1:] == []
    with pytest.raises(StreamError) as info:
        parser.feed(b"foo; b</body></message><presence/>")
    assert info.value.condition == "restricted-xml"
    # A predefined entity cut at the same place is fine.
    parser = StreamParser()
    parser.feed(HEADER + b"<message><body>a &am")
    [message, presence] = stanzas(parser.feed(b"p; b</body></message><presence/>"))
    assert message.findtext(f"{{{NS_CLIENT}}}body") == "a & b"
    assert presence.tag == f"{{{NS_CLIENT}}}presence"


def test_cdata_may_contain_markup_lookalikes() -> None:
    """Inside CDATA, '&foo;', '<!' and '<?' are text, also when CDATA is split."""
    data = HEADER + b"<message><body><![CDATA[&foo; <!DOCTYPE <?pi ]]></body></message>"
    events = parse(data)
    assert stanzas(events)[0].findtext(f"{{{NS_CLIENT}}}body") == "&foo; <!DOCTYPE <?pi "
    expected = summary(events)
    assert summary(feed_all(StreamParser(), [bytes([b]) for b in data])) == expected


# -- broken XML and encodings (RFC 6120 §11.6) --------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"hello",
        b"  hello <stream:stream>",
        HEADER + b"<message></presence>",
        HEADER + b"<message><body>x</message>",
        HEADER + b"<message to='a' to='b'/>",
        HEADER + b"<message>a & b</message>",
        HEADER + b"<message>a &#0; b</message>",
        HEADER + b"<message>a \x01 b</message>",
        HEADER + b"<undeclared:x/>",
        HEADER + b"<message><x undeclared:a='1'/></message>",
        HEADER + b"<message xmlns:p='urn:p' xmlns:q='urn:p'><x p:a='1' q:a='2'/></message>",
        HEADER + b"<message><x xmlns:z=''><z:y/></x></message>",
        HEADER + b"</stream:features>",
        HEADER + b"<<<>>>",
    ],
    ids=[
        "garbage",
        "text-before-header",
        "mismatched-tag",
        "unclosed-child",
        "duplicate-attribute",
        "bare-ampersand",
        "bad-char-ref",
        "control-char",
        "unbound-element-prefix",
        "unbound-attribute-prefix",
        "duplicate-expanded-attribute",
        "undeclared-prefix-binding",
        "stray-end-tag",
        "junk",
    ],
)
def test_broken_xml_is_not_well_formed(data: bytes) -> None:
    """Whatever libxml2 rejects, a bare '&' and namespace errors lxml drops: not-well-formed."""
    assert refused(data) == "not-well-formed"


@pytest.mark.parametrize(
    "text",
    [b"x<'", b'<"a"/>', b"<message><body>1 < 2</body></message>", b"<]", b"<1a/>"],
    ids=["lt-quote", "lt-double-quote", "lt-space-in-text", "lt-bracket", "lt-digit"],
)
def test_lt_without_a_tag_is_not_well_formed(text: bytes) -> None:
    """XML 1.0 §2.4: a '<' that opens no tag is not-well-formed at once, whole or split,
    even where libxml2's push parser would wait for more input and go silent."""
    assert refused(HEADER + text) == "not-well-formed"
    assert refused([HEADER, *(bytes([b]) for b in text)]) == "not-well-formed"


def test_lt_inside_cdata_is_text() -> None:
    """A '<' inside a CDATA section (allowed by RFC 6120 §11.1) is character data."""
    parser = StreamParser()
    events = parser.feed(HEADER + b"<message><body><![CDATA[1 <' 2]]></body></message>")
    assert events[-1].findtext("{jabber:client}body") == "1 <' 2"


@pytest.mark.parametrize(
    "bad",
    [b"\xff\xfe", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"],
    ids=["ff-fe", "overlong-2", "overlong-3", "surrogate", "beyond-10ffff", "lone-continuation"],
)
def test_invalid_utf8_is_not_well_formed(bad: bytes) -> None:
    """Invalid UTF-8 in the header, a stanza's text or attribute is not-well-formed."""
    assert refused(bad + HEADER) == "not-well-formed"
    assert refused(HEADER[:-1] + b" from='" + bad + b"'>") == "not-well-formed"
    text = HEADER + b"<message><body>a" + bad + b"b</body></message>"
    assert refused(text) == "not-well-formed"
    assert refused([bytes([b]) for b in text]) == "not-well-formed"
    assert refused(HEADER + b"<message id='" + bad + b"'/>") == "not-well-formed"


def test_declared_encoding_other_than_utf8_is_unsupported() -> None:
    """An XML declaration naming another encoding gets unsupported-encoding."""
    for enc in (b"ISO-8859-1", b"UTF-16", b"us-ascii"):
        data = b"<?xml version='1.0' encoding='" + enc + b"'?>" + HEADER[21:] + b"<a>\xe9</a>"
        assert refused(data) == "unsupported-encoding"
        assert refused([bytes([b]) for b in data]) == "unsupported-encoding"
    for enc in (b'"UTF-8"', b"'utf-8'"):
        data = b"<?xml version='1.0' encoding=" + enc + b"?>" + HEADER[21:]
        assert isinstance(parse(data)[0], StreamOpen)


# -- limits -----------------------------------------------------------------------------


def test_stanza_at_the_size_limit_is_accepted() -> None:
    """A stanza of exactly max_stanza_bytes passes, in one chunk or byte by byte."""
    frame = b"<message><body></body></message>"
    stanza = frame[:15] + b"x" * (4096 - len(frame)) + frame[15:]
    assert len(stanza) == 4096
    assert len(stanzas(parse(HEADER + stanza * 3, max_stanza_bytes=4096))) == 3
    parser = StreamParser(max_stanza_bytes=4096)
    parser.feed(HEADER)
    assert len(stanzas(feed_all(parser, [bytes([b]) for b in stanza]))) == 1


def test_oversized_stanza_is_refused() -> None:
    """A stanza over max_stanza_bytes is a policy-violation, whatever the chunking."""
    stanza = b"<message><body>" + b"x" * 20000 + b"</body></message>"
    assert refused(HEADER + stanza, max_stanza_bytes=4096) == "policy-violation"
    chunks = [HEADER] + [stanza[i : i + 100] for i in range(0, len(stanza), 100)]
    assert refused(chunks, max_stanza_bytes=4096) == "policy-violation"


def test_huge_stanza_is_refused_early_without_buffering() -> None:
    """10 MB fed in 64 KiB chunks is refused just past the limit, with flat memory."""
    limit = 262144
    chunk = b"x" * 65536
    parser = StreamParser(max_stanza_bytes=limit)
    parser.feed(HEADER + b"<message><body>")
    fed = 0
    tracemalloc.start()
    try:
        with pytest.raises(StreamError) as info:
            while fed < 10 * 1024 * 1024:
                parser.feed(chunk)
                fed += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.condition == "policy-violation"
    assert fed <= limit + len(chunk)
    assert peak < 1024 * 1024


def test_unfinished_start_tag_counts_toward_the_limit() -> None:
    """Bytes of a start tag that never ends are counted, even between stanzas."""
    parser = StreamParser(max_stanza_bytes=4096)
    parser.feed(HEADER + b"<presence/><message a='>")
    with pytest.raises(StreamError) as info:
        for _ in range(100):
            parser.feed(b" " * 100)
    assert info.value.condition == "policy-violation"


def test_nesting_depth_limit() -> None:
    """Elements up to max_depth below the root pass; one more level is a policy-violation."""
    depth = 8
    ok = b"<a>" * depth + b"</a>" * depth
    assert len(stanzas(parse(HEADER + ok, max_depth=depth))) == 1
    deep = b"<a>" * (depth + 1)
    assert refused(HEADER + deep, max_depth=depth) == "policy-violation"
    assert refused([HEADER] + [b"<a>"] * 40) == "policy-violation"


def test_attribute_count_limit() -> None:
    """An element with max_attrs attributes passes; one more is a policy-violation."""

    def element(n: int) -> bytes:
        return b"<x " + b" ".join(b"a%d='v'" % i for i in range(n)) + b"/>"

    assert len(stanzas(parse(HEADER + element(64)))) == 1
    assert refused(HEADER + element(65)) == "policy-violation"
    assert refused(HEADER + b"<message>" + element(5), max_attrs=4) == "policy-violation"
    assert refused(HEADER[:-1] + b" a='1' b='2' c='3'>", max_attrs=2) == "policy-violation"


def test_oversized_header_is_refused() -> None:
    """More than 8 KiB before the stream header completes is a policy-violation."""
    assert refused(b" " * 9000 + HEADER[21:]) == "policy-violation"
    assert refused([b"<?xml version='1.0' "] + [b" " * 1000] * 10) == "policy-violation"
    big = HEADER[:-1] + b" x='" + b"y" * 10000 + b"'>"
    assert refused(big) == "policy-violation"
    assert refused([big[i : i + 512] for i in range(0, len(big), 512)]) == "policy-violation"


# -- memory -----------------------------------------------------------------------------


def test_long_stream_memory_stays_flat() -> None:
    """20,000 stanzas leave no children or text on the root and no growth in Python memory."""
    stanza = b"<message to='a@b' type='chat'><body>hi</body></message>\n"
    chunk = stanza * 50
    parser = StreamParser()
    parser.feed(HEADER)
    for _ in range(20):
        parser.feed(chunk)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        count = 0
        for _ in range(400):
            count += len(parser.feed(chunk))
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert count == 20000
    root = parser._root  # white-box: the tree the pull parser builds
    assert root is not None and len(root) == 0 and root.text is None
    assert grown < 64 * 1024


# -- content namespace read as jabber:client (content_ns_map) ----------------------------

MAP = {NS_COMPONENT: NS_CLIENT, NS_SERVER: NS_CLIENT}
COMPONENT_HEADER = (
    b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'"
    b' xmlns = "jabber:component:accept" to=\'muc.example.com\' id="a>b">'
)
S2S_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback'"
    b" xmlns:stream='http://etherx.jabber.org/streams' from='a.example' to='b.example'"
    b" version='1.0'>"
)
MAPPED_STREAM = (
    COMPONENT_HEADER
    + b"<handshake>abc</handshake>"
    + "<message to='ju\u00e9@example.com' type='groupchat'><body>h\u00e9llo</body>".encode()
    + b"<x xmlns='urn:example:x' xmlns:p='urn:example:p' p:a='v'><y/><p:z/></x></message>"
    + b"<iq xmlns='jabber:component:accept' type='get' id='1'><query xmlns='jabber:iq:version'/>"
    + b"</iq><presence><status xmlns='jabber:component:accept'>away</status></presence>"
    + b"<stream:features/></stream:stream>"
)


def test_content_ns_map_reads_stream_default_as_client() -> None:
    """Unprefixed elements of a mapped stream come out in jabber:client, with no namespace
    declaration but jabber:client's on the stanza; foreign payloads, stream-level elements
    and elements the peer qualified itself keep their namespace; the header is reported as
    sent."""
    events = parse(MAPPED_STREAM, content_ns_map=MAP)
    plain = parse(MAPPED_STREAM)
    assert events[0] == plain[0]
    assert isinstance(events[0], StreamOpen) and events[0].nsmap[None] == NS_COMPONENT
    assert events[0].attrs == {"to": "muc.example.com", "id": "a>b"}
    shake, msg, iq, pres, features = stanzas(events)
    assert shake.tag == f"{{{NS_CLIENT}}}handshake" and shake.text == "abc"
    assert [el.tag for el in msg.iter()] == [
        f"{{{NS_CLIENT}}}message",
        f"{{{NS_CLIENT}}}body",
        "{urn:example:x}x",
        "{urn:example:x}y",
        "{urn:example:p}z",
    ]
    assert etree.tostring(msg).startswith(b'<message xmlns="jabber:client" to=')
    assert iq.tag == f"{{{NS_COMPONENT}}}iq"
    assert [el.tag for el in pres.iter()] == [
        f"{{{NS_CLIENT}}}presence",
        f"{{{NS_COMPONENT}}}status",
    ]
    assert features.tag == f"{{{NS_STREAMS}}}features"
    assert isinstance(events[-1], StreamClose)
    # Apart from the namespace, the same trees as without the mapping.
    for mapped, sent in zip(stanzas(events), stanzas(plain), strict=True):
        assert [(e.get("to"), e.text, e.keys()) for e in mapped.iter()] == [
            (e.get("to"), e.text, e.keys()) for e in sent.iter()
        ]


def test_content_ns_map_survives_any_split() -> None:
    """The header is held back until its start tag is complete: any split of the stream,
    including inside a quoted '>' of the header, parses the same."""
    expected = summary(parse(MAPPED_STREAM, content_ns_map=MAP))
    chunks = [MAPPED_STREAM[i : i + 1] for i in range(len(MAPPED_STREAM))]
    assert summary(feed_all(StreamParser(content_ns_map=MAP), chunks)) == expected
    for cut in range(1, len(COMPONENT_HEADER) + 3):
        parts = [MAPPED_STREAM[:cut], MAPPED_STREAM[cut:]]
        assert summary(feed_all(StreamParser(content_ns_map=MAP), parts)) == expected, cut


def test_content_ns_map_s2s_stream_and_restart() -> None:
    """jabber:server read as jabber:client, dialback elements as sent; after a restart
    (RFC 6120 §5.4.3.3) the new header is mapped again."""
    parser = StreamParser(content_ns_map=MAP)
    stream = S2S_HEADER + b"<db:result from='a.example' to='b.example'>k</db:result><message/>"
    opened, result, msg = parser.feed(stream)
    assert isinstance(opened, StreamOpen) and opened.nsmap == {
        None: NS_SERVER,
        "db": NS_DIALBACK,
        "stream": NS_STREAMS,
    }
    assert isinstance(result, etree._Element) and result.tag == f"{{{NS_DIALBACK}}}result"
    assert isinstance(msg, etree._Element) and msg.tag == f"{{{NS_CLIENT}}}message"
    parser.reset()
    opened, msg = parser.feed(S2S_HEADER + b"<presence/>")
    assert isinstance(opened, StreamOpen) and opened.nsmap[None] == NS_SERVER
    assert isinstance(msg, etree._Element) and msg.tag == f"{{{NS_CLIENT}}}presence"


@pytest.mark.parametrize(
    "header",
    [
        # Not a mapped namespace: read as sent.
        HEADER,
        # An unprefixed root: its name is reported in the namespace sent.
        b"<stream xmlns='jabber:component:accept' to='x'>",
        # A declaration written with a character reference, or declared twice: not rewritten.
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'"
        b" xmlns='jabber&#58;component:accept' to='x'>",
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'"
        b" xmlns='jabber:component:accept' xmlns='jabber:component:accept'>",
        # Empty element, no default namespace, and a quoted xmlns= inside a value.
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>",
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'"
        b" to=\" xmlns='jabber:server'\">",
    ],
)
def test_content_ns_map_reports_headers_as_sent(header: bytes) -> None:
    """Whatever the header, the mapping changes neither its StreamOpen nor whether and how
    it is refused (RFC 6120 §4.8, §4.9.3)."""

    def outcome(**kw: Any) -> object:
        try:
            events = StreamParser(**kw).feed(header + b"<presence/>")
        except StreamError as e:
            return e.condition
        return [(e.tag, e.nsmap, e.attrs) if isinstance(e, StreamOpen) else type(e) for e in events]

    assert outcome(content_ns_map=MAP) == outcome()


def test_content_ns_map_keeps_header_limits() -> None:
    """A header whose start tag never ends is refused at the header limit; restricted XML
    in the prolog is refused as without the mapping."""
    assert refused([COMPONENT_HEADER[:40]] + [b" " * 1000] * 10, content_ns_map=MAP) == (
        "policy-violation"
    )
    big = COMPONENT_HEADER[:-1] + b" x='" + b"y" * 10000 + b"'>"
    assert refused(big, content_ns_map=MAP) == "policy-violation"
    assert refused(b"<!DOCTYPE x>" + COMPONENT_HEADER, content_ns_map=MAP) == "restricted-xml"
    assert refused(COMPONENT_HEADER[:-1] + b" a='<'>", content_ns_map=MAP) == "not-well-formed"
