"""vcard-temp transcripts (XEP-0054 §3) and the vCard store on a real Redis (with the
XEP-0153 photo hash)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from lxml import etree

from core.modules.vcard import MAX_VCARD_BYTES, photo_hash
from core.storage.roster import RosterItem, RosterStore
from core.storage.vcard import VCardStore
from tests.unit.helpers import settle
from tests.unit.test_roster_harness import Im, assert_stanzas, run_im

A = "alice@localhost"
B = "bob@localhost"
V = "xmlns='vcard-temp'"
ERR = "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'"
CARD = f"<vCard {V}><FN>Alice Liddell</FN><NICKNAME>alice</NICKNAME></vCard>"


async def send(im: Im, session: Any, text: str) -> list[etree._Element]:
    await im.send(session, text)
    await settle(im.core)
    return session.take()


def error(
    id: str,
    to: str,
    frm: str,
    type: str,
    cond: str,
    payload: str = f"<vCard {V}/>",
    text: bool = False,
) -> str:
    explained = f"<text {ERR}>*</text>" if text else ""
    return (
        f"<iq type='error' id='{id}' to='{to}' from='{frm}'>{payload}"
        f"<error type='{type}'><{cond} {ERR}/>{explained}</error></iq>"
    )


def test_own_vcard_round_trip(redis_client: Any, run_async: Any) -> None:
    """§3.1, §3.2: an empty vCard before any is set; a set one comes back as it was sent."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        empty = await send(im, a, f"<iq type='get' id='v1'><vCard {V}/></iq>")
        assert_stanzas(empty, f"<iq type='result' id='v1' to='{A}/a' from='{A}'><vCard {V}/></iq>")
        done = await send(im, a, f"<iq type='set' id='v2'>{CARD}</iq>")
        assert_stanzas(done, f"<iq type='result' id='v2' to='{A}/a' from='{A}'/>")
        got = await send(im, a, f"<iq to='{A}' type='get' id='v3'><vCard {V}/></iq>")
        assert_stanzas(got, f"<iq type='result' id='v3' to='{A}/a' from='{A}'>{CARD}</iq>")

    run_im(run_async, redis_client, scenario)


def test_other_vcard_answered_by_the_server(redis_client: Any, run_async: Any) -> None:
    """§3.3: the server answers for the account (its resources see nothing); with no vCard,
    or no such account, the same service-unavailable."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        a = await im.login(f"{A}/a")
        b = await im.login(f"{B}/pc")
        await send(im, a, f"<iq type='set' id='v1'>{CARD}</iq>")
        got = await send(im, b, f"<iq to='{A}' type='get' id='v2'><vCard {V}/></iq>")
        assert_stanzas(got, f"<iq type='result' id='v2' to='{B}/pc' from='{A}'>{CARD}</iq>")
        assert a.take() == []
        none = await send(im, a, f"<iq to='{B}' type='get' id='v3'><vCard {V}/></iq>")
        nobody = await send(
            im, a, f"<iq to='nobody@localhost' type='get' id='v4'><vCard {V}/></iq>"
        )
        assert_stanzas(none, error("v3", f"{A}/a", B, "cancel", "service-unavailable"))
        assert_stanzas(
            nobody, error("v4", f"{A}/a", "nobody@localhost", "cancel", "service-unavailable")
        )

    run_im(run_async, redis_client, scenario)


def test_set_refusals(redis_client: Any, run_async: Any) -> None:
    """§3.2: another account's vCard is forbidden; a vCard over the size limit is refused with
    a text that names the limit; neither changes what is stored."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        a = await im.login(f"{A}/a")
        other = await send(im, a, f"<iq to='{B}' type='set' id='v1'>{CARD}</iq>")
        assert_stanzas(other, error("v1", f"{A}/a", B, "auth", "forbidden", CARD, text=True))
        big = f"<vCard {V}><DESC>{'x' * MAX_VCARD_BYTES}</DESC></vCard>"
        refused = await send(im, a, f"<iq type='set' id='v2'>{big}</iq>")
        assert len(refused) == 1 and refused[0].get("type") == "error"
        err = refused[0].find("{jabber:client}error")
        assert err is not None and err.get("type") == "modify"
        assert err.find("{urn:ietf:params:xml:ns:xmpp-stanzas}policy-violation") is not None
        text = err.findtext("{urn:ietf:params:xml:ns:xmpp-stanzas}text") or ""
        assert str(MAX_VCARD_BYTES) in text
        assert await VCardStore(im.redis).get(B) is None
        assert await VCardStore(im.redis).get(A) is None

    run_im(run_async, redis_client, scenario)


