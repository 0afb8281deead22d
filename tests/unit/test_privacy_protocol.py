"""Privacy list transcripts (XEP-0016 §2): lists, active and default lists, pushes, conflicts,
refusals, and enforcement by JID, group, subscription and stanza kind in both directions."""

from __future__ import annotations

from typing import Any

from lxml import etree

from core.storage.roster import RosterItem, RosterStore
from tests.unit.helpers import settle
from tests.unit.test_roster_harness import Im, assert_stanzas, run_im

A = "alice@localhost"
B = "bob@localhost"
C = "carol@localhost"
PRIVACY = "xmlns='jabber:iq:privacy'"
ERR = "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'"


async def send(im: Im, session: Any, text: str) -> None:
    """Send a stanza and wait for what the server does after answering (pushes, presence)."""
    await im.send(session, text)
    await settle(im.core)


def q(id: str, inner: str = "", type: str = "set") -> str:
    return f"<iq type='{type}' id='{id}'><query {PRIVACY}>{inner}</query></iq>"


def lst(name: str, *items: str) -> str:
    return f"<list name='{name}'>{''.join(items)}</list>"


def result(to: str, id: str, payload: str = "") -> str:
    return f"<iq type='result' id='{id}' to='{to}' from='{A}'>{payload}</iq>"


def push(to: str, name: str) -> str:
    return f"<iq type='set' id='*' to='{to}'><query {PRIVACY}><list name='{name}'/></query></iq>"


def condition(stanza: etree._Element) -> str:
    """The defined condition of an error stanza."""
    assert stanza.get("type") == "error", etree.tostring(stanza)
    error = stanza.find("{jabber:client}error")
    assert error is not None
    return etree.QName(error[0]).localname


async def roster(im: Im, owner: str, **items: tuple[str, tuple[str, ...]]) -> None:
    """Roster items of ``owner``: localpart -> (subscription, groups)."""
    await RosterStore(im.redis).write(
        owner,
        version="e-1",
        items={
            f"{k}@localhost": RosterItem(f"{k}@localhost", subscription=s, groups=g)
            for k, (s, g) in items.items()
        },
    )


DENY_BOB = "<item type='jid' value='bob@localhost' action='deny' order='1'/>"


def test_lists_active_default_and_pushes(redis_client: Any, run_async: Any) -> None:
    """§2.3, §2.6, §2.7: lists are created with a push to every resource; the names come with
    the asking session's active list and the account's default list."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        b = await im.login(f"{A}/b")
        a.take(), b.take()
        await send(
            im,
            a,
            q(
                "c1",
                lst(
                    "public",
                    "<item action='allow' order='20'/>",
                    "<item type='jid' value='Tybalt@Example.com' action='deny' order='3'/>",
                ),
            ),
        )
        assert_stanzas(a.take(), result(f"{A}/a", "c1"), push(f"{A}/a", "public"))
        assert_stanzas(b.take(), push(f"{A}/b", "public"))
        await send(im, a, q("c2", lst("private", DENY_BOB)))
        await send(im, a, q("c3", "<default name='public'/>"))
        await send(im, b, q("c4", "<active name='private'/>"))
        a.take(), b.take()
        await send(im, b, q("g1", type="get"))
        assert_stanzas(
            b.take(),
            f"<iq type='result' id='g1' to='{A}/b' from='{A}'><query {PRIVACY}>"
            "<active name='private'/><default name='public'/>"
            "<list name='private'/><list name='public'/></query></iq>",
        )
        await send(im, a, q("g2", type="get"))
        assert_stanzas(
            a.take(),
            result(
                f"{A}/a",
                "g2",
                f"<query {PRIVACY}><default name='public'/>"
                "<list name='private'/><list name='public'/></query>",
            ),
        )
        await send(im, a, q("g3", "<list name='public'/>", type="get"))
        assert_stanzas(
            a.take(),
            result(
                f"{A}/a",
                "g3",
                f"<query {PRIVACY}><list name='public'>"
                "<item type='jid' value='tybalt@example.com' action='deny' order='3'/>"
                "<item action='allow' order='20'/></list></query>",
            ),
        )

    run_im(run_async, redis_client, scenario)


def test_refusals(redis_client: Any, run_async: Any) -> None:
    """§2.1-§2.5: every malformed or impossible request gets its stanza error."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        await roster(im, A, bob=("both", ("Friends",)))
        a = await im.login(f"{A}/a")
        await send(im, a, q("ok", lst("l", DENY_BOB)))
        a.take()
        cases = [
            (q("g1", "<list name='nope'/>", type="get"), "item-not-found"),
            (q("g2", "<list name='l'/><list name='l'/>", type="get"), "bad-request"),
            (q("g3", "<active name='l'/>", type="get"), "bad-request"),
            (q("s1", "<active name='l'/><default name='l'/>"), "bad-request"),
            (q("s2"), "bad-request"),
            (q("s3", "<active name='nope'/>"), "item-not-found"),
            (q("s4", "<default name='nope'/>"), "item-not-found"),
            (q("s5", "<list name='nope'/>"), "item-not-found"),
            (q("s6", "<list><item action='deny' order='1'/></list>"), "bad-request"),
            (
                q(
                    "s7",
                    lst("x", "<item action='deny' order='1'/><item action='allow' order='1'/>"),
                ),
                "bad-request",
            ),
            (q("s8", lst("x", "<item action='maybe' order='1'/>")), "bad-request"),
            (
                q("s9", lst("x", "<item type='jid' value='a@b@c' action='deny' order='1'/>")),
                "bad-request",
            ),
            (
                q("s10", lst("x", "<item type='group' value='Foes' action='deny' order='1'/>")),
                "item-not-found",
            ),
            (q("s11", lst("x", "<bogus/>")), "bad-request"),
            (q("s12", "<bogus/>"), "bad-request"),
        ]
        for request, expected in cases:
            await send(im, a, request)
            got = a.take()
            assert len(got) == 1 and condition(got[0]) == expected, (request, got)
        await send(
            im,
            a,
            q("s13", lst("x", "<item type='group' value='Friends' action='deny' order='1'/>")),
        )
        assert_stanzas(a.take(), result(f"{A}/a", "s13"), push(f"{A}/a", "x"))

    run_im(run_async, redis_client, scenario)


