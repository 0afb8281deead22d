"""Property-based robustness of client streams (RFC 6120 §4.9, §6, §7, §8.2.3, §8.3; RFC 6121).

A real CoreServer with every default module on the test Redis, driven over in-memory
transports by logged-in clients. One of them sends generated stanzas: message, presence and
IQ with random types, ids and addresses (malformed JIDs included), roster, privacy, blocking,
vCard, disco, ping, version and last-activity payloads with random attributes and children,
foreign namespaces, one at a time or pipelined (hanging up right after, now and then), while
a contact and another resource of the same account may be online; other examples send
random SASL exchanges and bind requests, or random bytes and truncated XML at each stage.
Every example starts from the same accounts and rosters. The properties:

* nothing escapes to the loop and nothing is logged at ERROR (no traceback, no unexpected
  exception): an ``internal-server-error`` is a defect here, since no input is the server's
  fault;
* every IQ get/set is answered exactly once, with its id (RFC 6120 §8.2.3), unless it was
  delivered to its addressee;
* a stanza of type 'error', or an IQ result, is never answered with an error (§8.3.1);
* every stanza the server sends carries its content namespace without prefix (§4.8.5);
* the stream stays usable (a ping is answered) or ends with a ``<stream:error/>`` whose
  condition is one of §4.9.3;
* nothing stored is lost: the rosters and privacy lists the node holds in memory are the ones
  in Redis, a new session of each account reads its roster, privacy lists, blocklist and
  vCard, and gets each stored offline message exactly once (XEP-0160).

The strategies and checks live here; test_fuzz_component.py, test_fuzz_s2s.py and
test_fuzz_muc.py reuse them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from xml.sax.saxutils import escape

import pytest
import redis.asyncio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from lxml import etree
from twisted.internet.task import Clock

from core.modules.privacy import service_of as privacy_service
from core.runtime.config import ComponentConfig
from core.server import CoreServer, default_modules
from core.storage import keys
from core.storage.privacy import PrivacyStore
from core.storage.roster import RosterItem, RosterStore
from core.xmpp.errors import STREAM_CONDITIONS
from core.xmpp.ns import (
    NS_BIND,
    NS_BLOCKING,
    NS_CLIENT,
    NS_COMPONENT,
    NS_DATA,
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_LAST,
    NS_MUC,
    NS_PING,
    NS_PRIVACY,
    NS_ROSTER,
    NS_SASL,
    NS_SERVER,
    NS_SESSION,
    NS_STANZAS,
    NS_STREAMS,
    NS_VCARD,
    NS_VERSION,
    NS_XML,
    QN_DELAY,
    qn,
)
from core.xmpp.parser import StreamClose
from tests.unit.helpers import (
    DOMAIN,
    PASSWORD,
    Client,
    add_account,
    elements,
    make_config,
    server_tls,
    settle,
    until,
)

T = TypeVar("T")
Element = etree._Element

# Hypothesis: deterministic (the same examples on every run, no example database written to
# the tree), bounded, no per-example deadline (Redis round trips vary with the machine). A
# longer hunt: SWITCHBOARD_FUZZ_SCALE=20 SWITCHBOARD_FUZZ_RANDOM=1 pytest --timeout=0
# tests/unit/test_fuzz_* (add SWITCHBOARD_FUZZ_SHRINK=1 to have a failing example made minimal).
SCALE = float(os.environ.get("SWITCHBOARD_FUZZ_SCALE", "1"))
RANDOM = bool(os.environ.get("SWITCHBOARD_FUZZ_RANDOM"))
# Shrinking a failing example replays it hundreds of times, which takes minutes with a server
# behind each one; a failure is reported as found unless SWITCHBOARD_FUZZ_SHRINK is set.
PHASES = (
    tuple(Phase)
    if os.environ.get("SWITCHBOARD_FUZZ_SHRINK")
    else (Phase.explicit, Phase.reuse, Phase.generate, Phase.target)
)


def fuzz_settings(examples: int) -> settings:
    """Settings for a property over ``examples`` examples (times SWITCHBOARD_FUZZ_SCALE)."""
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        phases=PHASES,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


USER = "alice"
ME_BARE = f"{USER}@{DOMAIN}"
ME = f"{ME_BARE}/res"
BOB_BARE = f"bob@{DOMAIN}"
BOB = f"{BOB_BARE}/r"

# -- Values ------------------------------------------------------------------------------

# XML 1.0 §2.2 characters (lxml refuses the others), from every script.
_XML_CHARS = st.characters(
    codec="utf-8",
    exclude_categories=("Cs", "Cc", "Cn"),
) | st.sampled_from(["\t", "\n", " ", "<", "&", "'", '"', ">"])
TEXT = st.text(_XML_CHARS, max_size=24)

# Addresses: valid ones of every kind the router knows (RFC 6120 §10), and malformed ones
# (RFC 7622 §3). Valid ones are drawn more often, so that stanzas get past the checks at the
# edge and reach the modules.
VALID_JIDS = [
    DOMAIN,
    ME_BARE,
    ME,
    f"{ME_BARE}/other",
    "ALICE@LOCALHOST/res",
    BOB_BARE,
    BOB,
    "bob@localhost/gone",
    "nobody@localhost",
    "nobody@localhost/x",
    "localhost/res",
    "example.org",
    "bob@example.org/x",
    "conference.localhost",
    "room@conference.localhost/nick",
    "\u212bngstr\u00f6m@localhost",
    "alice@localhost/\U0001f600",
    "1.2.3.4",
    "[::1]",
    "alice@[::1]",
]
MALFORMED_JIDS = [
    "",
    "@localhost",
    "alice@",
    "a@b@c",
    "alice@localhost/",
    "/res",
    "alice@@localhost",
    "alice@localhost/" + "r" * 1100,
    "x" * 1100 + "@localhost",
    "d" * 300 + ".org",
    "[::1",
    "alice@localhost:5222",
    "al ice@localhost",
    "alice@local host",
    "\ufb00@localhost",
    "alice@..",
    "alice@.localhost",
    "\u0661a@localhost",
    "alice@localhost/\u202e",
    "\U0001f600@localhost",
    "alice@256.1.1.1",
    "alice@localhost.",
    "-@localhost",
]


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``options``, each drawn in proportion to its weight. (An index drawn as an
    integer keeps the weights: ``st.one_of`` leans towards whichever branch gives values it
    has not seen yet, such as random text.)"""
    flat = [s for w, s in options for _ in range(w)]
    return st.integers(0, len(flat) - 1).flatmap(flat.__getitem__)


