"""Tests for core.xmpp.jid: JIDs of RFC 7622."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.xmpp import jid as jid_module
from core.xmpp.jid import (
    JID,
    JIDError,
    parse_jid,
    prep_domain,
    prep_local,
    prep_resource,
)

# -- valid forms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "local", "domain", "resource"),
    [
        ("example.com", None, "example.com", None),
        ("alice@example.com", "alice", "example.com", None),
        ("alice@example.com/phone", "alice", "example.com", "phone"),
        ("example.com/res", None, "example.com", "res"),
        ("localhost", None, "localhost", None),
        ("a@b", "a", "b", None),
        ("muc.example.com/room@x/y", None, "muc.example.com", "room@x/y"),
        ("alice@example.com/a/b@c", "alice", "example.com", "a/b@c"),
        ("a-b.c_d+e!x@sub-1.example.org", "a-b.c_d+e!x", "sub-1.example.org", None),
        ("juliet@example.com/ foo bar ", "juliet", "example.com", " foo bar "),
        ("x@example.com/ ", "x", "example.com", " "),
        ("x@127.0.0.1", "x", "127.0.0.1", None),
        ("x@[::1]/r", "x", "[::1]", "r"),
        ("123.example.com", None, "123.example.com", None),
        ("\u65e5\u672c@\u4f8b\u3048.jp/\u30ea\u30bd\u30fc\u30b9", "日本", "例え.jp", "リソース"),
    ],
)
def test_parse_valid(text: str, local: str | None, domain: str, resource: str | None) -> None:
    """Valid JIDs split into the expected parts (RFC 7622 §3.1)."""
    assert JID.parse(text) == JID(local, domain, resource)


def test_split_resource_at_first_slash() -> None:
    """A '/' before any '@' makes everything after it the resourcepart (RFC 7622 §3.1)."""
    assert JID.parse("example.com/a@b") == JID(None, "example.com", "a@b")


def test_parse_jid_is_cached() -> None:
    """parse_jid returns the same object for repeated text and equals JID.parse."""
    first = parse_jid("Cached@Example.com/R")
    assert parse_jid("Cached@Example.com/R") is first
    assert first == JID.parse("Cached@Example.com/R")


def test_jid_is_frozen_and_hashable() -> None:
    """JIDs are immutable values usable as dict keys."""
    j = JID.parse("a@b/c")
    with pytest.raises(dataclasses.FrozenInstanceError):
        j.local = "x"  # type: ignore[misc]
    assert {j: 1}[JID("a", "b", "c")] == 1


# -- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Alice@EXAMPLE.com/Phone", "alice@example.com/Phone"),
        ("example.com.", "example.com"),
        ("a@example.com./r", "a@example.com/r"),
        # Width mapping of local and domain; OpaqueString keeps fullwidth in the resource.
        ("\uff21\uff42\uff43@\uff45\uff58\uff0e\uff43\uff4f\uff4d/\uff32", "abc@ex.com/\uff32"),
        # NFC in every part.
        ("a\u0301@e\u0301.fr/e\u0301", "\u00e1@\u00e9.fr/\u00e9"),
        # Ångström sign U+212B becomes U+00E5 through NFC, then lowercase.
        ("\u212b@example.com", "\u00e5@example.com"),
        ("\u00c5@B\u00dcCHER.de", "\u00e5@b\u00fccher.de"),
        # OpaqueString maps non-ASCII spaces to U+0020.
        ("a@b/x\u00a0y", "a@b/x y"),
        # A-labels become U-labels; ideographic full stop separates labels.
        ("a@XN--BCHER-KVA.de", "a@b\u00fccher.de"),
        ("a@b\u00fccher\u3002de", "a@b\u00fccher.de"),
        ("a@[::FFFF:127.0.0.1]", "a@[::ffff:127.0.0.1]"),
        ("a@[::ffff:7f00:1]", "a@[::ffff:127.0.0.1]"),
        ("a@[2001:DB8:0:0:0:0:0:1]", "a@[2001:db8::1]"),
        ("a@[0:0::1]", "a@[::1]"),
        ("\u00df@example.com", "\u00df@example.com"),
    ],
)
def test_normalisation(text: str, expected: str) -> None:
    """Parts are enforced per RFC 7622 §3.2.2, §3.3.2 and §3.4.2."""
    assert str(JID.parse(text)) == expected


def test_resource_case_preserved() -> None:
    """OpaqueString does no case mapping, so resources differing in case differ."""
    assert JID.parse("a@b/Res") != JID.parse("a@b/res")


def test_local_and_domain_case_insensitive() -> None:
    """Localpart and domainpart compare case-insensitively after enforcement."""
    assert JID.parse("ALICE@EXAMPLE.COM") == JID.parse("alice@example.com")


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@example.com",
        "example.com/",
        "alice@example.com/",
        "@",
        "/",
        "/res",
        "alice@",
        "alice@/res",
        "@/",
        ".",
        "example.com..",
    ],
)
def test_refuse_empty_parts(text: str) -> None:
    """Every present part must be non-empty, and a domainpart is required (RFC 7622 §3.1)."""
    with pytest.raises(JIDError):
        JID.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "a" * 1024 + "@example.com",
        "\u00e9" * 512 + "@example.com",
        "example.com/" + "r" * 1024,
        "example.com/" + "\u00e9" * 512,
        "x@" + ".".join(["a" * 63] * 17),
        "x@" + "a" * 64 + ".com",
        "x@" + "\u00fc" * 60 + ".de",
        "a" * 100_000 + "@example.com",
    ],
)
def test_refuse_too_long(text: str) -> None:
    """Parts over 1023 UTF-8 bytes and labels over 63 octets are refused."""
    with pytest.raises(JIDError, match="longer than"):
        JID.parse(text)


def test_accept_max_length() -> None:
    """Parts of exactly 1023 bytes are accepted."""
    local = "a" * 1023
    resource = "\u00e9" * 511 + "r"
    j = JID.parse(f"{local}@example.com/{resource}")
    assert j.local == local and j.resource == resource


@pytest.mark.parametrize("char", [*"\"&'/:<>@", " ", "\t", "\x00", "\x7f", "\u3000"])
def test_refuse_forbidden_local_chars(char: str) -> None:
    """RFC 7622 §3.3.1 characters, spaces and controls are refused in a localpart."""
    with pytest.raises(JIDError, match="localpart"):
        prep_local(f"a{char}b")


def test_refuse_local_fullwidth_at_after_mapping() -> None:
    """Fullwidth '@' width-maps to '@', which RFC 7622 §3.3.1 then refuses."""
    with pytest.raises(JIDError, match="'@'"):
        JID.parse("a\uff20b@example.com")


@pytest.mark.parametrize(
    "domain",
    [
        "exa mple.com",
        "a_b.example.com",
        "-a.example.com",
        "a-.example.com",
        "ab--cd.example.com",
        "xn--zz.example.com",
        "xn--.com",
        "example..com",
        ".example.com",
        "1.2.3",
        "999.1.1.1",
        "01.2.3.4",
        "[::1",
        "[1.2.3.4]",
        "[fe80::1%eth0]",
        "[::g]",
        "exa\u200dmple.com",
        "a\u00a0b.com",
        "ab1\u05e2\u05d1.com",
        "a\x00b.com",
        "a!b.com",
        "\u2665.com",
    ],
)
def test_refuse_bad_domain(domain: str) -> None:
    """Domainparts that are not IP literals or IDNA2008 names are refused (RFC 7622 §3.2)."""
    with pytest.raises(JIDError, match="domainpart"):
        prep_domain(domain)
    with pytest.raises(JIDError):
        JID.parse(f"user@{domain}/res")


def test_refuse_second_at_in_domain() -> None:
    """Only the first '@' separates the localpart; a second lands in the domainpart."""
    with pytest.raises(JIDError, match="domainpart"):
        JID.parse("a@b@example.com")


@pytest.mark.parametrize("resource", ["a\x00", "\tx", "x\n", "x\x7f", "x\u200b\u0085", "\ufffe"])
def test_refuse_bad_resource(resource: str) -> None:
    """Controls and other disallowed code points are refused in a resourcepart."""
    with pytest.raises(JIDError, match="resourcepart"):
        prep_resource(resource)
    with pytest.raises(JIDError):
        JID.parse(f"a@example.com/{resource}")


def test_refuse_bad_with_resource() -> None:
    """with_resource enforces its argument."""
    with pytest.raises(JIDError):
        JID.parse("a@b").with_resource("")
    with pytest.raises(JIDError):
        JID.parse("a@b").with_resource("x\x00")


def test_jid_error_is_value_error() -> None:
    """JIDError is a ValueError with a message naming the part at fault."""
    with pytest.raises(ValueError, match="localpart is empty"):
        JID.parse("@example.com")


def test_errors_not_cached() -> None:
    """parse_jid keeps raising for bad input."""
    for _ in range(2):
        with pytest.raises(JIDError):
            parse_jid("@example.com")


# -- str / bare / with_resource -----------------------------------------------------------


def test_str_omits_absent_parts() -> None:
    """str() writes local@domain/resource without missing parts."""
    assert str(JID(None, "example.com", None)) == "example.com"
    assert str(JID("a", "example.com", None)) == "a@example.com"
    assert str(JID(None, "example.com", "r")) == "example.com/r"
    assert str(JID("a", "example.com", "r/x")) == "a@example.com/r/x"


def test_bare_and_is_bare() -> None:
    """bare drops the resource; a bare JID is its own bare form."""
    full = JID.parse("a@example.com/r")
    assert not full.is_bare
    assert full.bare == JID("a", "example.com", None)
    assert full.bare.is_bare
    bare = full.bare
    assert bare.bare is bare


def test_with_resource_round_trip() -> None:
    """with_resource prepares the resource and bare undoes it."""
    bare = JID.parse("a@example.com")
    full = bare.with_resource("Phone\u00a0X")
    assert full == JID("a", "example.com", "Phone X")
    assert full.bare == bare
    assert JID.parse(str(full)) == full


# -- properties ---------------------------------------------------------------------------

_ascii = st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), min_size=1, max_size=24)
_any_text = st.text(min_size=1, max_size=24)
_label = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True).filter(
    lambda s: s[2:4] != "--"
)
_domains = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join).filter(lambda s: not s[-1].isdigit()),
    st.sampled_from(["b\u00fccher.de", "\u4f8b\u3048.jp", "127.0.0.1", "[::1]"]),
)


def _outcome(fn: object, s: str) -> str:
    try:
        return repr(fn(s))  # type: ignore[operator]
    except JIDError:
        return "JIDError"


@settings(max_examples=200, deadline=None)
@given(_ascii)
def test_local_fast_path_matches_precis(s: str) -> None:
    """The ASCII localpart shortcut agrees with full UsernameCaseMapped enforcement."""
    assert _outcome(prep_local, s) == _outcome(jid_module._prep_local_precis, s)


@settings(max_examples=200, deadline=None)
@given(_ascii)
def test_resource_fast_path_matches_precis(s: str) -> None:
    """The ASCII resourcepart shortcut agrees with full OpaqueString enforcement."""
    assert _outcome(prep_resource, s) == _outcome(jid_module._prep_resource_precis, s)


@settings(max_examples=100, deadline=None)
@given(st.lists(_label, min_size=1, max_size=4).map(".".join))
def test_ascii_domain_fast_path_matches_labels(s: str) -> None:
    """The ASCII domain shortcut agrees with label-by-label enforcement."""
    lowered = s.lower()
    if lowered.rsplit(".", 1)[-1].isdigit():
        return
    slow = ".".join(jid_module._prep_label(lb) for lb in lowered.split("."))
    assert prep_domain(s) == slow


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(st.none(), _any_text, _ascii),
    _domains,
    st.one_of(st.none(), _any_text, _ascii),
)
def test_parse_str_round_trip(local: str | None, domain: str, resource: str | None) -> None:
    """parse(str(parse(x))) == parse(x) for every valid x."""
    text = domain
    if local is not None:
        text = f"{local}@{text}"
    if resource is not None:
        text = f"{text}/{resource}"
    try:
        j = JID.parse(text)
    except JIDError:
        return
    assert JID.parse(str(j)) == j
    assert parse_jid(str(j)) == j


@settings(max_examples=150, deadline=None)
@given(_any_text)
def test_prep_idempotent(s: str) -> None:
    """Enforcing an already enforced part changes nothing."""
    for prep in (prep_local, prep_resource, prep_domain):
        try:
            once = prep(s)
        except JIDError:
            continue
        assert prep(once) == once