def test_conflicts_with_other_resources(redis_client: Any, run_async: Any) -> None:
    """§2.2 rule 11, §2.5, §2.8: a list that applies to another resource (as its active list,
    or as the default of a resource without one) cannot be removed or replaced as default;
    editing it is allowed (rule 8)."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        b = await im.login(f"{A}/b")
        await send(im, a, q("c1", lst("one", DENY_BOB)))
        await send(im, a, q("c2", lst("two", DENY_BOB)))
        await send(im, a, q("c3", "<default name='one'/>"))
        a.take(), b.take()
        for request in (
            q("x1", "<default name='two'/>"),
            q("x2", "<default/>"),
            q("x3", "<list name='one'/>"),
        ):
            await send(im, a, request)
            got = a.take()
            assert len(got) == 1 and condition(got[0]) == "conflict", request
        await send(im, b, q("b1", "<active name='two'/>"))
        b.take()
        await send(im, a, q("x4", "<list name='two'/>"))
        assert condition(a.take()[0]) == "conflict"
        # Editing a list another resource has active is allowed, and pushed.
        await send(im, a, q("e1", lst("two", "<item action='allow' order='1'/>")))
        assert_stanzas(a.take(), result(f"{A}/a", "e1"), push(f"{A}/a", "two"))
        assert_stanzas(b.take(), push(f"{A}/b", "two"))
        # No other resource uses the default any more: it can change, and 'one' can go.
        await send(im, a, q("d1", "<default name='two'/>"))
        assert_stanzas(a.take(), result(f"{A}/a", "d1"))
        await send(im, a, q("r1", "<list name='one'/>"))
        assert_stanzas(a.take(), result(f"{A}/a", "r1"), push(f"{A}/a", "one"))
        # A resource may remove its own active list (when it applies to no other).
        await send(im, b, q("c4", lst("three", DENY_BOB)))
        await send(im, b, q("c5", "<active name='three'/>"))
        a.take(), b.take()
        await send(im, b, q("r2", "<list name='three'/>"))
        assert_stanzas(b.take(), result(f"{A}/b", "r2"), push(f"{A}/b", "three"))
        assert "privacy-active" not in b.data

    run_im(run_async, redis_client, scenario)


def test_inbound_enforcement_by_kind(redis_client: Any, run_async: Any) -> None:
    """§2.9-§2.14: message and iq items refuse with service-unavailable, presence-in drops
    presence notifications (not subscriptions), IQ results are dropped."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        a = await im.login(f"{A}/a")
        b = await im.login(f"{B}/pc")
        await send(
            im,
            a,
            q(
                "c1",
                lst(
                    "l",
                    "<item type='jid' value='bob@localhost' action='deny' order='1'>"
                    "<message/><iq/><presence-in/></item>",
                ),
            ),
        )
        await send(im, a, q("c2", "<active name='l'/>"))
        a.take(), b.take()
        await send(im, b, f"<message to='{A}/a' id='m1'><body>x</body></message>")
        await send(im, b, f"<iq to='{A}/a' id='i1' type='set'><query xmlns='urn:x'/></iq>")
        await send(im, b, f"<iq to='{A}/a' id='i2' type='result'/>")
        await send(im, b, f"<presence to='{A}/a'/>")
        await send(im, b, f"<presence to='{A}' type='subscribe'/>")
        got = a.take()
        assert [(s.tag, s.get("type")) for s in got] == [("{jabber:client}presence", "subscribe")]
        errors = [s for s in b.take() if s.get("type") == "error"]
        assert [(s.get("id"), condition(s)) for s in errors] == [
            ("m1", "service-unavailable"),
            ("i1", "service-unavailable"),
        ]

    run_im(run_async, redis_client, scenario)