VALID_JID = st.sampled_from(VALID_JIDS)
MALFORMED_JID = st.sampled_from(MALFORMED_JIDS)
JID = weighted((8, VALID_JID), (2, MALFORMED_JID), (1, TEXT))
OPT_JID = weighted((4, st.none()), (8, VALID_JID), (2, MALFORMED_JID), (1, TEXT))

# Attribute values that mean something to one module or another.
WORDS = [
    "",
    *"""
    none to from both remove subscribe true false 1 0 -1 128 -129 99999999999999999999 1.5
    allow deny jid group subscription list chat away dnd xa * Friends image/png moderator
    owner outcast member participant visitor submit cancel form result
""".split(),
]
VALUE = weighted((4, st.sampled_from(WORDS)), (2, VALID_JID), (1, JID), (1, TEXT))

NAMESPACES = [
    NS_CLIENT,
    NS_ROSTER,
    NS_PRIVACY,
    NS_BLOCKING,
    NS_VCARD,
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_PING,
    NS_VERSION,
    NS_LAST,
    NS_SESSION,
    NS_BIND,
    NS_MUC,
    NS_MUC + "#user",
    NS_MUC + "#admin",
    NS_MUC + "#owner",
    NS_DATA,
    NS_STANZAS,
    NS_STREAMS,
    "urn:xmpp:delay",
    "http://jabber.org/protocol/chatstates",
    "vcard-temp:x:update",
    "http://jabber.org/protocol/caps",
    "urn:xmpp:blocking:errors",
    "urn:example:unknown",
    "",
]
LOCAL_NAMES = """
    query item list group block unblock blocklist vCard ping bind session x error body
    subject thread show status priority field value PHOTO BINVAL TYPE FN NICKNAME active
    default message iq presence-in presence-out jid resource feature identity c photo delay
    destroy invite decline password history reason
""".split()
ATTR_NAMES = [
    qn(NS_XML, "lang"),
    *"""
    jid name subscription ask approved node type value action order ver var code id to from
    category nick role affiliation hash stamp by maxstanzas maxchars seconds since
""".split(),
]

# -- Elements ----------------------------------------------------------------------------


def build(tag: str, attrs: dict[str, str] | None = None, *children: Element | str) -> Element:
    """An element ``tag`` (Clark name) with ``attrs``; a str child becomes its text."""
    el = etree.Element(tag)
    for name, value in (attrs or {}).items():
        el.set(name, value)
    for c in children:
        if isinstance(c, str):
            el.text = (el.text or "") + c
        else:
            el.append(c)
    return el


def _name(ns: str, local: str) -> str:
    return qn(ns, local) if ns else local


ATTRS = st.dictionaries(st.sampled_from(ATTR_NAMES), VALUE, max_size=4)


@st.composite
def any_element(draw: st.DrawFn, depth: int = 0) -> Element:
    """Any element in any of the namespaces above, nested up to three levels."""
    ns = draw(st.sampled_from(NAMESPACES))
    el = build(_name(ns, draw(st.sampled_from(LOCAL_NAMES))), draw(ATTRS))
    if draw(st.booleans()):
        el.text = draw(TEXT)
    if depth < 3:
        for c in draw(st.lists(any_element(depth + 1), max_size=3)):
            el.append(c)
    return el


def mostly(
    usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any], ratio: int = 4
) -> st.SearchStrategy[Any]:
    """``usual`` ``ratio`` times as often as ``odd``: most payloads are well-formed enough to
    reach the code behind the checks, the rest test the checks."""
    return weighted((ratio, usual), (1, odd))


