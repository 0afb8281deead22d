"""Server Dialback (XEP-0220) with keys generated as XEP-0185 recommends.

Pure functions and small data classes, no server state: the dialback key, the
``<db:result/>`` and ``<db:verify/>`` elements in both directions, and the stream feature that
announces dialback error handling (XEP-0220 §2.4.2).

Key (XEP-0185 §2)::

    key = hex( HMAC-SHA256( hex(SHA256(secret)), "<receiving> <originating> <stream id>" ) )
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from lxml import etree

from core.xmpp.errors import STANZA_CONDITIONS, StanzaError
from core.xmpp.ns import NS_DIALBACK, NS_SERVER, NS_STANZAS, qn

Element = etree._Element

NS_DIALBACK_FEATURE = "urn:xmpp:features:dialback"
QN_DB_RESULT = qn(NS_DIALBACK, "result")
QN_DB_VERIFY = qn(NS_DIALBACK, "verify")
QN_DIALBACK_FEATURE = qn(NS_DIALBACK_FEATURE, "dialback")

RESULT_TYPES = frozenset({"valid", "invalid", "error"})
# A key is 64 hex digits; anything much longer is not a key (and must not be hashed at length).
MAX_KEY_LENGTH = 1024


def new_secret() -> str:
    """A fresh random secret (XEP-0185 §2 note 3: configured, or random at start)."""
    return secrets.token_hex(32)


def generate_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """The dialback key for a stream from ``originating`` to ``receiving`` (XEP-0185 §2).

    The HMAC key is the hex digest of SHA-256(secret), as in the XEP's worked example; the
    three inputs are joined by single spaces to keep the concatenation unambiguous."""
    hmac_key = hashlib.sha256(secret.encode()).hexdigest().encode()
    message = f"{receiving} {originating} {stream_id}".encode()
    return hmac.new(hmac_key, message, hashlib.sha256).hexdigest()


def check_key(secret: str, receiving: str, originating: str, stream_id: str, key: str) -> bool:
    """Whether ``key`` is the one we generated for this stream (constant-time comparison)."""
    if not key or len(key) > MAX_KEY_LENGTH:
        return False
    expected = generate_key(secret, receiving, originating, stream_id)
    return hmac.compare_digest(expected.encode(), key.strip().lower().encode())


@dataclass(slots=True)
class Dialback:
    """A ``<db:result/>`` or ``<db:verify/>`` element, read once at the edge."""

    kind: str  # "result" or "verify"
    frm: str
    to: str
    id: str | None = None
    type: str | None = None  # None for a request; valid, invalid or error for an answer
    key: str = ""
    condition: str | None = None  # the stanza error condition of a type='error' answer

    @classmethod
    def from_element(cls, el: Element) -> Dialback:
        """Parse a dialback element; ValueError when it lacks what XEP-0220 §6 requires."""
        if el.tag == QN_DB_RESULT:
            kind = "result"
        elif el.tag == QN_DB_VERIFY:
            kind = "verify"
        else:
            raise ValueError("not a dialback element")
        frm, to = el.get("from"), el.get("to")
        if not frm or not to:
            raise ValueError(f"db:{kind} needs 'from' and 'to'")
        sid = el.get("id")
        if kind == "verify" and not sid:
            raise ValueError("db:verify needs an 'id'")
        dtype = el.get("type")
        if dtype is not None and dtype not in RESULT_TYPES:
            raise ValueError(f"unknown db:{kind} type {dtype!r}")
        condition = None
        if dtype == "error":
            condition = "undefined-condition"
            err = el.find(qn(NS_SERVER, "error"))
            if err is not None:
                condition = StanzaError.from_element(err).condition
        key = (el.text or "").strip() if dtype is None else ""
        return cls(kind, frm, to, sid, dtype, key, condition)

    def to_element(self) -> Element:
        return _element(self.kind, self.frm, self.to, self.id, self.type, self.key, self.condition)


def result(
    frm: str, to: str, *, key: str = "", type: str | None = None, condition: str | None = None
) -> Element:
    """``<db:result/>``: a key (request, XEP-0220 §2.1.1) or an answer (valid/invalid/error)."""
    return _element("result", frm, to, None, type, key, condition)


def verify(
    frm: str,
    to: str,
    id: str,
    *,
    key: str = "",
    type: str | None = None,
    condition: str | None = None,
) -> Element:
    """``<db:verify/>``: a verification request (§2.1.2) or its answer (§2.2.2)."""
    return _element("verify", frm, to, id, type, key, condition)


def _element(
    kind: str,
    frm: str,
    to: str,
    sid: str | None,
    dtype: str | None,
    key: str,
    condition: str | None,
) -> Element:
    # XEP-0220 §2: the 'db' prefix, which some deployments insist on.
    el = etree.Element(qn(NS_DIALBACK, kind), nsmap={"db": NS_DIALBACK})
    el.set("from", frm)
    el.set("to", to)
    if sid is not None:
        el.set("id", sid)
    if dtype is not None:
        if dtype not in RESULT_TYPES:
            raise ValueError(f"unknown dialback type {dtype!r}")
        el.set("type", dtype)
    if dtype == "error":
        cond = condition if condition in STANZA_CONDITIONS else "undefined-condition"
        # §2.4: the <error/> child is in the stream's content namespace, jabber:server.
        default = {None: NS_SERVER}
        err = etree.SubElement(el, qn(NS_SERVER, "error"), nsmap=default)  # type: ignore[arg-type]
        err.set("type", STANZA_CONDITIONS[cond])
        etree.SubElement(err, qn(NS_STANZAS, cond), nsmap={None: NS_STANZAS})  # type: ignore[dict-item]
    elif dtype is None and key:
        el.text = key
    return el


def feature() -> Element:
    """The stream feature that announces dialback with error handling (XEP-0220 §2.4.2)."""
    el = etree.Element(QN_DIALBACK_FEATURE, nsmap={None: NS_DIALBACK_FEATURE})  # type: ignore[dict-item]
    etree.SubElement(el, qn(NS_DIALBACK_FEATURE, "errors"))
    return el


def to_bytes(el: Element) -> bytes:
    return etree.tostring(el, encoding="utf-8", xml_declaration=False, with_tail=False)