def test_outbound_enforcement(redis_client: Any, run_async: Any) -> None:
    """§2.14: an item for every stanza refuses outbound stanzas with not-acceptable (without
    <blocked/> when it is not a blocklist entry); message-only items do not apply outbound."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob", "carol")
        await roster(im, A, bob=("both", ("Foes",)), carol=("both", ()))
        a = await im.login(f"{A}/a")
        b = await im.login(f"{B}/pc")
        c = await im.login(f"{C}/pc")
        await send(
            im,
            a,
            q(
                "c1",
                lst(
                    "l",
                    "<item type='group' value='Foes' action='deny' order='1'/>",
                    "<item type='jid' value='carol@localhost' action='deny' order='2'>"
                    "<message/></item>",
                ),
            ),
        )
        await send(im, a, q("c2", "<active name='l'/>"))
        a.take(), b.take(), c.take()
        await send(im, a, f"<message to='{B}' id='m1'><body>x</body></message>")
        await send(im, a, f"<message to='{C}' id='m2'><body>x</body></message>")
        assert b.take() == []
        assert [m.get("id") for m in c.take()] == ["m2"]
        assert_stanzas(
            a.take(),
            f"<message type='error' id='m1' to='{A}/a' from='{B}'><body>x</body>"
            f"<error type='cancel'><not-acceptable {ERR}/></error></message>",
        )

    run_im(run_async, redis_client, scenario)


def test_subscription_items_and_fall_through(redis_client: Any, run_async: Any) -> None:
    """§2.1: 'none' covers those not in the roster at all; without a fall-through item the
    list allows."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob", "carol")
        await roster(im, A, bob=("to", ()))
        await roster(im, B, alice=("from", ()))
        a = await im.login(f"{A}/a")
        b = await im.login(f"{B}/pc")
        c = await im.login(f"{C}/pc")
        deny_none = (
            "<item type='subscription' value='none' action='deny' order='1'><message/></item>"
        )
        await send(im, a, q("c1", lst("l", deny_none)))
        await send(im, a, q("c2", "<default name='l'/>"))
        a.take(), b.take(), c.take()
        await send(im, b, f"<message to='{A}' id='m1' type='chat'><body>x</body></message>")
        await send(im, c, f"<message to='{A}' id='m2' type='chat'><body>x</body></message>")
        assert [m.get("id") for m in a.take()] == ["m1"]
        assert [condition(m) for m in c.take()] == ["service-unavailable"]

    run_im(run_async, redis_client, scenario)


def test_own_resources_and_server_never_blocked(redis_client: Any, run_async: Any) -> None:
    """§2.1 note: a deny-all list does not block one's own resources, nor the server."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        a = await im.login(f"{A}/a")
        a2 = await im.login(f"{A}/b")
        b = await im.login(f"{B}/pc")
        await send(im, a, q("c1", lst("wall", "<item action='deny' order='1'/>")))
        await send(im, a, q("c2", "<active name='wall'/>"))
        await send(im, a2, q("c3", "<active name='wall'/>"))
        a.take(), a2.take(), b.take()
        await send(im, a, f"<message to='{A}/b' id='m1'><body>x</body></message>")
        assert [m.get("id") for m in a2.take()] == ["m1"]
        await send(
            im, a, "<iq to='localhost' id='p1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        assert [(m.get("id"), m.get("type")) for m in a.take()] == [("p1", "result")]
        await send(im, b, f"<message to='{A}' id='m2'><body>x</body></message>")
        assert a.take() == [] and a2.take() == []
        assert [condition(m) for m in b.take()] == ["service-unavailable"]

    run_im(run_async, redis_client, scenario)


def test_active_list_applies_to_its_session(redis_client: Any, run_async: Any) -> None:
    """§2.2 rule 1: an active list affects only its session; declining it ends that."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        a = await im.login(f"{A}/a")
        a2 = await im.login(f"{A}/b")
        b = await im.login(f"{B}/pc")
        await send(im, a, q("c1", lst("l", DENY_BOB)))
        await send(im, a, q("c2", "<active name='l'/>"))
        a.take(), a2.take(), b.take()
        await send(im, b, f"<message to='{A}/a' id='m1'><body>x</body></message>")
        await send(im, b, f"<message to='{A}/b' id='m2'><body>x</body></message>")
        assert a.take() == [] and [m.get("id") for m in a2.take()] == ["m2"]
        assert [m.get("id") for m in b.take()] == ["m1"]
        await send(im, a, q("c3", "<active/>"))
        a.take()
        await send(im, b, f"<message to='{A}/a' id='m3'><body>x</body></message>")
        assert [m.get("id") for m in a.take()] == ["m3"]

    run_im(run_async, redis_client, scenario)