def rarely(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``mostly`` for one field of many (an item of a list): the odd value one time in 13, so
    that most lists are still well-formed as a whole."""
    return mostly(usual, odd, 12)


CONTACT = mostly(
    st.sampled_from([BOB_BARE, "carol@localhost", "nobody@localhost", "bob@example.org"]),
    JID,
    8,
)
GROUPS = rarely(
    st.sampled_from(["Friends", "Work"]),
    st.sampled_from(["", " ", "g" * 1100]) | TEXT,
)
LIST_NAMES = mostly(
    st.sampled_from(["a", "b"]), st.sampled_from(["blocklist", "", " ", "n" * 1100]) | TEXT, 8
)


@st.composite
def roster_query(draw: st.DrawFn) -> Element:
    """jabber:iq:roster (RFC 6121 §2): items with every attribute a client may (not) set."""
    q = build(qn(NS_ROSTER, "query"))
    if draw(st.integers(0, 5)) == 0:
        q.set("ver", draw(VALUE))
    for _ in range(draw(st.sampled_from([1, 1, 1, 1, 0, 2]))):
        attrs = {"jid": draw(CONTACT)} if draw(st.integers(0, 7)) else {}
        if draw(st.booleans()):
            attrs["name"] = draw(rarely(st.just("Bob"), st.sampled_from(["", "b" * 1100]) | TEXT))
        if draw(st.integers(0, 3)) == 0:
            attrs["subscription"] = draw(st.sampled_from(["remove", "remove", "both", "x"]))
        for name in ("ask", "approved"):
            if draw(st.integers(0, 7)) == 0:
                attrs[name] = draw(VALUE)
        item = build(qn(NS_ROSTER, "item"), attrs)
        for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
            item.append(build(qn(NS_ROSTER, "group"), None, draw(GROUPS)))
        if draw(st.integers(0, 9)) == 0:
            item.append(draw(any_element(2)))
        q.append(item)
    return q


@st.composite
def privacy_item(draw: st.DrawFn) -> Element:
    """One rule of a privacy list (XEP-0016 §2.1), mostly well-formed."""
    kind = draw(rarely(st.sampled_from(["jid", "group", "subscription", None]), st.just("x")))
    attrs: dict[str, str] = {}
    if kind is not None:
        attrs["type"] = kind
        value = {
            "jid": CONTACT,
            "group": GROUPS,
            "subscription": rarely(st.sampled_from(["none", "to", "from", "both"]), VALUE),
        }.get(kind, VALUE)
        if draw(st.integers(0, 12)):
            attrs["value"] = draw(value)
    if draw(st.integers(0, 12)):
        attrs["action"] = draw(rarely(st.sampled_from(["allow", "deny"]), st.just("x")))
    if draw(st.integers(0, 12)):
        attrs["order"] = draw(
            rarely(
                st.integers(0, 20).map(str),
                st.sampled_from(["-1", "4294967296", "99999999999999999999", "1.5", "", "x"]),
            )
        )
    item = build(qn(NS_PRIVACY, "item"), attrs)
    kinds = rarely(st.sampled_from(["message", "iq", "presence-in", "presence-out"]), st.just("x"))
    for local in draw(st.lists(kinds, max_size=3)):
        item.append(build(qn(NS_PRIVACY, local)))
    return item


@st.composite
def privacy_query(draw: st.DrawFn) -> Element:
    """jabber:iq:privacy (XEP-0016): active, default and lists of rules."""
    q = build(qn(NS_PRIVACY, "query"))
    for _ in range(draw(st.sampled_from([1, 1, 1, 1, 0, 2]))):
        kind = draw(st.sampled_from(["list", "list", "list", "active", "default"]))
        attrs = {"name": draw(LIST_NAMES)} if draw(st.integers(0, 7)) else {}
        el = build(qn(NS_PRIVACY, kind), attrs)
        if kind == "list":
            for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
                el.append(draw(privacy_item()))
        q.append(el)
    return q


@st.composite
def blocking_payload(draw: st.DrawFn) -> Element:
    """urn:xmpp:blocking (XEP-0191): blocklist, block and unblock with items."""
    local = draw(st.sampled_from(["blocklist", "block", "block", "unblock"]))
    el = build(qn(NS_BLOCKING, local))
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        attrs = {"jid": draw(CONTACT)} if draw(st.integers(0, 7)) else {}
        el.append(build(qn(NS_BLOCKING, "item"), attrs))
    return el


@st.composite
def vcard(draw: st.DrawFn) -> Element:
    """vcard-temp (XEP-0054), with photos (XEP-0153) of random content."""
    el = build(qn(NS_VCARD, "vCard"), draw(ATTRS) if draw(st.integers(0, 3)) == 0 else None)
    for local in draw(st.lists(st.sampled_from(["FN", "NICKNAME", "PHOTO", "EMAIL"]), max_size=3)):
        child = build(qn(NS_VCARD, local), None, draw(TEXT))
        if local == "PHOTO":
            child.append(
                build(qn(NS_VCARD, "TYPE"), None, draw(mostly(st.just("image/png"), VALUE)))
            )
            binval = draw(
                mostly(st.just("iVBORw0KGgo="), st.sampled_from(["", "!!!", "a", "===="]) | TEXT)
            )
            child.append(build(qn(NS_VCARD, "BINVAL"), None, binval))
        el.append(child)
    return el


@st.composite
def simple_query(draw: st.DrawFn) -> Element:
    """disco#info, disco#items, ping, version, last, session and bind, with random attributes
    and sometimes a random child."""
    ns, local = draw(
        st.sampled_from(
            [
                (NS_DISCO_INFO, "query"),
                (NS_DISCO_ITEMS, "query"),
                (NS_PING, "ping"),
                (NS_VERSION, "query"),
                (NS_LAST, "query"),
                (NS_SESSION, "session"),
                (NS_BIND, "bind"),
            ]
        )
    )
    el = build(qn(ns, local), draw(ATTRS) if draw(st.integers(0, 3)) == 0 else None)
    if draw(st.integers(0, 4)) == 0:
        el.append(draw(any_element(2)))
    return el


IQ_TYPES = st.sampled_from(["get", "set", "result", "error", None, "x"])
# The type each payload is meant for (RFC 6121 §2, XEP-0016 §2, XEP-0191 §3, XEP-0054 §3).
_NATURAL = {
    qn(NS_ROSTER, "query"): ["get", "set", "set"],
    qn(NS_PRIVACY, "query"): ["get", "set", "set"],
    qn(NS_BLOCKING, "blocklist"): ["get"],
    qn(NS_BLOCKING, "block"): ["set"],
    qn(NS_BLOCKING, "unblock"): ["set"],
    qn(NS_VCARD, "vCard"): ["get", "set"],
}
# Payloads about one's own account go mostly to no 'to' or one's own bare JID (RFC 6121 §2.1.3),
# where their handlers are; the others anywhere.
OWN_PAYLOAD = weighted(
    (3, roster_query()), (3, privacy_query()), (2, blocking_payload()), (1, vcard())
)
OTHER_PAYLOAD = weighted((3, simple_query()), (1, vcard()), (1, any_element()))
OWN_TO = weighted((5, st.none()), (2, st.just(ME_BARE)), (1, OPT_JID))
OTHER_TO = weighted((2, st.none()), (3, st.just(DOMAIN)), (4, OPT_JID))


@st.composite
def iq_parts(draw: st.DrawFn) -> tuple[str | None, str | None, list[Element]]:
    """The type, 'to' and children of an IQ: mostly one payload (RFC 6120 §8.2.3) with the
    type it is meant for, sometimes none or two, or another type."""
    own = draw(st.booleans())
    to = draw(OWN_TO if own else OTHER_TO)
    payload = OWN_PAYLOAD if own else OTHER_PAYLOAD
    count = draw(st.sampled_from([1, 1, 1, 1, 1, 1, 1, 0, 2]))
    children = [draw(payload) for _ in range(count)]
    natural = _NATURAL.get(children[0].tag, ["get", "get", "set"]) if children else ["get"]
    stype = draw(mostly(st.sampled_from(natural), IQ_TYPES))
    return stype, to, children


@st.composite
def message_child(draw: st.DrawFn) -> Element:
    local = draw(st.sampled_from(["body", "body", "subject", "thread"]))
    attrs = draw(ATTRS) if draw(st.integers(0, 3)) == 0 else None
    return build(qn(NS_CLIENT, local), attrs, draw(TEXT))


@st.composite
def presence_child(draw: st.DrawFn) -> Element:
    """show, status, priority (RFC 6121 §4.7.2), a vCard photo hash (XEP-0153) or caps."""
    local = draw(st.sampled_from(["show", "status", "priority", "priority", "photo", "c"]))
    if local == "photo":
        photo = build(qn("vcard-temp:x:update", "photo"), None, draw(VALUE))
        return build(qn("vcard-temp:x:update", "x"), None, photo)
    if local == "c":
        return build(qn("http://jabber.org/protocol/caps", "c"), draw(ATTRS))
    usual = {
        "show": st.sampled_from(["chat", "away", "xa", "dnd"]),
        "status": TEXT,
        "priority": st.integers(-128, 127).map(str),
    }[local]
    odd = st.sampled_from(WORDS) | st.integers(-200, 200).map(str) | TEXT
    return build(qn(NS_CLIENT, local), None, draw(mostly(usual, odd)))


MESSAGE_TYPES = mostly(
    st.sampled_from([None, "normal", "chat", "chat", "headline"]),
    st.sampled_from(["groupchat", "error", "x"]),
)
PRESENCE_TYPES = mostly(
    st.sampled_from(
        [
            None,
            None,
            "unavailable",
            "subscribe",
            "subscribed",
            "unsubscribe",
            "unsubscribed",
            "probe",
        ]
    ),
    st.sampled_from(["error", "x"]),
)
PRESENCE_TO = weighted((4, st.none()), (4, CONTACT), (3, OPT_JID))


@st.composite
def stanza(
    draw: st.DrawFn,
    *,
    ns: str = NS_CLIENT,
    to: st.SearchStrategy[str | None] = OPT_JID,
    presence_to: st.SearchStrategy[str | None] = PRESENCE_TO,
    frm: st.SearchStrategy[str | None] = st.none(),
    iq: st.SearchStrategy[tuple[str | None, str | None, list[Element]]] = iq_parts(),
) -> Element:
    """One message, presence or IQ in ``ns`` with a random type, 'to', 'from' and payload;
    the id is set by ``stanzas``."""
    kind = draw(st.sampled_from(["iq", "iq", "iq", "message", "presence", "presence"]))
    el = build(qn(ns, kind))
    if kind == "iq":
        stype, address, children = draw(iq)
    else:
        stype = draw(PRESENCE_TYPES if kind == "presence" else MESSAGE_TYPES)
        address = draw(presence_to if kind == "presence" else to)
        child = presence_child() if kind == "presence" else message_child()
        children = draw(st.lists(mostly(child, any_element(1)), max_size=3))
    sender = draw(frm)
    for name, value in (("type", stype), ("to", address), ("from", sender)):
        if value is not None:
            el.set(name, value)
    if draw(st.integers(0, 9)) == 0:
        el.set(qn(NS_XML, "lang"), draw(st.sampled_from(["en", "", "x" * 80, "de-CH"])))
    for c in children:
        el.append(c)
    if ns != NS_CLIENT:
        # Children in the content namespace move with the stanza (RFC 6120 §4.8.3).
        for c in el.iterdescendants():
            if isinstance(c.tag, str) and c.tag.startswith(f"{{{NS_CLIENT}}}"):
                c.tag = qn(ns, etree.QName(c).localname)
    if stype == "error" and draw(st.booleans()):
        condition = draw(st.sampled_from(["bad-request", "item-not-found", "nonsense"]))
        el.append(
            build(
                qn(ns, "error"),
                {"type": draw(st.sampled_from(["cancel", "modify", "x"]))},
                build(qn(NS_STANZAS, condition)),
            )
        )
    return el


@st.composite
def stanzas(
    draw: st.DrawFn,
    base: st.SearchStrategy[Element],
    max_size: int = 10,
    *,
    ids: bool = False,
    prelude: bool = True,
) -> list[str]:
    """A sequence of stanzas as text, each with a unique id (or, now and then, none unless
    ``ids``), after an initial presence and roster request now and then (``prelude``)."""
    out = []
    if prelude and draw(st.booleans()):
        # A session that asked for its roster and is available (RFC 6121 §2.1.6, §4.2), so that
        # pushes, broadcasts and offline delivery take part too.
        priority = draw(st.sampled_from(["", "<priority>5</priority>", "<priority>-1</priority>"]))
        out.append(f"<presence>{priority}</presence>")
        out.append(f"<iq type='get' id='pre-roster'><query xmlns='{NS_ROSTER}'/></iq>")
    for n, el in enumerate(draw(st.lists(base, min_size=min(3, max_size), max_size=max_size))):
        if ids or draw(st.integers(0, 11)):
            el.set("id", f"fz{n}-{draw(st.sampled_from(['', 'x', ' ', 'é', '1']))}")
        out.append(etree.tostring(el, encoding="unicode"))
    return out


# -- Checks ------------------------------------------------------------------------------


def parse_sent(text: str, ns: str = NS_CLIENT) -> Element:
    """A stanza as the server reads it: in the stream's content namespace ``ns``."""
    return etree.fromstring(f"<w xmlns='{ns}'>{text}</w>")[0]


_ADDRESSES = ("from", "to")


def same_tree(a: Element, b: Element, ignore: tuple[str, ...] = _ADDRESSES) -> bool:
    """Whether ``a`` and ``b`` are the same tree (names, attributes but those in ``ignore``
    on the top element, text, children): a stanza and its delivered copy, whose addresses the
    server may have normalised, or moved between content namespaces (RFC 6120 §4.8.3)."""
    if _content(a.tag) != _content(b.tag):
        return False
    if {k: v for k, v in a.attrib.items() if k not in ignore} != {
        k: v for k, v in b.attrib.items() if k not in ignore
    }:
        return False
    if (a.text or "").strip() != (b.text or "").strip():
        return False
    ac = [c for c in a if isinstance(c.tag, str)]
    bc = [c for c in b if isinstance(c.tag, str)]
    return len(ac) == len(bc) and all(same_tree(x, y, ()) for x, y in zip(ac, bc, strict=True))


_CONTENT_NAMESPACES = (f"{{{NS_COMPONENT}}}", f"{{{NS_SERVER}}}")


def _content(tag: str) -> str:
    """``tag`` with a component or server content namespace taken as the client one."""
    for prefix in _CONTENT_NAMESPACES:
        if tag.startswith(prefix):
            return qn(NS_CLIENT, tag[len(prefix) :])
    return tag


def replies_to(sent: Element, got: list[Element]) -> list[Element]:
    """The stanzas in ``got`` that answer ``sent`` (same kind and id, of type result or error),
    leaving out a copy of ``sent`` itself delivered to its sender."""
    out = []
    for el in got:
        if etree.QName(el).localname != etree.QName(sent).localname:
            continue
        if el.get("id") != sent.get("id") or el.get("type") not in ("result", "error"):
            continue
        if el.get("type") == "result" and etree.QName(el).localname != "iq":
            continue
        if not same_tree(el, sent):
            out.append(el)
    return out


def delivered(sent: Element, got: list[Element]) -> bool:
    """Whether ``sent`` itself is among ``got`` (it was delivered to its addressee)."""
    return any(same_tree(el, sent) for el in got)


def check_answers(
    sent: Element,
    got: list[Element],
    closed: bool,
    elsewhere: list[Element] | None = None,
) -> None:
    """RFC 6120 §8.2.3 and §8.3.1 for one stanza, what the server sent its sender after it
    (``got``) and what it sent other entities meanwhile (``elsewhere``)."""
    others = elsewhere or []
    text = short(sent)
    for el in got + others:
        assert not _is_internal_error(el), f"internal-server-error after {text}: {short(el)}"
        check_prefix_free(el)
    if sent.get("id") is None:
        return  # its answers cannot be told from other stanzas without an id
    answers = replies_to(sent, got)
    stype = sent.get("type")
    shown = [short(e) for e in answers]
    is_iq = etree.QName(sent).localname == "iq"
    if stype == "error" or (is_iq and stype == "result"):
        assert not answers, f"answered an error or result: {text}\n{shown}"
        return
    assert len(answers) <= 1, f"answered more than once: {text}\n{shown}"
    if is_iq and stype in ("get", "set") and not closed and not delivered(sent, got + others):
        assert len(answers) == 1, f"IQ not answered: {text}"


def check_prefix_free(el: Element, top: Element | None = None) -> None:
    """RFC 6120 §4.8.5: a stanza and its children in the stream's content namespace carry no
    namespace prefix, whatever the sender wrote (§4.8.3: the server re-scopes stanzas it
    routes to another stream). Payloads of other namespaces are data, left as they came."""
    top = el if top is None else top
    content = etree.QName(top).namespace
    if content not in (NS_CLIENT, NS_COMPONENT, NS_SERVER):
        return  # not a stanza (a stream error, a SASL element)
    assert el.prefix is None, f"prefixed content namespace: {short(top)}"
    for c in el:
        if isinstance(c.tag, str) and etree.QName(c).namespace == content:
            check_prefix_free(c, top)


def short(el: Element, limit: int = 600) -> str:
    """An element as text, cut short for assertion messages."""
    text = etree.tostring(el, encoding="unicode")
    return text if len(text) <= limit else text[:limit] + "..."


def _is_internal_error(el: Element) -> bool:
    return any(
        etree.QName(c).localname == "error"
        and c.find(qn(NS_STANZAS, "internal-server-error")) is not None
        for c in el
        if isinstance(c.tag, str)
    )


def check_stream_end(events: list[Any], stream: Any) -> None:
    """A closed stream ended with a <stream:error/> of RFC 6120 §4.9.3 and the close tag,
    or with the close tag alone when the peer closed it (§4.4)."""
    assert events and isinstance(events[-1], StreamClose), "closed without the close tag"
    if stream.close_reason.startswith("closed by"):
        return
    got = elements(events)
    assert got and got[-1].tag == qn(NS_STREAMS, "error"), "closed without a stream error"
    conditions = [etree.QName(c).localname for c in got[-1] if etree.QName(c).localname != "text"]
    assert len(conditions) == 1 and conditions[0] in STREAM_CONDITIONS, conditions
    assert conditions[0] not in ("internal-server-error", "undefined-condition"), conditions


class LogTrap(logging.Handler):
    """Records what is logged at ERROR (or with a traceback), and what the event loop
    reports as unhandled, while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(self.format(record))

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.records.append(f"event loop: {context.get('message')} {context.get('exception')!r}")

    @contextlib.contextmanager
    def installed(self, loop: asyncio.AbstractEventLoop) -> Iterator[LogTrap]:
        root = logging.getLogger()
        root.addHandler(self)
        loop.set_exception_handler(self.loop_exception)
        try:
            yield self
        finally:
            root.removeHandler(self)
            loop.set_exception_handler(None)

    def take(self) -> list[str]:
        out, self.records = self.records, []
        return out


# -- The harness -------------------------------------------------------------------------

PING = f"<iq type='get' id='final-ping' to='{DOMAIN}'><ping xmlns='{NS_PING}'/></iq>"
CHECKS = [
    f"<iq type='get' id='c-roster'><query xmlns='{NS_ROSTER}'/></iq>",
    f"<iq type='get' id='c-privacy'><query xmlns='{NS_PRIVACY}'/></iq>",
    f"<iq type='get' id='c-block'><blocklist xmlns='{NS_BLOCKING}'/></iq>",
    f"<iq type='get' id='c-vcard'><vCard xmlns='{NS_VCARD}'/></iq>",
]
# Every example starts from these rosters: contacts of each subscription state, so that
# presence broadcasts, probes and privacy rules about contacts have someone to act on.
SEED_ROSTERS = {
    ME_BARE: [
        RosterItem(BOB_BARE, "Bob", ("Friends",), "both"),
        RosterItem("carol@localhost", None, ("Work",), "from"),
        RosterItem("bob@example.org", None, (), "to"),
    ],
    BOB_BARE: [RosterItem(ME_BARE, "Alice", (), "both")],
}


class C2SFuzz:
    """One event loop and one core (every default module, the test Redis) for all the
    examples of one test; each example starts from the same accounts and rosters."""

    def __init__(
        self,
        redis_url: str,
        tmp_path: Path,
        components: dict[str, ComponentConfig] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.tmp_path = tmp_path
        self.components = components or {}
        self.runner = asyncio.Runner()
        self.trap = LogTrap()
        self.stack = contextlib.AsyncExitStack()
        self.server: Any = None
        self.keep: set[bytes] = set()
        self.clients: list[Client] = []

    def __enter__(self) -> C2SFuzz:
        self.runner.__enter__()
        self.runner.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.runner.run(self._stop())
        finally:
            self.runner.__exit__(None, None, None)

    async def _start(self) -> None:
        client = redis.asyncio.Redis.from_url(self.redis_url, decode_responses=False)
        self.stack.push_async_callback(client.aclose)
        config = make_config(self.tmp_path, require_encryption=False)
        config.components = dict(self.components)
        # Each example logs in a few times; SCRAM's key derivation need not be slow here.
        config.auth.scram_iterations = 64
        self.server = CoreServer(config, client, reactor=Clock(), modules=default_modules())
        self.server.tls = server_tls(self.tmp_path / "tls")
        await self.server.dispatcher.emit("server-started", self.server)
        for user in (USER, "bob", "carol"):
            await add_account(self.server, user)
        self.keep = set(await self.server.redis.keys("*"))

    async def _stop(self) -> None:
        await self.server.dispatcher.emit("server-stopping", self.server)
        await settle(self.server)
        await self.stack.aclose()

    def run(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on the harness loop with the log trap installed; fail on what it caught.
        Whatever connections the example left open are closed afterwards, pass or fail."""

        async def wrapper() -> T:
            try:
                return await coro
            finally:
                await self.cleanup()

        with self.trap.installed(self.runner.get_loop()):
            result = self.runner.run(wrapper())
        caught = self.trap.take()
        assert not caught, "\n".join(caught)
        return result

    async def cleanup(self) -> None:
        """Drop the connections an example left behind (a failing one, mostly)."""
        for client in self.clients:
            await client.disconnect()
            await client.settle()
        self.clients.clear()

    async def reset(self) -> None:
        """Back to the accounts and the seed rosters: every other key goes."""
        assert not self.server.router.local, "a session outlived its example"
        redis = self.server.redis
        extra = [k for k in await redis.keys("*") if k not in self.keep]
        if extra:
            await redis.delete(*extra)
        # The node keeps recently used privacy lists of offline accounts; what was just
        # deleted behind its back must not be served from there.
        privacy_service(self.server).cache.forget()
        store = RosterStore(redis)
        for bare, items in SEED_ROSTERS.items():
            await store.write(bare, version="seed-1", items={i.jid: i for i in items})

    async def login(self, resource: str = "res", user: str = USER) -> Client:
        client = self.client()
        await client.login(user, resource=resource)
        return client

    async def online(self, user: str, resource: str) -> Client:
        """A session that asked for its roster and sent initial presence (RFC 6121 §4.2)."""
        client = await self.login(resource, user)
        await client.exchange(f"<iq type='get' id='r1'><query xmlns='{NS_ROSTER}'/></iq>")
        await client.exchange("<presence/>")
        return client

    def client(self, *, direct_tls: bool = False) -> Client:
        """A new connection, closed at the end of the example."""
        client = Client(self.server, direct_tls=direct_tls)
        self.clients.append(client)
        return client

    async def finish(self, client: Client, events: list[Any]) -> None:
        """The stream stays usable or was closed with a stream error."""
        if client.closed:
            check_stream_end(events, client.stream)
        else:
            got = elements(await client.exchange(PING))
            pongs = [e for e in got if e.get("id") == "final-ping"]
            assert len(pongs) == 1 and pongs[0].get("type") == "result", got

    async def memory_matches_store(self) -> None:
        """What the node keeps in memory for its online accounts (rosters, privacy lists) is
        what Redis holds: every change was written through (DESIGN: durable data is written
        before the client gets its result)."""
        redis = self.server.redis
        for bare in list(self.server.router.local):
            cached = self.server.rosters.cached(bare)
            if cached is not None:
                stored = await RosterStore(redis).load(bare)
                assert (cached.items, cached.version, cached.pending) == (
                    stored.items,
                    stored.version,
                    stored.pending,
                ), f"the roster of {bare} in memory is not the stored one"
            lists = privacy_service(self.server).cache.peek(bare)
            if lists is not None:
                stored_lists = await PrivacyStore(redis).load(bare)
                assert lists.data == stored_lists, f"the privacy lists of {bare} differ"

    async def after(self) -> None:
        """Once every connection went away: no session is left, what is stored for each
        account is readable by its next session, and each stored message is delivered to
        it exactly once (XEP-0160)."""
        await self.cleanup()
        assert not self.server.router.local, "a session outlived its connection"
        redis = self.server.redis
        for user in (USER, "bob"):
            client = await self.login("check", user)
            for query in CHECKS:
                got = elements(await client.exchange(query))
                answers = [e for e in got if e.get("id") == etree.fromstring(query).get("id")]
                assert len(answers) == 1, (query, got)
                assert answers[0].get("type") == "result", short(answers[0])
            bare = f"{user}@{DOMAIN}"
            stored = await redis.llen(keys.offline(bare))
            got = elements(await client.exchange("<presence/>"))
            stamped = [
                e for e in got if e.find(QN_DELAY) is not None and e.tag.endswith("}message")
            ]
            assert len(stamped) == stored, (stored, [short(e) for e in got])
            assert await redis.llen(keys.offline(bare)) == 0
            await client.disconnect()
            await client.settle()


@pytest.fixture
def fuzz(redis_url: str, tmp_path: Path) -> Iterator[C2SFuzz]:
    """A core for the examples of one test."""
    with C2SFuzz(redis_url, tmp_path) as harness:
        yield harness


async def drain(client: Client) -> list[Element]:
    """What the server sent ``client`` in the meantime."""
    await client.settle()
    return elements(client.read())


async def send_stanzas(fuzz: C2SFuzz, texts: list[str], *, company: int = 0) -> None:
    """Send ``texts`` one by one from a logged-in session and check each answer, then the
    stream and what is stored. ``company``: 0 alone, 1 with bob online, 2 also with another
    resource of alice's online."""
    await fuzz.reset()
    others = []
    if company >= 1:
        others.append(await fuzz.online("bob", "r"))
    if company >= 2:
        others.append(await fuzz.online(USER, "other"))
    client = await fuzz.login()
    events: list[Any] = []
    for text in texts:
        events = await client.exchange(text)
        elsewhere = [el for other in others for el in await drain(other)]
        check_answers(parse_sent(text), elements(events), client.closed, elsewhere)
        if client.closed:
            break
    await fuzz.memory_matches_store()
    await fuzz.finish(client, events)
    await fuzz.after()


# -- Properties --------------------------------------------------------------------------


def test_random_stanzas_from_a_session(fuzz: C2SFuzz) -> None:
    """Random stanzas from a bound session, alone or with a contact and another resource
    online: each IQ get/set
    answered once with its id, no error answered, nothing logged as a failure, the stream
    usable or closed with a stream error, stored state readable and stored messages
    delivered once afterwards."""

    @fuzz_settings(120)
    @given(stanzas(stanza()), st.integers(0, 2))
    def check(texts: list[str], company: int) -> None:
        fuzz.run(send_stanzas(fuzz, texts, company=company))

    check()


def test_random_stanzas_with_from_addresses(fuzz: C2SFuzz) -> None:
    """Stanzas with a random 'from': one's own full or bare JID passes, anything else closes
    the stream with invalid-from (RFC 6120 §8.1.2.1), never a failure of the server."""
    frm = st.none() | st.sampled_from([ME, ME_BARE, "ALICE@localhost/res"]) | JID

    @fuzz_settings(60)
    @given(stanzas(stanza(frm=frm), max_size=4))
    def check(texts: list[str]) -> None:
        fuzz.run(send_stanzas(fuzz, texts))

    check()


def test_pipelined_stanzas(fuzz: C2SFuzz) -> None:
    """Stanzas sent in one write are processed in order, each IQ get/set answered exactly
    once unless the stream closed (RFC 6120 §10.1); a client that hangs up right after
    sending them still has them all take effect, and its session ends cleanly."""

    async def body(texts: list[str], hang_up: bool) -> None:
        await fuzz.reset()
        bob = await fuzz.online("bob", "r")
        client = await fuzz.login()
        if hang_up:
            # The connection goes while the stanzas are being processed (c2s LOST_GRACE).
            client.send("".join(texts))
            await client.disconnect()
            await drain(bob)
            await fuzz.after()
            return
        events = await client.exchange("".join(texts))
        got = elements(events)
        elsewhere = await drain(bob)
        for text in texts:
            check_answers(parse_sent(text), got, client.closed, elsewhere)
        await fuzz.memory_matches_store()
        await fuzz.finish(client, events)
        await fuzz.after()

    @fuzz_settings(60)
    @given(stanzas(stanza(), max_size=10, ids=True), st.booleans())
    def check(texts: list[str], hang_up: bool) -> None:
        fuzz.run(body(texts, hang_up))

    check()


# Random bytes and truncated XML, at each stage of the stream.
GARBAGE = st.one_of(
    st.binary(max_size=64),
    TEXT.map(lambda t: t.encode()),
    st.sampled_from(
        [
            b"<",
            b"</iq>",
            b"<iq",
            b"<message><body>x",
            b"<!DOCTYPE x>",
            b"<!-- c -->",
            b"<?pi x?>",
            b"&foo;",
            b"&",
            b"<a:b/>",
            b"<iq a='1' a='2'/>",
            b"\xff\xfe",
            b"\xc3",
            b"<![CDATA[x]]>",
            b"</stream:stream>",
            b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
            b"<presence/><presence",
            b"\x00",
            b"<iq type='get' id='g'><ping xmlns='urn:xmpp:ping'/></iq",
            b"<" + b"a" * 40 + b" " + b"b='c' " * 70 + b"/>",
            b"<x>" * 40,
        ]
    ),
)


async def garbage_at(fuzz: C2SFuzz, stage: str, chunks: list[bytes]) -> None:
    """Send ``chunks`` at ``stage``: the stream closes with a stream error, or a ping sent
    after them is answered, unless they left a stanza half-sent (the rest is the client's to
    send). Either way the server goes on serving new sessions."""
    await fuzz.reset()
    client = fuzz.client()
    if stage == "auth":
        await client.open()
    elif stage == "bound":
        await client.login(USER)
    events: list[Any] = []
    for chunk in chunks:
        events.extend(await client.exchange(chunk))
        if client.closed:
            break
    if stage == "bound" and not client.closed and not client.stream.parser.bytes_in_stanza:
        events.extend(await client.exchange(PING))
        if not client.closed:
            pongs = [e for e in elements(events) if e.get("id") == "final-ping"]
            assert [e.get("type") for e in pongs] == ["result"], events
    if client.closed:
        check_stream_end(events, client.stream)
    await client.disconnect()
    await client.settle()
    assert not fuzz.server.router.local
    other = await fuzz.login("after")
    got = elements(await other.exchange(PING))
    assert [e.get("type") for e in got if e.get("id") == "final-ping"] == ["result"]


def test_random_bytes_and_truncated_xml(fuzz: C2SFuzz) -> None:
    """Random bytes and truncated XML before the header, during authentication and in a
    bound session: a stream error of RFC 6120 §4.9.3 or nothing, never a failure, and the
    server goes on serving new sessions."""

    @fuzz_settings(150)
    @given(st.sampled_from(["header", "auth", "bound"]), st.lists(GARBAGE, min_size=1, max_size=3))
    def check(stage: str, chunks: list[bytes]) -> None:
        fuzz.run(garbage_at(fuzz, stage, chunks))

    check()


def test_log_trap_catches_failures(fuzz: C2SFuzz) -> None:
    """The harness itself: an exception logged during an example fails it."""

    async def fail() -> None:
        logging.getLogger("core.test").exception("boom", exc_info=RuntimeError("x"))

    with pytest.raises(AssertionError, match="boom"):
        fuzz.run(fail())


# -- Negotiation: SASL (RFC 6120 §6) and resource binding (§7) --------------------------

MECHANISMS = st.sampled_from(
    [
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "PLAIN",
        "EXTERNAL",
        "DIGEST-MD5",
        "",
        "scram-sha-256",
        "X" * 100,
    ]
)
SASL_NAMES = mostly(
    st.sampled_from([USER, "bob", "nobody"]),
    st.sampled_from(
        [
            "",
            "=",
            "=2C",
            "al=2Cice",
            "a=3Db",
            "=zz",
            "ALICE",
            "\u212bngstr\u00f6m",
            "x" * 2000,
            "a\u0000b",
        ]
    )
    | TEXT,
)
GS2 = st.sampled_from(
    [
        "n,,",
        "n,,",
        "y,,",
        "p=tls-exporter,,",
        "p=tls-unique,,",
        "p=x,,",
        "n,a=alice@localhost,",
        "n,a=bob@localhost,",
        "",
        "x,,",
        "n,",
        "n,a=,",
        "n,,,",
    ]
)


@st.composite
def client_first(draw: st.DrawFn) -> bytes:
    """A SCRAM client-first-message (RFC 5802 §7), mostly well-formed."""
    nonce = draw(mostly(st.sampled_from(["abc", "fyko+d2lbbFgONRv9qkxdawL"]), TEXT))
    bare = f"n={draw(SASL_NAMES)},r={nonce}"
    if draw(st.integers(0, 5)) == 0:
        bare = draw(st.sampled_from(["m=ext," + bare, bare + ",x=1", "r=abc,n=alice", "n=alice"]))
    return (draw(GS2) + bare).encode(errors="surrogatepass")


@st.composite
def sasl_data(draw: st.DrawFn, mechanism: str) -> str | None:
    """The text of an <auth/> or <response/>: base64 of a message fit for ``mechanism``,
    or of random bytes, or '=', or nothing, or text that is not base64 (§6.4.2, §6.5.5)."""
    kind = draw(weighted((5, st.just("fit")), (1, st.just("bytes")), (1, st.just("odd"))))
    if kind == "odd":
        return draw(st.sampled_from([None, "=", "!!!", "YQ", "YQ==YQ==", " \n", "==="]) | TEXT)
    if kind == "bytes":
        data = draw(st.binary(max_size=64))
    elif mechanism.startswith("SCRAM"):
        data = draw(client_first())
    elif mechanism == "PLAIN":
        authz = draw(st.sampled_from(["", "", "alice@localhost", "bob@localhost", "x"]))
        data = f"{authz}\0{draw(SASL_NAMES)}\0{draw(st.sampled_from([PASSWORD, 'wrong', '']))}"
        data = data.encode(errors="surrogatepass")
    else:
        data = draw(st.sampled_from([b"", b"alice@localhost", b"\xff"]))
    return base64.b64encode(data).decode() or "="


@st.composite
def client_final(draw: st.DrawFn) -> str:
    """A SCRAM client-final-message (RFC 5802 §7) of random parts."""
    parts = [
        f"c={draw(st.sampled_from(['biws', 'eSws', 'cD10bHMtZXhwb3J0ZXIsLA==', '!', '']))}",
        f"r={draw(st.sampled_from(['abc', '']) | TEXT)}",
        f"p={draw(st.sampled_from(['dHpiV3RkCg==', '', '!!', 'AAAA']))}",
    ]
    if draw(st.integers(0, 4)) == 0:
        parts = draw(st.permutations(parts))
    text = ",".join(parts)
    return base64.b64encode(text.encode(errors="surrogatepass")).decode()


@st.composite
def negotiation_steps(draw: st.DrawFn) -> list[tuple[str, str | None]]:
    """A few SASL elements: auth with a mechanism and data, responses, aborts."""
    steps: list[tuple[str, str | None]] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["auth", "auth", "response", "abort", "valid"]))
        if kind == "auth":
            mechanism = draw(MECHANISMS)
            steps.append((f"auth:{mechanism}", draw(sasl_data(mechanism))))
        elif kind == "response":
            steps.append(("response", draw(client_final() | sasl_data("SCRAM-SHA-256"))))
        else:
            steps.append((kind, None))
    return steps


