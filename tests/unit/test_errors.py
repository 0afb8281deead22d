"""Stream and stanza errors (RFC 6120 §4.9, §8.3): the condition tables and the XML."""

from __future__ import annotations

import pytest
from lxml import etree

from core.xmpp.errors import (
    ERROR_TYPES,
    STANZA_CONDITIONS,
    STREAM_CONDITIONS,
    StanzaError,
    StreamError,
)
from core.xmpp.ns import NS_CLIENT, NS_SERVER, NS_STANZAS, NS_STREAM_ERRORS, NS_STREAMS
from tests.unit.helpers import assert_xml, xml

# RFC 6120 §4.9.3.1-§4.9.3.25, in the order of the RFC.
RFC_STREAM_CONDITIONS = [
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
]

# RFC 6120 §8.3.3.1-§8.3.3.22 with the error type each section gives.
RFC_STANZA_CONDITIONS = {
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


def test_stream_conditions_are_those_of_the_rfc() -> None:
    """Every §4.9.3 condition is known, and nothing else."""
    assert sorted(STREAM_CONDITIONS) == RFC_STREAM_CONDITIONS


def test_stanza_conditions_and_types_are_those_of_the_rfc() -> None:
    """Every §8.3.3 condition is known with its type, and nothing else."""
    assert STANZA_CONDITIONS == RFC_STANZA_CONDITIONS
    assert ERROR_TYPES == {"auth", "cancel", "continue", "modify", "wait"}


@pytest.mark.parametrize("condition", RFC_STREAM_CONDITIONS)
def test_stream_error_element(condition: str) -> None:
    """§4.9.2: <stream:error> holds the condition in the streams-errors namespace."""
    el = StreamError(condition).to_element()
    assert_xml(
        el,
        f"<stream:error xmlns:stream='{NS_STREAMS}'>"
        f"<{condition} xmlns='{NS_STREAM_ERRORS}'/></stream:error>",
    )
    assert el.prefix == "stream"


def test_stream_error_with_text_and_bytes() -> None:
    """The optional <text/> follows the condition; the bytes carry the 'stream' prefix."""
    err = StreamError("host-unknown", "this server serves localhost")
    assert str(err) == "host-unknown: this server serves localhost"
    data = err.to_bytes()
    assert data.startswith(b"<stream:error xmlns:stream=")
    assert_xml(
        xml(data),
        f"""<stream:error xmlns:stream='{NS_STREAMS}'>
              <host-unknown xmlns='{NS_STREAM_ERRORS}'/>
              <text xmlns='{NS_STREAM_ERRORS}'>this server serves localhost</text>
            </stream:error>""",
    )


def test_see_other_host_names_the_host() -> None:
    """§4.9.3.19: <see-other-host/> carries the other host as its text."""
    el = StreamError("see-other-host", other_host="[2001:db8::1]:5222").to_element()
    assert el[0].text == "[2001:db8::1]:5222"


def test_unknown_stream_condition_is_refused() -> None:
    """A condition outside §4.9.3 is a programming error."""
    with pytest.raises(ValueError):
        StreamError("no-such-condition")


@pytest.mark.parametrize(("condition", "etype"), sorted(RFC_STANZA_CONDITIONS.items()))
def test_stanza_error_element(condition: str, etype: str) -> None:
    """§8.3.2: <error type=...> with the condition in the stanzas namespace."""
    err = StanzaError(condition)
    assert err.type == etype
    assert_xml(
        err.to_element(NS_CLIENT),
        f"<error xmlns='{NS_CLIENT}' type='{etype}'><{condition} xmlns='{NS_STANZAS}'/></error>",
    )


def test_stanza_error_full_shape() -> None:
    """'by', the condition, <text/> and an application condition, in that order; the error
    element takes the content namespace of its stream."""
    app = etree.Element(
        "{urn:xmpp:blocking:errors}blocked", nsmap={None: "urn:xmpp:blocking:errors"}
    )
    err = StanzaError("not-acceptable", "blocked", type="cancel", app_condition=app, by="localhost")
    assert_xml(
        err.to_element(NS_SERVER),
        f"""<error xmlns='{NS_SERVER}' type='cancel' by='localhost'>
              <not-acceptable xmlns='{NS_STANZAS}'/>
              <text xmlns='{NS_STANZAS}'>blocked</text>
              <blocked xmlns='urn:xmpp:blocking:errors'/>
            </error>""",
    )


def test_stanza_error_refuses_unknown_condition_and_type() -> None:
    """Conditions and types outside §8.3 are programming errors."""
    with pytest.raises(ValueError):
        StanzaError("no-such-condition")
    with pytest.raises(ValueError):
        StanzaError("bad-request", type="later")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            f"<error xmlns='{NS_CLIENT}' type='wait'><resource-constraint xmlns='{NS_STANZAS}'/>"
            f"<text xmlns='{NS_STANZAS}'>busy</text></error>",
            ("resource-constraint", "busy", "wait"),
        ),
        (
            f"<error xmlns='{NS_CLIENT}' type='bogus'><conflict xmlns='{NS_STANZAS}'/></error>",
            ("conflict", None, "cancel"),
        ),
        (
            f"<error xmlns='{NS_CLIENT}'><made-up xmlns='{NS_STANZAS}'/>"
            "<x xmlns='urn:app'/></error>",
            ("undefined-condition", None, "cancel"),
        ),
    ],
    ids=["known", "bad-type", "unknown-condition"],
)
def test_stanza_error_from_element(error: str, expected: tuple[str, str | None, str]) -> None:
    """Reading an <error/>: unknown conditions read as undefined-condition, an unknown type
    as the condition's own type."""
    err = StanzaError.from_element(xml(error))
    assert (err.condition, err.text, err.type) == expected