def test_presence_out_blocked_then_allowed(redis_client: Any, run_async: Any) -> None:
    """§2.11 note: when presence-out becomes blocked for a contact allowed to see the user's
    presence, it receives unavailable; when allowed again, the current presence. While
    blocked, presence broadcasts do not reach it."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        await roster(im, A, bob=("both", ()))
        await roster(im, B, alice=("both", ()))
        a = await im.login(f"{A}/a")
        b = await im.login(f"{B}/pc")
        hide = (
            "<item type='jid' value='bob@localhost' action='deny' order='1'><presence-out/></item>"
        )
        await send(im, a, q("c1", lst("hide", hide)))
        a.take(), b.take()
        await send(im, a, q("c2", "<active name='hide'/>"))
        assert_stanzas(b.take(), f"<presence type='unavailable' from='{A}/a' to='{B}'/>")
        await send(im, a, "<presence><show>away</show></presence>")
        assert b.take() == []
        a.take()
        await send(im, b, f"<message to='{A}/a' id='m1'><body>still</body></message>")
        assert [m.get("id") for m in a.take()] == ["m1"]
        await send(im, a, q("c3", "<active/>"))
        assert_stanzas(b.take(), f"<presence from='{A}/a' to='{B}'><show>away</show></presence>")

    run_im(run_async, redis_client, scenario)


def test_presence_in_blocked_then_allowed(redis_client: Any, run_async: Any) -> None:
    """§2.10 note: when a list change blocks presence-in from a contact the user saw
    available, the user's resources get unavailable presence on its behalf, from each of its
    resources; while blocked its presence does not come in; when allowed again, a probe brings
    its current presence. The contact itself is told nothing."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob", "carol")
        await roster(im, A, bob=("both", ()), carol=("both", ()))
        await roster(im, B, alice=("both", ()))
        await roster(im, C, alice=("both", ()))
        a = await im.login(f"{A}/a")
        a2 = await im.login(f"{A}/a2")
        b = await im.login(f"{B}/pc")
        b2 = await im.login(f"{B}/phone")
        c = await im.login(f"{C}/pc")
        deaf = (
            "<item type='jid' value='bob@localhost' action='deny' order='1'><presence-in/></item>"
        )
        await send(im, a, q("c1", lst("deaf", deaf)))
        for s in (a, a2, b, b2, c):
            s.take()
        await send(im, a, q("c2", "<active name='deaf'/>"))
        assert_stanzas(
            a.take(),
            result(f"{A}/a", "c2"),
            f"<presence type='unavailable' from='{B}/pc' to='{A}/a'/>",
            f"<presence type='unavailable' from='{B}/phone' to='{A}/a'/>",
        )
        # Only the session whose list changed; nobody else hears of it.
        assert a2.take() == [] and b.take() == [] and b2.take() == [] and c.take() == []
        await send(im, b, "<presence><show>away</show></presence>")
        await send(im, c, "<presence><show>xa</show></presence>")
        assert [p.get("from") for p in a.take()] == [f"{C}/pc"]
        assert [p.get("from") for p in a2.take()] == [f"{B}/pc", f"{C}/pc"]
        await send(im, a, q("c3", "<active/>"))
        got = a.take()
        assert got[0].get("id") == "c3"
        assert_stanzas(
            got[1:],
            f"<presence from='{B}/pc' to='{A}'><show>away</show></presence>",
            f"<presence from='{B}/phone' to='{A}'/>",
        )

    run_im(run_async, redis_client, scenario)


def test_lists_that_cannot_be_loaded_refuse(redis_client: Any, run_async: Any) -> None:
    """When an account's lists cannot be read, nothing passes unchecked: the stanza is
    answered with internal-server-error (and the failure logged)."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        b = await im.login(f"{B}/pc")
        b.take()

        async def broken(bare: str) -> Any:
            raise ConnectionError("Redis went away")

        im.core.privacy.cache.forget(A)
        im.core.privacy.cache.get = broken
        await send(im, b, f"<message to='{A}' id='m1'><body>x</body></message>")
        assert [(m.get("id"), condition(m)) for m in b.take()] == [("m1", "internal-server-error")]

    run_im(run_async, redis_client, scenario)