@st.composite
def bind_requests(draw: st.DrawFn) -> list[str]:
    """IQs to a stream waiting for resource binding (RFC 6120 §7): mostly binds, with
    resources valid, empty, too long or not PRECIS-clean; sometimes other stanzas."""
    out = []
    for n in range(draw(st.integers(1, 3))):
        resource = draw(
            mostly(
                st.sampled_from(["res", "\U0001f600", "a b", "x" * 1023]),
                st.sampled_from(["", " ", "x" * 1024, "\u202e", "\u0000"]) | TEXT,
            )
        )
        kind = draw(st.sampled_from(["bind", "bind", "bind", "two", "none", "get", "other"]))
        res = "" if "\u0000" in resource else f"<resource>{escape(resource)}</resource>"
        payload = {
            "bind": f"<bind xmlns='{NS_BIND}'>{res}</bind>",
            "two": f"<bind xmlns='{NS_BIND}'>{res}{res}</bind>",
            "none": "",
            "get": f"<bind xmlns='{NS_BIND}'/>",
            "other": f"<ping xmlns='{NS_PING}'/>",
        }[kind]
        itype = "get" if kind == "get" else "set"
        out.append(f"<iq type='{itype}' id='b{n}'>{payload}</iq>")
    return out


async def negotiate(
    fuzz: C2SFuzz, direct_tls: bool, steps: list[tuple[str, str | None]], binds: list[str]
) -> None:
    """Run ``steps`` on a new stream (TLS from the first byte or none), then, once
    authenticated, ``binds``: every SASL element is answered by a challenge, success or
    failure (§6.4) or the stream closes with a stream error; every bind IQ gets one answer
    until one binds; nothing is logged as a failure; new sessions are still served."""
    await fuzz.reset()
    client = fuzz.client(direct_tls=direct_tls)
    await client.open()
    events: list[Any] = []
    authed = False
    for kind, data in steps:
        if kind == "valid":
            got = await client.scram(USER)
            events = [got]
        elif kind == "abort":
            events = await client.exchange(f"<abort xmlns='{NS_SASL}'/>")
        else:
            name, _, mechanism = kind.partition(":")
            attrs = f" mechanism='{escape(mechanism)}'" if name == "auth" else ""
            text = escape(data) if data is not None else ""
            events = await client.exchange(f"<{name} xmlns='{NS_SASL}'{attrs}>{text}</{name}>")
        answers = [e for e in events if isinstance(e, etree._Element)]
        if client.closed:
            check_stream_end(events, client.stream)
            break
        names = [etree.QName(e).localname for e in answers]
        assert len(names) == 1 and names[0] in ("challenge", "success", "failure"), names
        if names[0] == "success":
            authed = True
            break
    if authed and not client.closed:
        client.parser.reset()
        await client.open()
        for request in binds:
            events = await client.exchange(request)
            if client.closed:
                check_stream_end(events, client.stream)
                break
            answers = [e for e in elements(events) if e.get("id") == parse_sent(request).get("id")]
            assert len(answers) == 1 and answers[0].get("type") in ("result", "error"), events
            if answers[0].get("type") == "result":
                break
    await fuzz.cleanup()
    other = await fuzz.login("after")
    got = elements(await other.exchange(PING))
    assert [e.get("type") for e in got if e.get("id") == "final-ping"] == ["result"]


