"""Incremental parser for one XMPP XML stream (RFC 6120 §4, restricted XML per §11).

One :class:`StreamParser` per stream direction. Bytes go in as they arrive from the
transport; out come a :class:`StreamOpen` for the stream header, one detached
``lxml`` element per first-level child of the root (a stanza or a stream-level element
such as ``<stream:features/>``), and a :class:`StreamClose` for ``</stream:stream>``.
Anything the stream must not carry raises :class:`~core.xmpp.errors.StreamError`, after
which the stream is to be closed (RFC 6120 §4.9.1.1).

The parser is ``lxml.etree.XMLPullParser`` with DTD loading, entity expansion and network
access off, plus checks of our own on the raw bytes, because libxml2 as driven by lxml 6
lets some restricted XML through silently:

* a DOCTYPE (with or without an internal subset) produces no event at all;
* after an undeclared entity reference such as ``&foo;`` it raises nothing, stops
  finishing the current element and reports later elements without their namespace;
* a bare ``&`` raises nothing either;
* an undeclared namespace prefix, or two attributes with the same expanded name, is a
  recoverable error that lxml drops: the element comes out named ``p:x`` in no namespace
  and serialises to XML that the recipient's parser would refuse.

So before any byte reaches lxml, the prolog is checked by hand and the rest of the stream
is scanned with ``bytes.find`` for ``<!``, ``<?`` and ``&``; only when one of those is
present is there per-candidate work, so the common chunk costs three C-level searches.
Element and attribute names are checked as lxml reports each start tag.

Error conditions (RFC 6120 §4.9.3):

* ``restricted-xml``: DOCTYPE/DTD, entity declarations, comments, processing instructions
  other than the leading XML declaration, and references to any entity other than the
  five predefined ones (§11.1). An undeclared entity is reported as restricted rather than
  not-well-formed because the entity *reference* is what §11.1 forbids.
* ``unsupported-encoding``: an XML declaration naming an encoding other than UTF-8
  (§11.6).
* ``not-well-formed``: everything libxml2 rejects, including bytes that are not valid
  UTF-8 (the parser is told the input is UTF-8, so it never guesses), a bare ``&`` and
  the namespace errors above (Namespaces in XML 1.0 §3, §6.3).
* ``policy-violation``: a stanza over ``max_stanza_bytes``, elements nested deeper than
  ``max_depth`` below the root, an element with more than ``max_attrs`` attributes, or
  more than 8 KiB before the stream header is complete.

Content namespace (RFC 6120 §4.8.2, §4.8.3; XEP-0114 §3): with ``content_ns_map``, e.g.
``{"jabber:component:accept": "jabber:client"}``, a stream whose header declares a mapped
namespace as its default one is handed to lxml with the default declaration of the root
start tag naming the mapped namespace instead, so that its stanzas come out in
``jabber:client`` as parsed, with no copy. The :class:`StreamOpen` still reports the header
as the peer sent it. Only the header's declaration is rewritten: an element on which the
peer declares a namespace itself keeps it (``core.xmpp.stanza.to_client_ns`` moves such
elements). The header is held back until its start tag is complete (within
``HEADER_LIMIT``); one whose declaration cannot be read from the bytes as sent (more than
one, or written with character references) is handed over unchanged.

Stanza size is counted on the bytes fed, not on the tree: the count covers the bytes
since the slice in which the previous stanza ended and is checked after every slice (at
most 16 KiB) handed to lxml. A stanza within the limit is never refused; a larger one is
refused once it is at most two slices past the limit, however large the ``feed()`` call,
and is never buffered whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias, cast

from lxml import etree

from core.xmpp.errors import StreamError

__all__ = ["Event", "StreamClose", "StreamOpen", "StreamParser"]

# Bytes allowed before the stream header is complete (XML declaration, whitespace and the
# root start tag). A real header is a few hundred bytes.
HEADER_LIMIT = 8192

# Slice size while the header is incomplete.
HEADER_SLICE = 1024

# Largest piece handed to lxml at once; the size and keep-alive accounting below is exact
# to within one slice.
MAX_SLICE = 16384

_WS = b" \t\r\n"
_WS_BYTES = frozenset(_WS)
_BOM = b"\xef\xbb\xbf"
_CDATA_OPEN = b"<![CDATA["

# What may follow "&": the five predefined entities and character references (XML 1.0
# §4.1, §4.6; RFC 6120 §11.1).
_REFS = (b"amp;", b"lt;", b"gt;", b"quot;", b"apos;", b"#")

_WS_RUN = re.compile(rb"[ \t\r\n]*")
# XML 1.0 §3.1, §2.8: outside CDATA sections every '<' opens a tag, an end tag, a comment,
# a PI or a declaration, so what follows it must be a name start character, '/', '!' or '?'.
# libxml2's push parser does not fail on some other bytes there ("<'" waits for a quote that
# may never balance): the stream would go silent instead of ending with not-well-formed.
_BAD_TAG_OPEN = re.compile(rb"<[^A-Za-z_:/!?\x80-\xff]")
_DECL_ENCODING = re.compile(rb"\sencoding\s*=\s*(?:'([^']*)'|\"([^\"]*)\")")

# One complete tag, quote-aware so that a '>' inside an attribute value does not end it.
# Used to tell whether the root level is between stanzas (see StreamParser._at_rest).
_NAME = rb"[^\s<>/='\"]+"
_ATTR = rb"\s+" + _NAME + rb"\s*=\s*(?:'[^'<]*'|\"[^\"<]*\")"
_COMPLETE_TAG = re.compile(rb"</" + _NAME + rb"\s*>|<" + _NAME + rb"(?:" + _ATTR + rb")*\s*/?>")

# The root start tag: up to the first '>' outside quoted values (possessive, so that an
# unterminated header costs one linear scan). Its attributes, one at a time, to find the
# default namespace declaration (XML Namespaces §3) outside attribute values.
_START_TAG = re.compile(rb"<(?:[^'\">]++|'[^']*+'|\"[^\"]*+\")*+>")
_TAG_NAME = re.compile(_NAME)
_ATTR_AT = re.compile(rb"\s+(" + _NAME + rb")\s*=\s*(?:'([^'<]*)'|\"([^\"<]*)\")")
_TAG_END = re.compile(rb"\s*/?>")


@dataclass(slots=True)
class StreamOpen:
    """The stream header (RFC 6120 §4.7): the root element's name, prefix and attributes."""

    tag: str
    prefix: str | None
    attrs: dict[str, str]
    nsmap: dict[str | None, str]


