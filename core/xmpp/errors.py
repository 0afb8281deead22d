"""Stream and stanza errors of RFC 6120 §4.9 and §8.3, with their condition tables."""

from __future__ import annotations

from lxml import etree

from core.xmpp.ns import (
    NS_STANZAS,
    NS_STREAM_ERRORS,
    NS_STREAMS,
    QN_STREAM_ERROR,
    default_ns,
    qn,
)

# RFC 6120 §4.9.3: every defined stream error condition.
STREAM_CONDITIONS = frozenset(
    {
        "bad-format",
        "bad-namespace-prefix",
        "conflict",
        "connection-timeout",
        "host-gone",
        "host-unknown",
        "improper-addressing",
        "internal-server-error",
        "invalid-from",
        "invalid-namespace",
        "invalid-xml",
        "not-authorized",
        "not-well-formed",
        "policy-violation",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "restricted-xml",
        "see-other-host",
        "system-shutdown",
        "undefined-condition",
        "unsupported-encoding",
        "unsupported-feature",
        "unsupported-stanza-type",
        "unsupported-version",
    }
)

# RFC 6120 §8.3.3: each stanza error condition with the error type the RFC gives it.
STANZA_CONDITIONS: dict[str, str] = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}

ERROR_TYPES = frozenset({"auth", "cancel", "continue", "modify", "wait"})


class StreamError(Exception):
    """A stream-level error: sent as ``<stream:error/>``, after which the stream closes."""

    def __init__(self, condition: str, text: str | None = None, *, other_host: str | None = None):
        if condition not in STREAM_CONDITIONS:
            raise ValueError(f"unknown stream error condition {condition!r}")
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text
        self.other_host = other_host

    def to_element(self) -> etree._Element:
        el = etree.Element(QN_STREAM_ERROR, nsmap={"stream": NS_STREAMS})
        cond = etree.SubElement(
            el, qn(NS_STREAM_ERRORS, self.condition), nsmap=default_ns(NS_STREAM_ERRORS)
        )
        if self.other_host is not None:
            cond.text = self.other_host
        if self.text:
            t = etree.SubElement(
                el, qn(NS_STREAM_ERRORS, "text"), nsmap=default_ns(NS_STREAM_ERRORS)
            )
            t.text = self.text
        return el

    def to_bytes(self) -> bytes:
        """The ``<stream:error>`` element with the ``stream`` prefix as on the wire."""
        return etree.tostring(self.to_element())


class StanzaError(Exception):
    """A stanza-level error: the handler raises it, the dispatcher turns it into a reply."""

    def __init__(
        self,
        condition: str,
        text: str | None = None,
        *,
        type: str | None = None,
        app_condition: etree._Element | None = None,
        by: str | None = None,
    ):
        if condition not in STANZA_CONDITIONS:
            raise ValueError(f"unknown stanza error condition {condition!r}")
        if type is not None and type not in ERROR_TYPES:
            raise ValueError(f"unknown stanza error type {type!r}")
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text
        self.type = type or STANZA_CONDITIONS[condition]
        self.app_condition = app_condition
        self.by = by

    def to_element(self, ns: str) -> etree._Element:
        """The ``<error/>`` child for a stanza in the content namespace ``ns``."""
        el = etree.Element(qn(ns, "error"), nsmap=default_ns(ns))
        el.set("type", self.type)
        if self.by:
            el.set("by", self.by)
        etree.SubElement(el, qn(NS_STANZAS, self.condition), nsmap=default_ns(NS_STANZAS))
        if self.text:
            t = etree.SubElement(el, qn(NS_STANZAS, "text"), nsmap=default_ns(NS_STANZAS))
            t.text = self.text
        if self.app_condition is not None:
            el.append(self.app_condition)
        return el

    @classmethod
    def from_element(cls, error: etree._Element) -> StanzaError:
        """Read the ``<error/>`` child of a stanza; unknown conditions read as undefined."""
        condition = "undefined-condition"
        text = None
        for child in error:
            if not isinstance(child.tag, str):
                continue
            ns, _, local = child.tag[1:].partition("}")
            if ns != NS_STANZAS:
                continue
            if local == "text":
                text = child.text
            elif local in STANZA_CONDITIONS:
                condition = local
        etype = error.get("type")
        return cls(condition, text, type=etype if etype in ERROR_TYPES else None)
