"""Server Dialback keys (XEP-0185) and elements (XEP-0220)."""

from __future__ import annotations

import pytest
from lxml import etree

from core.xmpp import dialback
from core.xmpp.dialback import Dialback, check_key, generate_key
from core.xmpp.ns import NS_DIALBACK, NS_SERVER, NS_STANZAS

DB = f"xmlns:db='{NS_DIALBACK}'"


def parse(xml: str) -> etree._Element:
    """An element as the stream parser would hand it over (namespaces declared above it)."""
    root = etree.fromstring(f"<stream xmlns='{NS_SERVER}' {DB}>{xml}</stream>")
    return root[0]


@pytest.mark.parametrize(
    ("secret", "receiving", "originating", "stream_id", "key"),
    [
        # XEP-0185 §3
        (
            "s3cr3tf0rd14lb4ck",
            "xmpp.example.com",
            "example.org",
            "D60000229F",
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643",
        ),
        # XEP-0220 Example 1 (Step 1) and Example 5 (Step 2)
        (
            "s3cr3tf0rd14lb4ck",
            "montague.example",
            "capulet.example",
            "D60000229F",
            "b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3",
        ),
        (
            "d14lb4ck43v3r",
            "capulet.example",
            "montague.example",
            "417GAF25",
            "225cc5aa6a071133249d25fef42ae516fc7a86c523aa1c6980a7f73e784c972d",
        ),
    ],
)
def test_key_matches_the_xep_examples(
    secret: str, receiving: str, originating: str, stream_id: str, key: str
) -> None:
    """The key is HMAC-SHA256(hex(SHA256(secret)), 'receiving originating id'), as in the
    worked examples of XEP-0185 and XEP-0220."""
    assert generate_key(secret, receiving, originating, stream_id) == key
    assert check_key(secret, receiving, originating, stream_id, key)


def test_check_key_refuses_any_change() -> None:
    """A key is valid only for its secret, both domains in order, and the stream id."""
    key = generate_key("secret", "b.example", "a.example", "id1")
    assert check_key("secret", "b.example", "a.example", "id1", key)
    assert check_key("secret", "b.example", "a.example", "id1", f"  {key.upper()}\n")
    assert not check_key("other", "b.example", "a.example", "id1", key)
    assert not check_key("secret", "a.example", "b.example", "id1", key)
    assert not check_key("secret", "b.example", "a.example", "id2", key)
    assert not check_key("secret", "b.example", "a.example", "id1", "")
    assert not check_key("secret", "b.example", "a.example", "id1", key * 20)


def test_new_secret_is_random() -> None:
    """Secrets made at start differ and are long enough for HMAC-SHA256."""
    a, b = dialback.new_secret(), dialback.new_secret()
    assert a != b and len(a) >= 32


def test_parse_request_and_answers() -> None:
    """db:result and db:verify requests carry a key; answers a type; errors a condition."""
    req = Dialback.from_element(
        parse("<db:result from='a.example' to='b.example'> k3y </db:result>")
    )
    assert (req.kind, req.frm, req.to, req.type, req.key) == (
        "result",
        "a.example",
        "b.example",
        None,
        "k3y",
    )
    ver = Dialback.from_element(
        parse("<db:verify from='b.example' to='a.example' id='s1' type='valid'/>")
    )
    assert (ver.kind, ver.id, ver.type, ver.key) == ("verify", "s1", "valid", "")
    err = Dialback.from_element(
        parse(
            "<db:result from='b.example' to='a.example' type='error'><error type='cancel'>"
            f"<item-not-found xmlns='{NS_STANZAS}'/></error></db:result>"
        )
    )
    assert (err.type, err.condition) == ("error", "item-not-found")


@pytest.mark.parametrize(
    "xml",
    [
        "<db:result to='b.example'>k</db:result>",
        "<db:result from='a.example'>k</db:result>",
        "<db:verify from='a.example' to='b.example'>k</db:verify>",
        "<db:result from='a.example' to='b.example' type='maybe'/>",
        f"<message xmlns='{NS_SERVER}'/>",
    ],
)
def test_parse_refuses_incomplete_elements(xml: str) -> None:
    """Missing from/to (or id on verify), unknown types and other elements are refused."""
    with pytest.raises(ValueError):
        Dialback.from_element(parse(xml))


def test_elements_use_the_db_prefix_and_round_trip() -> None:
    """Built elements carry the db: prefix (XEP-0220 §2) and parse back to the same values."""
    key = dialback.result("a.example", "b.example", key="abc")
    assert dialback.to_bytes(key).startswith(b"<db:result ")
    assert Dialback.from_element(parse(dialback.to_bytes(key).decode())).key == "abc"
    answer = dialback.verify("b.example", "a.example", "s1", type="invalid")
    back = Dialback.from_element(parse(dialback.to_bytes(answer).decode()))
    assert (back.kind, back.frm, back.to, back.id, back.type) == (
        "verify",
        "b.example",
        "a.example",
        "s1",
        "invalid",
    )
    assert back.to_element().get("type") == "invalid"


def test_error_answer_has_a_stanza_error_in_jabber_server() -> None:
    """§2.4: type='error' carries <error/> (jabber:server) with a stanza condition."""
    el = dialback.result("b.example", "a.example", type="error", condition="remote-server-timeout")
    err = el.find(f"{{{NS_SERVER}}}error")
    assert err is not None and err.get("type") == "wait"
    assert err.find(f"{{{NS_STANZAS}}}remote-server-timeout") is not None
    assert el.text is None


def test_feature_announces_error_handling() -> None:
    """<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback> (§2.4.2)."""
    el = dialback.feature()
    assert el.tag == dialback.QN_DIALBACK_FEATURE
    assert [etree.QName(c).localname for c in el] == ["errors"]
