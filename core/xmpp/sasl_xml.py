"""SASL negotiation elements on the wire (RFC 6120 §6.4, XEP-0440).

The mechanisms themselves are in core.xmpp.sasl; this module builds and reads the
``urn:ietf:params:xml:ns:xmpp-sasl`` elements that carry them, for any stream that
negotiates SASL.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from lxml import etree

from core.xmpp.ns import NS_SASL, default_ns, qn
from core.xmpp.sasl import SaslFailure

Element = etree._Element

# XEP-0440: the channel-binding types a stream supports, announced next to the mechanisms.
NS_SASL_CB = "urn:xmpp:sasl-cb:0"


def sasl_element(local: str, data: bytes | None = None, *, empty_as_equals: bool = True) -> Element:
    """``<local xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>`` carrying ``data`` in base64.

    RFC 6120 §6.4.2: zero-length data is sent as a single '='; ``empty_as_equals=False``
    leaves the element empty instead (an empty ``<success/>``, §6.4.6)."""
    el = etree.Element(qn(NS_SASL, local), nsmap=default_ns(NS_SASL))
    if data is not None:
        el.text = base64.b64encode(data).decode() if data else ("=" if empty_as_equals else None)
    return el


def failure(condition: str, text: str | None = None) -> bytes:
    """A ``<failure/>`` with its condition and optional text (RFC 6120 §6.4.5, §6.5)."""
    el = sasl_element("failure")
    etree.SubElement(el, qn(NS_SASL, condition))
    if text:
        etree.SubElement(el, qn(NS_SASL, "text")).text = text
    return etree.tostring(el)


def decode(el: Element) -> bytes | None:
    """The data of an ``<auth/>`` or ``<response/>``: None when there is none, b"" for '='
    (RFC 6120 §6.4.2); data that is not base64 is ``incorrect-encoding`` (§6.5.5)."""
    text = (el.text or "").strip()
    if not text:
        return None
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SaslFailure("incorrect-encoding", "the data is not base64") from None


def add_mechanisms(
    features: Element, names: Iterable[str], channel_bindings: Iterable[str] = ()
) -> None:
    """Append the ``<mechanisms/>`` feature (RFC 6120 §6.4.1) to ``features`` and, when the
    stream has any, the channel-binding types it supports (XEP-0440 §3)."""
    mechs = etree.SubElement(features, qn(NS_SASL, "mechanisms"), nsmap=default_ns(NS_SASL))
    for name in names:
        etree.SubElement(mechs, qn(NS_SASL, "mechanism")).text = name
    cb_types = list(channel_bindings)
    if cb_types:
        cbs = etree.SubElement(
            features, qn(NS_SASL_CB, "sasl-channel-binding"), nsmap=default_ns(NS_SASL_CB)
        )
        for cb_type in cb_types:
            etree.SubElement(cbs, qn(NS_SASL_CB, "channel-binding")).set("type", cb_type)