def test_empty_set_removes(redis_client: Any, run_async: Any) -> None:
    """Setting an empty vCard removes the stored one: others then get service-unavailable."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        a = await im.login(f"{A}/a")
        b = await im.login(f"{B}/pc")
        await send(im, a, f"<iq type='set' id='v1'>{CARD}</iq>")
        await send(im, a, f"<iq type='set' id='v2'><vCard {V}/></iq>")
        assert await VCardStore(im.redis).get(A) is None
        got = await send(im, b, f"<iq to='{A}' type='get' id='v3'><vCard {V}/></iq>")
        assert_stanzas(got, error("v3", f"{B}/pc", A, "cancel", "service-unavailable"))

    run_im(run_async, redis_client, scenario)


def test_store_and_photo_hash(redis_client: Any, run_async: Any) -> None:
    """The store keeps the vCard and the SHA-1 of its decoded photo (XEP-0153 §3.1)."""
    image = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    encoded = base64.b64encode(image).decode()
    # Line breaks in BINVAL are allowed and do not change the hash.
    wrapped = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60))
    card = etree.fromstring(
        f"<vCard {V}><PHOTO><TYPE>image/png</TYPE><BINVAL>{wrapped}</BINVAL></PHOTO></vCard>"
    )

    async def go() -> None:
        store = VCardStore(redis_client)
        assert await store.get(A) is None and await store.photo(A) is None
        stored = await store.set(A, card)
        assert stored.photo == hashlib.sha1(image).hexdigest()
        loaded = await store.get(A)
        assert loaded is not None and loaded == stored
        assert etree.tostring(loaded.element()) == etree.tostring(card)
        host = type("Host", (), {"redis": redis_client})()
        assert await photo_hash(host, A) == stored.photo
        await store.set(A, etree.fromstring(f"<vCard {V}><FN>x</FN></vCard>"))
        assert await store.photo(A) == ""
        await store.delete(A)
        assert await store.get(A) is None

    run_async(go())


UPDATE = "xmlns='vcard-temp:x:update'"
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
PHOTO_CARD = (
    f"<vCard {V}><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>"
    f"<BINVAL>{base64.b64encode(IMAGE).decode()}</BINVAL></PHOTO></vCard>"
)
SHA1 = hashlib.sha1(IMAGE).hexdigest()


def _photo(stanza: etree._Element) -> str | None:
    """The text of the XEP-0153 <photo/> in a presence ('' when empty), None without one."""
    photo = stanza.find("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")
    return None if photo is None else (photo.text or "")


def test_photo_hash_in_presence(redis_client: Any, run_async: Any) -> None:
    """XEP-0153 with the server rules of XEP-0398 §4: after a vCard with a photo is set, the
    user's resources broadcast again with the hash; every later available presence carries it,
    broadcast or directed, replacing an update element without photo; an empty <photo/> from
    the client is left alone; accounts without a vCard get nothing added; a new vCard without
    photo is announced with an empty <photo/>; a new session starts with the stored hash."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob", "carol")
        store = RosterStore(im.redis)
        await store.write(A, version="e-1", items={B: RosterItem(B, subscription="both")})
        await store.write(B, version="e-1", items={A: RosterItem(A, subscription="both")})
        a = await im.login(f"{A}/a")
        a2 = await im.login(f"{A}/a2")
        b = await im.login(f"{B}/pc")
        c = await im.login("carol@localhost/pc")
        for s in (a, a2, b, c):
            s.take()

        done = await send(im, a, f"<iq type='set' id='v1'>{PHOTO_CARD}</iq>")
        assert [(s.tag, s.get("id"), s.get("from")) for s in done if s.get("id") == "v1"] == [
            ("{jabber:client}iq", "v1", A)
        ]
        seen = {p.get("from"): _photo(p) for p in b.take()}
        assert seen == {f"{A}/a": SHA1, f"{A}/a2": SHA1}
        assert {p.get("from"): _photo(p) for p in a2.take()} == seen

        await send(im, a, "<presence><show>away</show></presence>")
        assert [_photo(p) for p in b.take()] == [SHA1]
        await send(im, a, f"<presence><x {UPDATE}/></presence>")
        assert [_photo(p) for p in b.take()] == [SHA1]
        await send(im, a, f"<presence><x {UPDATE}><photo>0123abcd</photo></x></presence>")
        assert [_photo(p) for p in b.take()] == [SHA1]
        await send(im, a, f"<presence><x {UPDATE}><photo/></x></presence>")
        assert [_photo(p) for p in b.take()] == [""]
        await send(im, a, "<presence to='carol@localhost/pc'/>")
        assert [_photo(p) for p in c.take()] == [SHA1]

        await send(im, b, "<presence><show>dnd</show></presence>")
        assert [_photo(p) for p in a.take() if p.get("from") == f"{B}/pc"] == [None]

        a3 = await im.login(f"{A}/a3")
        assert [_photo(p) for p in b.take() if p.get("from") == f"{A}/a3"] == [SHA1]

        await send(im, a3, f"<iq type='set' id='v2'><vCard {V}><FN>Alice</FN></vCard></iq>")
        assert {p.get("from"): _photo(p) for p in b.take()} == {
            f"{A}/a": "",
            f"{A}/a2": "",
            f"{A}/a3": "",
        }
        for s in (a, a2, a3):
            s.take()
        # The same vCard again changes nothing and announces nothing.
        await send(im, a3, f"<iq type='set' id='v3'><vCard {V}><FN>Al</FN></vCard></iq>")
        assert b.take() == []

    run_im(run_async, redis_client, scenario)