def test_random_negotiation(fuzz: C2SFuzz) -> None:
    """Random SASL exchanges (mechanisms, GS2 headers, SCRAM messages, PLAIN, base64 or not)
    and resource binding requests, on plain and TLS streams: answered per RFC 6120 §6-§7 or
    closed with a stream error, never a failure of the server."""

    @fuzz_settings(100)
    @given(st.booleans(), negotiation_steps(), bind_requests())
    def check(direct_tls: bool, steps: list[tuple[str, str | None]], binds: list[str]) -> None:
        fuzz.run(negotiate(fuzz, direct_tls, steps, binds))

    check()


# -- Regressions found while building the properties above ------------------------------


def test_deleted_account_leaves_no_cached_lists(fuzz: C2SFuzz) -> None:
    """A node keeps the privacy lists of recently seen accounts in memory; deleting the
    account (``switchboard user del``, another process) drops that copy, so an account made
    again under the same name starts with no blocklist."""
    item = "<item jid='eve@localhost'/>"
    block = f"<iq type='set' id='b1'><block xmlns='{NS_BLOCKING}'>{item}</block></iq>"
    get = f"<iq type='get' id='b2'><blocklist xmlns='{NS_BLOCKING}'/></iq>"

    async def body() -> None:
        await fuzz.reset()
        cache = privacy_service(fuzz.server).cache
        await cache.wait_subscribed()
        client = await fuzz.login()
        (answer,) = [e for e in elements(await client.exchange(block)) if e.get("id") == "b1"]
        assert answer.get("type") == "result"
        await fuzz.cleanup()
        assert cache.peek(ME_BARE) is not None  # kept as a recently used copy
        assert await fuzz.server.accounts.delete(USER, DOMAIN)
        await until(lambda: cache.peek(ME_BARE) is None, timeout=2.0)
        await add_account(fuzz.server, USER)
        client = await fuzz.login()
        (answer,) = [e for e in elements(await client.exchange(get)) if e.get("id") == "b2"]
        assert answer.get("type") == "result"
        assert answer.find(f"{{{NS_BLOCKING}}}blocklist/{{{NS_BLOCKING}}}item") is None

    fuzz.run(body())