@dataclass(slots=True)
class StreamClose:
    """The closing ``</stream:stream>`` tag (RFC 6120 §4.4)."""


Event: TypeAlias = StreamOpen | etree._Element | StreamClose


class StreamParser:
    """Turns the bytes of one XML stream into stream events and stanza elements."""

    def __init__(
        self,
        *,
        max_stanza_bytes: int = 262144,
        max_depth: int = 32,
        max_attrs: int = 64,
        content_ns_map: Mapping[str, str] | None = None,
    ) -> None:
        self._max_stanza_bytes = max_stanza_bytes
        # Header default namespace -> the namespace its elements are read in (see above).
        self._ns_map = {k.encode(): v.encode() for k, v in (content_ns_map or {}).items()}
        self._max_depth = max_depth
        self._max_attrs = max_attrs
        # Small limits (tests, tight component links) get smaller slices so that the size
        # check keeps the same relative precision.
        self._slice = max(512, min(MAX_SLICE, max_stanza_bytes // 4))
        self.reset()

    def reset(self) -> None:
        """Start over for a stream restart (RFC 6120 §5.4.3.3, §6.4.6): expect a new header."""
        self._parser = etree.XMLPullParser(
            events=("start", "end", "comment", "pi"),
            encoding="utf-8",
            resolve_entities=False,
            load_dtd=False,
            dtd_validation=False,
            no_network=True,
            huge_tree=False,
            collect_ids=False,
            remove_comments=False,
            remove_pis=False,
        )
        self._root: etree._Element | None = None
        self._open = 0  # elements currently open, the root included
        self._prolog: bytearray | None = bytearray()  # held back until vetted
        self._fed = 0  # bytes handed to lxml; bounds the header
        self._pending = 0  # bytes fed since the last completed stanza
        self._carry = b""  # undecided tail of the previous chunk, for the scan
        self._in_cdata = False
        self._at_rest_flag = False
        self._closed = False
        self._error: StreamError | None = None
        # (as sent, as read) when the header's default namespace was rewritten.
        self._mapped: tuple[str, str] | None = None

    @property
    def bytes_in_stanza(self) -> int:
        """Bytes received since the last complete stanza (what the size limit counts)."""
        return self._pending

    def feed(self, data: bytes) -> list[Event]:
        """Parse the next bytes of the stream and return what they completed, in order.

        Raises :class:`StreamError`; the stream must then be closed, and any events that
        the same call had already parsed are dropped with it. Once the stream is closed
        by ``</stream:stream>`` further bytes are ignored (RFC 6120 §4.4).
        """
        if self._error is not None:
            raise self._error
        if self._closed or not data:
            return []
        try:
            return self._feed(data)
        except StreamError as err:
            self._error = err
            raise

    # -- feeding -----------------------------------------------------------------------

    def _feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        if self._prolog is not None:
            # RFC 6120 §11.1: nothing reaches lxml until the prolog is known to hold no
            # more than an XML declaration and whitespace before the root start tag.
            self._prolog += data
            root_at = self._check_prolog(self._prolog)
            if root_at is not None and self._ns_map and not self._map_header(root_at):
                root_at = None  # the root start tag is not complete yet
            if root_at is None:
                if len(self._prolog) > HEADER_LIMIT:
                    raise StreamError("policy-violation", "stream header too large")
                return out
            data = bytes(self._prolog)
            self._prolog = None
            if root_at:
                self._parse(data[:root_at], out)
                data = data[root_at:]
        if len(data) <= self._slice and self._root is not None:
            self._scan(data)
            self._parse(data, out)
            return out
        i = 0
        while i < len(data) and not self._closed:
            # Small slices until the header is complete, so that its size is known to
            # within HEADER_SLICE bytes even when it arrives with stanzas behind it.
            step = self._slice if self._root is not None else HEADER_SLICE
            piece = data[i : i + step]
            self._scan(piece)
            self._parse(piece, out)
            i += step
        return out

    def _parse(self, piece: bytes, out: list[Event]) -> None:
        """Hand one vetted slice to lxml, collect its events and apply the limits."""
        # RFC 6120 §11.7: whitespace between stanzas is allowed and serves as a keep-alive.
        # While the root level is at rest it carries nothing, so it is neither parsed nor
        # counted: an idle stream kept open for months never nears the size limit.
        if self._at_rest_flag and piece[0] in _WS_BYTES and not piece.strip(_WS):
            return
        try:
            self._parser.feed(piece)
        except etree.XMLSyntaxError as exc:
            # Events before the error point are still queued: a stream that was closed
            # before trailing garbage ends normally.
            self._drain(out)
            if self._closed:
                return
            raise StreamError("not-well-formed") from exc
        self._fed += len(piece)
        completed = self._drain(out)
        if self._closed:
            return
        root = self._root
        if root is None:
            if self._fed > HEADER_LIMIT:
                raise StreamError("policy-violation", "stream header too large")
            return
        # Whitespace between stanzas collects as text of the root; drop it so that a
        # long-lived stream stays flat. Only text before the first child is removed, never
        # a node libxml2 is still appending to (the open stanza, if any, is a child).
        root.text = None
        if completed:
            self._pending = 0
        else:
            self._pending += len(piece)
        if self._open == 1:
            self._at_rest_flag = self._at_rest(piece)
            if self._at_rest_flag:
                self._pending = 0
        else:
            self._at_rest_flag = False
        if self._pending > self._max_stanza_bytes:
            raise StreamError("policy-violation", "stanza too large")

    def _at_rest(self, piece: bytes) -> bool:
        """Whether nothing is half-received at the root level after ``piece``.

        True when the last non-blank bytes fed form one complete tag (quote-aware) while
        no stanza is open: the stanza just ended, or the header was just read, so only
        keep-alive whitespace can follow. Unsure cases answer False, which only means
        that keep-alives are counted until the next stanza ends.
        """
        if self._in_cdata or self._carry:
            return False
        if piece[-1] != 0x3E:  # ">"
            piece = piece.rstrip(_WS)
            if not piece:
                return self._at_rest_flag
            if piece[-1] != 0x3E:
                return False
        lt = piece.rfind(b"<")
        return lt >= 0 and _COMPLETE_TAG.fullmatch(piece, lt) is not None

    def _drain(self, out: list[Event]) -> bool:
        """Turn queued lxml events into stream events; True if a stanza or header ended.

        This runs for every element of every stanza, so state is kept in locals.
        """
        completed = False
        depth = self._open
        deepest = self._max_depth + 1
        max_attrs = self._max_attrs
        # Only element events are asked for (start, end, comment, pi; comments and PIs are
        # elements too), so no item is a start-ns/end-ns tuple as lxml-stubs allow for.
        events = cast("Iterator[tuple[str, etree._Element]]", self._parser.read_events())
        try:
            for action, el in events:
                if action == "start":
                    depth += 1
                    if depth > deepest:
                        raise StreamError("policy-violation", "elements nested too deeply")
                    # Namespaces in XML §3 ("Prefix Declared") and §6.3 (attribute
                    # uniqueness): libxml2 reports these only as recoverable errors that
                    # lxml drops, leaving e.g. an element named "p:x" in no namespace.
                    # Relayed as-is it would break the recipient's stream, so refuse it.
                    tag = el.tag
                    if ":" in tag and tag[0] != "{":
                        raise StreamError("not-well-formed", "undeclared namespace prefix")
                    keys = el.keys()
                    if keys:
                        if len(keys) > max_attrs:
                            raise StreamError("policy-violation", "too many attributes")
                        qualified = 0
                        for key in keys:
                            if key[0] == "{":
                                qualified += 1
                            elif ":" in key:
                                raise StreamError("not-well-formed", "undeclared namespace prefix")
                        if qualified > 1 and len(set(keys)) < len(keys):
                            raise StreamError("not-well-formed", "duplicate attribute")
                    if depth == 1:
                        self._root = el
                        # lxml gives str names and values on Python 3; lxml-stubs allow bytes.
                        attrs = dict(cast("dict[str, str]", el.attrib))
                        out.append(self._stream_open(el, attrs))
                        completed = True
                elif action == "end":
                    depth -= 1
                    if depth == 1:
                        # Detach the finished stanza. A copy carries the namespace
                        # declarations it inherited from the stream header, declared the
                        # same way (xmlns="jabber:client"); moving the node itself would
                        # make lxml invent a prefix such as ns0: for the default namespace,
                        # which RFC 6120 §4.8 tells us not to generate.
                        # lxml-stubs lack _Element.__copy__; copy.copy() costs a lookup more.
                        stanza = el.__copy__()  # type: ignore[attr-defined]
                        stanza.tail = None
                        out.append(stanza)
                        parent = el.getparent()
                        if parent is not None:
                            parent.remove(el)
                        completed = True
                    elif depth == 0:
                        out.append(StreamClose())
                        self._closed = True
                        break
                elif action == "comment":
                    raise StreamError("restricted-xml", "comments are not allowed")
                else:
                    raise StreamError("restricted-xml", "processing instructions are not allowed")
        finally:
            self._open = depth
        return completed

    def _stream_open(self, root: etree._Element, attrs: dict[str, str]) -> StreamOpen:
        """The header as the peer sent it, even when its default namespace was rewritten."""
        tag, nsmap = root.tag, dict(root.nsmap)
        if self._mapped is not None:
            sent, read = self._mapped
            # The root's own declarations are all it has: None is the one rewritten.
            nsmap[None] = sent
            if root.prefix is None and tag.startswith(f"{{{read}}}"):
                tag = f"{{{sent}}}{tag[len(read) + 2 :]}"
        return StreamOpen(tag, root.prefix, attrs, nsmap)

    # -- byte-level checks -------------------------------------------------------------

    def _map_header(self, root_at: int) -> bool:
        """Rewrite the default namespace declaration of the root start tag in the held-back
        prolog per ``content_ns_map``; False while the start tag is incomplete.

        A tag that is not a plain sequence of attributes is left for lxml to refuse."""
        buf = self._prolog
        assert buf is not None
        tag = _START_TAG.match(buf, root_at)
        if tag is None:
            return False
        name = _TAG_NAME.match(buf, root_at + 1)
        if name is None:
            return True
        pos, found = name.end(), []
        while (attr := _ATTR_AT.match(buf, pos, tag.end())) is not None:
            if attr.group(1) == b"xmlns":
                found.append(attr)
            pos = attr.end()
        if _TAG_END.fullmatch(buf, pos, tag.end()) is None or len(found) != 1:
            return True
        (decl,) = found
        group = 2 if decl.group(2) is not None else 3
        read = self._ns_map.get(decl.group(group))
        if read is not None:
            self._mapped = (decl.group(group).decode(), read.decode())
            buf[decl.start(group) : decl.end(group)] = read
        return True

    def _check_prolog(self, buf: bytearray) -> int | None:
        """Offset of the root start tag in ``buf``, or None until more bytes arrive."""
        i = 0
        if buf.startswith(_BOM):
            i = 3
        elif _BOM.startswith(buf):
            return None
        head = bytes(buf[i : i + 6])
        if len(head) < 6 and b"<?xml".startswith(head[:5]):
            return None  # maybe the start of an XML declaration
        if head[:5] == b"<?xml" and head[5:6] in (b" ", b"\t", b"\r", b"\n"):
            end = buf.find(b"?>", i)
            if end < 0:
                return None
            # XML 1.0 §2.8, RFC 6120 §11.5: a declaration only at the very start.
            # RFC 6120 §11.6: UTF-8 only; declaring another encoding has its own condition.
            m = _DECL_ENCODING.search(buf, i, end)
            if m is not None:
                enc = (m.group(1) if m.group(1) is not None else m.group(2)).lower()
                if enc not in (b"utf-8", b"utf8"):
                    raise StreamError("unsupported-encoding")
            i = end + 2
        blank = _WS_RUN.match(buf, i)
        j = blank.end() if blank else i
        if j + 1 >= len(buf):
            if j < len(buf) and buf[j] != 0x3C:  # "<"
                raise StreamError("not-well-formed")
            return None
        if buf[j] != 0x3C:
            raise StreamError("not-well-formed")
        nxt = buf[j + 1]
        if nxt == 0x21:  # "<!": DOCTYPE or comment
            raise StreamError("restricted-xml", "DTDs and comments are not allowed")
        if nxt == 0x3F:  # "<?": a second declaration or a processing instruction
            raise StreamError("restricted-xml", "processing instructions are not allowed")
        return j

    def _scan(self, data: bytes) -> None:
        """Refuse restricted markup in ``data`` before lxml sees it (RFC 6120 §11.1).

        Only ``<!`` (DOCTYPE, ENTITY, comments; CDATA sections are allowed), ``<?`` and
        ``&`` need a look; each is located with ``bytes.find``. A candidate cut off by
        the end of the chunk is kept in ``_carry`` and decided with the next chunk.
        """
        if self._carry:
            data = self._carry + data
            self._carry = b""
        # CDATA sections may hold any '<'; their rare chunks are left to libxml2.
        if not self._in_cdata and _BAD_TAG_OPEN.search(data) and b"<![" not in data:
            raise StreamError("not-well-formed")
        find = data.find
        pos = 0
        amp = bang = pi = -2  # next candidate of each kind at or after pos; -1 = none
        while True:
            if self._in_cdata:
                end = find(b"]]>", pos)
                if end < 0:
                    self._carry = data[max(pos, len(data) - 2) :]
                    return
                self._in_cdata = False
                pos = end + 3
            if -1 < amp < pos or amp == -2:
                amp = find(b"&", pos)
            if -1 < bang < pos or bang == -2:
                bang = find(b"<!", pos)
            if -1 < pi < pos or pi == -2:
                pi = find(b"<?", pos)
            if amp < 0 and bang < 0 and pi < 0:
                if data.endswith(b"<"):
                    self._carry = b"<"
                return
            first = min(p for p in (amp, bang, pi) if p >= 0)
            if first == pi:
                raise StreamError("restricted-xml", "processing instructions are not allowed")
            if first == amp:
                ref = data[amp + 1 : amp + 6]
                if ref.startswith(_REFS):
                    pos = amp + 1
                    continue
                if any(r.startswith(ref) for r in _REFS):
                    self._carry = data[amp:]
                    return
                if ref[0] >= 0x80 or chr(ref[0]).isalpha() or ref[:1] in (b"_", b":"):
                    raise StreamError("restricted-xml", "entity references are not allowed")
                raise StreamError("not-well-formed")
            mark = data[bang : bang + 9]
            if mark == _CDATA_OPEN:
                self._in_cdata = True
                pos = bang + 9
                continue
            if _CDATA_OPEN.startswith(mark):
                self._carry = data[bang:]
                return
            raise StreamError("restricted-xml", "DTDs, entities and comments are not allowed")
