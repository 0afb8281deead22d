"""Blocking command transcripts (XEP-0191): blocklist, block, unblock, pushes, enforcement,
presence on block and unblock, and the shared store with privacy lists (§3)."""

from __future__ import annotations

from typing import Any

from core.storage.offline import OfflineStore
from core.storage.privacy import PrivacyStore
from core.storage.roster import RosterItem, RosterStore
from tests.unit.helpers import settle
from tests.unit.test_roster_harness import Im, assert_contains, assert_stanzas, run_im

A = "alice@localhost"
B = "bob@localhost"
C = "carol@localhost"
BLOCKING = "xmlns='urn:xmpp:blocking'"
PRIVACY = "xmlns='jabber:iq:privacy'"
ERR = "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'"


async def send(im: Im, session: Any, text: str) -> None:
    """Send a stanza and wait for what the server does after answering (pushes, presence)."""
    await im.send(session, text)
    await settle(im.core)


async def subscribed(im: Im, owner: str, *contacts: str, sub: str = "both") -> None:
    items = {c: RosterItem(c, subscription=sub) for c in contacts}
    await RosterStore(im.redis).write(owner, version="e-1", items=items)


def block(*jids: str, id: str = "b1") -> str:
    items = "".join(f"<item jid='{j}'/>" for j in jids)
    return f"<iq type='set' id='{id}'><block {BLOCKING}>{items}</block></iq>"


def unblock(*jids: str, id: str = "u1") -> str:
    items = "".join(f"<item jid='{j}'/>" for j in jids)
    return f"<iq type='set' id='{id}'><unblock {BLOCKING}>{items}</unblock></iq>"


GET = f"<iq type='get' id='g1'><blocklist {BLOCKING}/></iq>"


def privacy(id: str, inner: str, type: str = "set") -> str:
    return f"<iq type='{type}' id='{id}'><query {PRIVACY}>{inner}</query></iq>"


def result(to: str, id: str, payload: str = "") -> str:
    return f"<iq type='result' id='{id}' to='{to}' from='{A}'>{payload}</iq>"


def push(to: str, verb: str, *jids: str) -> str:
    items = "".join(f"<item jid='{j}'/>" for j in jids)
    return f"<iq type='set' id='*' to='{to}'><{verb} {BLOCKING}>{items}</{verb}></iq>"


def privacy_push(to: str, name: str = "blocklist") -> str:
    return f"<iq type='set' id='*' to='{to}'><query {PRIVACY}><list name='{name}'/></query></iq>"


def test_empty_blocklist(redis_client: Any, run_async: Any) -> None:
    """§5.2: with nothing blocked the blocklist is empty."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        await send(im, a, GET)
        assert_stanzas(a.take(), result(f"{A}/a", "g1", f"<blocklist {BLOCKING}/>"))

    run_im(run_async, redis_client, scenario)


def test_block_pushes_to_resources_that_asked(redis_client: Any, run_async: Any) -> None:
    """§5.3: result, then a block push to each resource that fetched the blocklist; every
    resource hears of the changed default privacy list (XEP-0016 §2.2 rule 10)."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        b = await im.login(f"{A}/b")
        quiet = await im.login(f"{A}/quiet")
        await send(im, b, GET)
        a.take(), b.take(), quiet.take()
        await send(im, a, block("Bob@Localhost", "example.org"))
        assert_stanzas(a.take(), result(f"{A}/a", "b1"), privacy_push(f"{A}/a"))
        assert_stanzas(
            b.take(),
            privacy_push(f"{A}/b"),
            push(f"{A}/b", "block", B, "example.org"),
        )
        assert_stanzas(quiet.take(), privacy_push(f"{A}/quiet"))
        await send(im, b, GET)
        assert_stanzas(
            b.take(),
            result(
                f"{A}/b",
                "g1",
                f"<blocklist {BLOCKING}><item jid='{B}'/><item jid='example.org'/></blocklist>",
            ),
        )

    run_im(run_async, redis_client, scenario)


