"""Stanza helpers on plain lxml elements (RFC 6120 §8).

Inside Switchboard every stanza is an lxml element in the ``jabber:client`` namespace, whatever
stream it arrived on; the stream that sends it renames the namespace on the way out.
"""

from __future__ import annotations

import copy
import secrets
from typing import cast

from lxml import etree

from core.xmpp.errors import StanzaError
from core.xmpp.ns import NS_CLIENT, QN_IQ, QN_MESSAGE, QN_PRESENCE, default_ns, qn

Element = etree._Element

STANZA_KINDS = {QN_MESSAGE: "message", QN_PRESENCE: "presence", QN_IQ: "iq"}
_CLIENT_PREFIX = f"{{{NS_CLIENT}}}"
_CLIENT_DECL = f'xmlns="{NS_CLIENT}"'
_CLIENT_DECL_ATTR = " " + _CLIENT_DECL
_CLIENT_NSMAP = default_ns(NS_CLIENT)

MESSAGE_TYPES = frozenset({"normal", "chat", "groupchat", "headline", "error"})
PRESENCE_TYPES = frozenset(
    {"unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe", "error"}
)
IQ_TYPES = frozenset({"get", "set", "result", "error"})


def new_id() -> str:
    """An unpredictable identifier for stanzas and streams (RFC 6120 §4.7.3)."""
    return secrets.token_urlsafe(12)


def kind_of(stanza: Element) -> str | None:
    """'message', 'presence' or 'iq' for a stanza in the client namespace, else None."""
    return STANZA_KINDS.get(stanza.tag)


def make(
    kind: str,
    *,
    to: str | None = None,
    frm: str | None = None,
    type: str | None = None,
    id: str | None = None,
) -> Element:
    """A new stanza of ``kind`` in the client namespace with the given attributes."""
    el = etree.Element(_CLIENT_PREFIX + kind, nsmap=_CLIENT_NSMAP)
    if to is not None:
        el.set("to", to)
    if frm is not None:
        el.set("from", frm)
    if type is not None:
        el.set("type", type)
    if id is not None:
        el.set("id", id)
    return el


def child(parent: Element, local: str, ns: str = NS_CLIENT, text: str | None = None) -> Element:
    """Append a child element ``{ns}local`` with optional text and return it."""
    el = etree.SubElement(parent, qn(ns, local), nsmap=None if ns == NS_CLIENT else default_ns(ns))
    if text is not None:
        el.text = text
    return el


def payload_of(iq: Element) -> Element | None:
    """The single payload child of an IQ get/set; None when it has zero or several (§8.2.3)."""
    found = None
    for c in iq:
        if not isinstance(c.tag, str):
            continue
        if found is not None:
            return None
        found = c
    return found


def iq_result(iq: Element, payload: Element | None = None) -> Element:
    """The result reply to ``iq``: swapped addresses, same id, optional payload (§8.2.3)."""
    reply = make("iq", type="result", id=iq.get("id"), to=iq.get("from"), frm=iq.get("to"))
    if payload is not None:
        reply.append(payload)
    return reply


def error_reply(stanza: Element, error: StanzaError, *, frm: str | None = None) -> Element | None:
    """The error reply to ``stanza`` (RFC 6120 §8.3.1), or None for a stanza that must not be
    answered with an error: an error, or an IQ result."""
    stype = stanza.get("type")
    if stype == "error" or (stanza.tag == QN_IQ and stype == "result"):
        return None
    reply = etree.Element(stanza.tag, nsmap=_CLIENT_NSMAP)
    for name in ("id",):
        v = stanza.get(name)
        if v is not None:
            reply.set(name, v)
    to = stanza.get("from")
    if to is not None:
        reply.set("to", to)
    src = frm if frm is not None else stanza.get("to")
    if src is not None:
        reply.set("from", src)
    reply.set("type", "error")
    # §8.3.1: the error stanza MAY include the original payload; for messages we keep the body
    # and thread so the sender can tell which message failed, for IQs we keep the payload.
    if stanza.tag == QN_IQ:
        p = payload_of(stanza)
        if p is not None:
            reply.append(_copy(p))
    elif stanza.tag == QN_MESSAGE:
        for c in stanza:
            if c.tag in (_CLIENT_PREFIX + "body", _CLIENT_PREFIX + "thread"):
                reply.append(_copy(c))
    reply.append(error.to_element(NS_CLIENT))
    return reply


def _copy(el: Element) -> Element:
    return copy.deepcopy(el)