def test_block_refusals(redis_client: Any, run_async: Any) -> None:
    """§5.3: an empty <block/> is bad-request; an item without a valid JID is refused."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        await send(im, a, f"<iq type='set' id='e1'><block {BLOCKING}/></iq>")
        await send(im, a, f"<iq type='set' id='e2'><block {BLOCKING}><item/></block></iq>")
        await send(im, a, block("a@b@c", id="e3"))
        got = a.take()
        assert [e.get("type") for e in got] == ["error"] * 3
        conditions = [e.find("{jabber:client}error")[0].tag.rpartition("}")[2] for e in got]
        assert conditions == ["bad-request", "bad-request", "jid-malformed"]
        assert (await PrivacyStore(im.redis).load(A)).empty

    run_im(run_async, redis_client, scenario)


def test_unblock_one_and_all(redis_client: Any, run_async: Any) -> None:
    """§5.4, §5.5: unblock items, then everything; each time a push to the fetchers."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        await send(im, a, GET)
        await send(im, a, block(B, C, "x.example"))
        a.take()
        await send(im, a, unblock(C))
        assert_stanzas(
            a.take(),
            result(f"{A}/a", "u1"),
            privacy_push(f"{A}/a"),
            push(f"{A}/a", "unblock", C),
        )
        assert (await PrivacyStore(im.redis).load(A)).blocklist() == [B, "x.example"]
        await send(im, a, unblock(id="u2"))
        assert_stanzas(
            a.take(),
            result(f"{A}/a", "u2"),
            privacy_push(f"{A}/a"),
            push(f"{A}/a", "unblock"),
        )
        stored = await PrivacyStore(im.redis).load(A)
        assert stored.blocklist() == [] and stored.default is None

    run_im(run_async, redis_client, scenario)


def test_inbound_from_blocked_contact(redis_client: Any, run_async: Any) -> None:
    """§5.3: from a blocked JID, presence is dropped, messages and IQ get/set get
    service-unavailable, IQ results are dropped; the user appears offline."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        a = await im.login(f"{A}/a")
        b = await im.login(f"{B}/pc")
        await send(im, a, block(B))
        a.take(), b.take()
        await send(im, b, f"<message to='{A}' id='m1' type='chat'><body>hi</body></message>")
        await send(im, b, f"<message to='{A}/a' id='m2'><body>hi</body></message>")
        await send(im, b, f"<iq to='{A}' id='q1' type='get'><vCard xmlns='vcard-temp'/></iq>")
        await send(im, b, f"<iq to='{A}/a' id='q2' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        await send(im, b, f"<iq to='{A}/a' id='q3' type='result'/>")
        await send(im, b, f"<presence to='{A}'/>")
        await send(im, b, f"<presence to='{A}' type='subscribe'/>")
        assert a.take() == []
        unavailable = f"<error type='cancel'><service-unavailable {ERR}/></error>"
        assert_stanzas(
            b.take(),
            f"<message type='error' id='m1' to='{B}/pc' from='{A}'><body>hi</body>{unavailable}"
            "</message>",
            f"<message type='error' id='m2' to='{B}/pc' from='{A}/a'><body>hi</body>"
            f"{unavailable}</message>",
            f"<iq type='error' id='q1' to='{B}/pc' from='{A}'><vCard xmlns='vcard-temp'/>"
            f"{unavailable}</iq>",
            f"<iq type='error' id='q2' to='{B}/pc' from='{A}/a'><ping xmlns='urn:xmpp:ping'/>"
            f"{unavailable}</iq>",
        )

    run_im(run_async, redis_client, scenario)


def test_outbound_to_blocked_contact(redis_client: Any, run_async: Any) -> None:
    """§5.3: a stanza to a blocked JID is not routed: not-acceptable with <blocked/>, for the
    presence the client addresses to it too (directed presence, a subscription request, which
    then changes nothing in the roster)."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        a = await im.login(f"{A}/a")
        b = await im.login(f"{B}/pc")
        await send(im, a, block(B))
        a.take(), b.take()
        await send(im, a, f"<message to='{B}/pc' id='m1' type='chat'><body>hi</body></message>")
        await send(im, a, f"<iq to='{B}/pc' id='q1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        await send(im, a, f"<presence to='{B}'/>")
        await send(im, a, f"<presence to='{B}' type='subscribe' id='s1'/>")
        assert b.take() == []
        blocked = (
            f"<error type='cancel'><not-acceptable {ERR}/>"
            "<blocked xmlns='urn:xmpp:blocking:errors'/></error>"
        )
        assert_stanzas(
            a.take(),
            f"<message type='error' id='m1' to='{A}/a' from='{B}/pc'><body>hi</body>{blocked}"
            "</message>",
            f"<iq type='error' id='q1' to='{A}/a' from='{B}/pc'><ping xmlns='urn:xmpp:ping'/>"
            f"{blocked}</iq>",
            f"<presence type='error' to='{A}/a' from='{B}'>{blocked}</presence>",
            f"<presence type='error' id='s1' to='{A}/a' from='{B}'>{blocked}</presence>",
        )
        assert (await im.core.rosters.get(A)).items == {}

    run_im(run_async, redis_client, scenario)


def test_jid_matching_forms(redis_client: Any, run_async: Any) -> None:
    """§4: a full JID blocks only that resource, a domain blocks its users and subdomains."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        await send(im, a, block("mallory@evil.example/phone", "spam.example"))
        a.take()
        for frm in (
            "mallory@evil.example/phone",
            "mallory@evil.example/laptop",
            "bot@spam.example/x",
            "spam.example",
            "relay.spam.example",
            "notspam.example",
        ):
            await im.receive(f"<message from='{frm}' to='{A}/a'><body>x</body></message>")
        await settle(im.core)
        assert sorted(m.get("from") for m in a.take()) == [
            "mallory@evil.example/laptop",
            "notspam.example",
        ]
        bounced = im.remote.take()
        assert sorted(m.get("to") for m in bounced) == [
            "bot@spam.example/x",
            "mallory@evil.example/phone",
            "relay.spam.example",
            "spam.example",
        ]

    run_im(run_async, redis_client, scenario)


def test_presence_on_block_and_unblock(redis_client: Any, run_async: Any) -> None:
    """§5.3, §5.4: blocking sends unavailable presence to a contact allowed to see the user's
    presence, and the user's resources get unavailable from the contact (XEP-0016 §2.10 note,
    as the block covers presence-in); unblocking sends the current presence both ways (the
    contact's through a probe). Others get nothing."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob", "carol")
        await subscribed(im, A, B)
        await subscribed(im, B, A)
        a = await im.login(f"{A}/a")
        await im.send(a, "<presence><show>dnd</show></presence>")
        b = await im.login(f"{B}/pc")
        c = await im.login(f"{C}/pc")
        a.take(), b.take(), c.take()
        await send(im, a, block(B, C))
        assert_stanzas(b.take(), f"<presence type='unavailable' from='{A}/a' to='{B}'/>")
        assert c.take() == []
        push = (
            f"<iq type='set' id='*' to='{A}/a'><query xmlns='jabber:iq:privacy'>"
            "<list name='blocklist'/></query></iq>"
        )
        assert_stanzas(
            a.take(),
            f"<iq type='result' id='b1' to='{A}/a' from='{A}'/>",
            push,
            f"<presence type='unavailable' from='{B}/pc' to='{A}/a'/>",
        )
        await send(im, b, "<presence><show>chat</show></presence>")
        assert a.take() == []
        b.take()
        await send(im, a, unblock(B, C))
        assert_stanzas(b.take(), f"<presence from='{A}/a' to='{B}'><show>dnd</show></presence>")
        assert c.take() == []
        assert_stanzas(
            a.take(),
            f"<iq type='result' id='u1' to='{A}/a' from='{A}'/>",
            push,
            f"<presence from='{B}/pc' to='{A}'><show>chat</show></presence>",
        )

    run_im(run_async, redis_client, scenario)


def test_blocklist_is_the_default_privacy_list(redis_client: Any, run_async: Any) -> None:
    """§3: blocking writes jid/deny items at the head of the default privacy list (numbered
    again when there is no room below the first order); a privacy client sees them and its
    edits of the default list are pushed as block/unblock."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        await send(im, a, GET)
        await send(
            im,
            a,
            f"<iq type='set' id='p1'><query {PRIVACY}><list name='mine'>"
            "<item type='jid' value='friend@x.example' action='allow' order='0'/>"
            "<item action='deny' order='5'><message/></item></list></query></iq>",
        )
        await send(im, a, privacy("p2", "<default name='mine'/>"))
        a.take()
        await send(im, a, block(B))
        a.take()
        await send(im, a, privacy("p3", "<list name='mine'/>", type="get"))
        assert_stanzas(
            a.take(),
            result(
                f"{A}/a",
                "p3",
                f"<query {PRIVACY}><list name='mine'>"
                f"<item type='jid' value='{B}' action='deny' order='0'/>"
                "<item type='jid' value='friend@x.example' action='allow' order='1'/>"
                "<item action='deny' order='2'><message/></item></list></query>",
            ),
        )
        # A privacy edit that drops Bob and adds Carol is a block and an unblock.
        await send(
            im,
            a,
            f"<iq type='set' id='p4'><query {PRIVACY}><list name='mine'>"
            f"<item type='jid' value='{C}' action='deny' order='1'/>"
            "<item action='deny' order='5'><message/></item></list></query></iq>",
        )
        assert_stanzas(
            a.take(),
            result(f"{A}/a", "p4"),
            privacy_push(f"{A}/a", "mine"),
            push(f"{A}/a", "unblock", B),
            push(f"{A}/a", "block", C),
        )
        # Another default list brings its own blocklist; no default list, none.
        await send(im, a, f"<iq type='set' id='p5'><query {PRIVACY}><default/></query></iq>")
        assert_stanzas(a.take(), result(f"{A}/a", "p5"), push(f"{A}/a", "unblock", C))
        await send(im, a, GET)
        assert_stanzas(a.take(), result(f"{A}/a", "g1", f"<blocklist {BLOCKING}/>"))

    run_im(run_async, redis_client, scenario)


def test_blocks_survive_a_new_server(redis_client: Any, run_async: Any) -> None:
    """Blocks are in Redis before the result: a new core on the same Redis enforces them."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        a = await im.login(f"{A}/a")
        await send(im, a, block(B))
        fresh = await Im(im.redis).start()
        b = await fresh.login(f"{B}/pc")
        a2 = await fresh.login(f"{A}/a2")
        await fresh.send(b, f"<message to='{A}' id='m1'><body>hi</body></message>")
        await settle(fresh.core)
        assert a2.take() == []
        assert_contains(
            b.take(),
            f"<message type='error' id='m1' to='{B}/pc' from='{A}'><body>hi</body>"
            f"<error type='cancel'><service-unavailable {ERR}/></error></message>",
        )

    run_im(run_async, redis_client, scenario)


def test_offline_account_still_blocks(redis_client: Any, run_async: Any) -> None:
    """The default list applies when the user has no session (XEP-0016 §2.2 rule 2): a
    message from a blocked JID is bounced, not kept offline; others' are kept."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob", "carol")
        a = await im.login(f"{A}/a")
        await send(im, a, block(B))
        await im.logout(a)
        b = await im.login(f"{B}/pc")
        c = await im.login(f"{C}/pc")
        await send(im, b, f"<message to='{A}' id='m1' type='chat'><body>hi</body></message>")
        await send(im, c, f"<message to='{A}' id='m2' type='chat'><body>hi</body></message>")
        assert [(m.get("id"), m.get("type")) for m in b.take()] == [("m1", "error")]
        assert [m for m in c.take() if m.tag == "{jabber:client}message"] == []
        assert await OfflineStore(im.redis).count(A) == 1

    run_im(run_async, redis_client, scenario)