def serialize(stanza: Element, content_ns: str = NS_CLIENT) -> bytes:
    """The bytes of ``stanza`` for a stream whose content namespace is ``content_ns``.

    Children in the client namespace inherit the default namespace declared on the stanza.
    For a jabber:server or jabber:component:accept stream that declaration is left out, so
    that the stanza and those children inherit the stream's default namespace instead
    (RFC 6120 §4.8.3): what every peer writes, and what the receiving parser reads as
    jabber:client with no copy (``StreamParser(content_ns_map=...)``)."""
    # Serialised to str, then encoded as UTF-8: the same bytes as encoding="utf-8" (the
    # default, ASCII, would write non-ASCII names as character references), a fifth faster
    # through lxml. The text that followed the element in a tree it came from is not part of
    # the stanza.
    text = etree.tostring(stanza, encoding=str, with_tail=False)
    if (stanza.prefix is not None or text.count(NS_CLIENT) != 1) and stanza.tag.startswith(
        _CLIENT_PREFIX
    ):
        # §4.8.5: no prefix on elements of the content namespace. The sender may have written
        # one, or declared jabber:client again on a child, which the renaming below would
        # leave behind in jabber:client: rebuilt with default declarations only.
        rebuilt = _unprefixed(stanza, None, None)
        text = etree.tostring(rebuilt, encoding=str, with_tail=False)
    if content_ns != NS_CLIENT:
        if stanza.tag.startswith(_CLIENT_PREFIX):
            # The stanza's own declaration comes first, and is the only one (above).
            text = text.replace(_CLIENT_DECL_ATTR, "", 1)
        else:
            text = text.replace(_CLIENT_DECL, f'xmlns="{content_ns}"', 1)
    return text.encode()


def _unprefixed(el: Element, parent: Element | None, default: str | None) -> Element:
    """A copy of ``el`` whose elements all name their namespace as the default one, declared
    where it changes (not a deep copy: lxml would keep the copied elements bound to
    declarations of the original tree that the copy no longer has)."""
    ns = etree.QName(el).namespace
    nsmap = None if ns == default else default_ns(ns or "")
    attrib = cast("dict[str, str]", el.attrib)
    if parent is None:
        new = etree.Element(el.tag, attrib, nsmap=nsmap)
    else:
        new = etree.SubElement(parent, el.tag, attrib, nsmap=nsmap)
        new.tail = el.tail
    new.text = el.text
    for c in el:
        if isinstance(c.tag, str):
            _unprefixed(c, new, ns)
    return new


def to_client_ns(stanza: Element, content_ns: str) -> Element:
    """Move a stanza received on a jabber:server or jabber:component:accept stream into the
    client namespace used inside Switchboard.

    Those streams are parsed with the content namespace read as jabber:client
    (``StreamParser(content_ns_map=...)``), so their stanzas normally arrive in it already and
    are returned as they are. What the peer qualified with ``content_ns`` itself, on the stanza
    or on an element inside it (legal, RFC 6120 §4.8.3), is moved here: a rebuilt copy, in
    which foreign payloads are kept as they are."""
    if content_ns == NS_CLIENT:
        return stanza
    prefix = f"{{{content_ns}}}"
    tag = stanza.tag
    if not tag.startswith(prefix):
        if not tag.startswith(_CLIENT_PREFIX):
            return stanza  # not a stanza of either namespace: the caller refuses it
        # One walk in C over the elements, no copy, when nothing is in content_ns.
        if next(stanza.iter(prefix + "*"), None) is None:
            return stanza
    return _rename(stanza, prefix, None)


def _rename(el: Element, prefix: str, parent: Element | None) -> Element:
    """A copy of ``el`` with its elements in ``prefix``'s namespace or in jabber:client moved
    to jabber:client, as far as they are reached through such elements."""
    tag = el.tag
    local = tag[tag.index("}") + 1 :]
    # lxml copies attributes from any mapping, its own _Attrib included; lxml-stubs accept
    # only a dict there.
    attrib = cast("dict[str, str]", el.attrib)
    if parent is None:
        new = etree.Element(_CLIENT_PREFIX + local, attrib, nsmap=_CLIENT_NSMAP)
    else:
        new = etree.SubElement(parent, _CLIENT_PREFIX + local, attrib)
    new.text = el.text
    new.tail = el.tail if parent is not None else None
    for c in el:
        ctag = c.tag
        if isinstance(ctag, str) and (ctag.startswith(prefix) or ctag.startswith(_CLIENT_PREFIX)):
            _rename(c, prefix, new)
        elif isinstance(ctag, str):
            new.append(copy.deepcopy(c))
    return new
