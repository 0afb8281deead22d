"""Roster management transcripts (RFC 6121 §2): get, set, remove, pushes, versioning, limits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.modules.roster import pre_approval, roster_versioning
from core.storage.roster import RosterItem, RosterStore
from tests.unit.test_roster_harness import Im, assert_stanzas, run_im

A = "alice@localhost"
ROSTER = "xmlns='jabber:iq:roster'"
ERR = "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'"


def _set(item: str, id: str = "s1") -> str:
    return f"<iq type='set' id='{id}'><query {ROSTER}>{item}</query></iq>"


def _error(id: str, type: str, condition: str, payload: str = f"<query {ROSTER}/>") -> str:
    return (
        f"<iq type='error' id='{id}' to='{A}/a' from='{A}'>{payload}"
        f"<error type='{type}'><{condition} {ERR}/><text {ERR}>*</text></error></iq>"
    )


def test_get_empty_roster(redis_client: Any, run_async: Any) -> None:
    """A new account's roster is empty; the result comes from the account's bare JID."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        s = await im.login(f"{A}/a", roster=False)
        await im.send(s, f"<iq type='get' id='r1'><query {ROSTER}/></iq>")
        assert_stanzas(
            s.take(), f"<iq type='result' id='r1' to='{A}/a' from='{A}'><query {ROSTER}/></iq>"
        )
        assert s.interested

    run_im(run_async, redis_client, scenario)


def test_add_pushes_to_interested_resources_only(redis_client: Any, run_async: Any) -> None:
    """§2.3.2: a new item is pushed to every interested resource, the sender included."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        b = await im.login(f"{A}/b")
        quiet = await im.login(f"{A}/quiet", roster=False)
        a.take(), b.take()
        await im.send(
            a, _set("<item jid='Nurse@Example.com' name='Nurse'><group>Servants</group></item>")
        )
        push = (
            "<iq type='set' id='*' to='{to}'><query {ns} ver='*'>"
            "<item jid='nurse@example.com' name='Nurse' subscription='none'>"
            "<group>Servants</group></item></query></iq>"
        )
        assert_stanzas(
            a.take(),
            push.format(to=f"{A}/a", ns=ROSTER),
            f"<iq type='result' id='s1' to='{A}/a' from='{A}'/>",
        )
        assert_stanzas(b.take(), push.format(to=f"{A}/b", ns=ROSTER))
        assert quiet.take() == []
        # Durable before the result: a fresh load from Redis has the item.
        stored = await RosterStore(im.redis).load(A)
        assert stored.items["nurse@example.com"] == RosterItem(
            "nurse@example.com", "Nurse", ("Servants",)
        )

    run_im(run_async, redis_client, scenario)


def test_update_and_remove(redis_client: Any, run_async: Any) -> None:
    """§2.4, §2.5: an update replaces name and groups; a removal pushes subscription='remove'."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        await im.send(a, _set("<item jid='bob@localhost' name='Bob'><group>A</group></item>"))
        a.take()
        await im.send(
            a, _set("<item jid='bob@localhost'><group>B</group><group>C</group></item>", "s2")
        )
        assert_stanzas(
            a.take(),
            f"<iq type='set' id='*' to='{A}/a'><query {ROSTER} ver='*'>"
            "<item jid='bob@localhost' subscription='none'><group>B</group><group>C</group></item>"
            "</query></iq>",
            f"<iq type='result' id='s2' to='{A}/a' from='{A}'/>",
        )
        await im.send(a, _set("<item jid='bob@localhost' subscription='remove'/>", "s3"))
        assert_stanzas(
            a.take(),
            f"<iq type='set' id='*' to='{A}/a'><query {ROSTER} ver='*'>"
            "<item jid='bob@localhost' subscription='remove'/></query></iq>",
            f"<iq type='result' id='s3' to='{A}/a' from='{A}'/>",
        )
        assert (await RosterStore(im.redis).load(A)).items == {}
        await im.send(a, _set("<item jid='bob@localhost' subscription='remove'/>", "s4"))
        assert_stanzas(
            a.take(),
            _error(
                "s4",
                "cancel",
                "item-not-found",
                f"<query {ROSTER}><item jid='bob@localhost' subscription='remove'/></query>",
            ),
        )

    run_im(run_async, redis_client, scenario)


def test_client_cannot_set_subscription_ask_or_approved(redis_client: Any, run_async: Any) -> None:
    """§2.1.2.5: values of 'subscription' other than 'remove' are ignored, as are 'ask' and
    'approved', which only the server sets."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        await im.send(
            a,
            _set("<item jid='bob@localhost' subscription='both' ask='subscribe' approved='true'/>"),
        )
        assert_stanzas(
            a.take(),
            f"<iq type='set' id='*' to='{A}/a'><query {ROSTER} ver='*'>"
            "<item jid='bob@localhost' subscription='none'/></query></iq>",
            f"<iq type='result' id='s1' to='{A}/a' from='{A}'/>",
        )

    run_im(run_async, redis_client, scenario)


BAD_SETS = [
    pytest.param(f"<query {ROSTER}/>", "modify", "bad-request", id="no-item"),
    pytest.param(
        f"<query {ROSTER}><item jid='a@x'/><item jid='b@x'/></query>",
        "modify",
        "bad-request",
        id="two-items",
    ),
    pytest.param(f"<query {ROSTER}><item name='x'/></query>", "modify", "bad-request", id="no-jid"),
    pytest.param(
        f"<query {ROSTER}><item jid='a@b@c'/></query>", "modify", "jid-malformed", id="bad-jid"
    ),
    pytest.param(
        f"<query {ROSTER}><item jid='b@x'><group>G</group><group>G</group></item></query>",
        "modify",
        "bad-request",
        id="duplicate-group",
    ),
    pytest.param(
        f"<query {ROSTER}><item jid='b@x'><group></group></item></query>",
        "modify",
        "not-acceptable",
        id="empty-group",
    ),
    pytest.param(
        f"<query {ROSTER}><item jid='b@x' name='{'n' * 11}'/></query>",
        "modify",
        "not-acceptable",
        id="long-name",
    ),
    pytest.param(
        f"<query {ROSTER}><item jid='b@x'><group>{'g' * 11}</group></item></query>",
        "modify",
        "not-acceptable",
        id="long-group",
    ),
    pytest.param(
        f"<query {ROSTER}><item jid='b@x'><group>1</group><group>2</group><group>3</group>"
        "</item></query>",
        "modify",
        "policy-violation",
        id="too-many-groups",
    ),
    pytest.param(
        f"<query {ROSTER}><item jid='{A}'/></query>", "cancel", "not-allowed", id="own-jid"
    ),
]


@pytest.mark.parametrize(("query", "etype", "condition"), BAD_SETS)
def test_bad_roster_sets(
    redis_client: Any, run_async: Any, query: str, etype: str, condition: str
) -> None:
    """§2.3.3: each malformed or over-limit roster set gets its error and changes nothing."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        await im.send(a, f"<iq type='set' id='bad'>{query}</iq>")
        out = a.take()
        assert len(out) == 1 and out[0].get("type") == "error", out
        error = out[0].find("{jabber:client}error")
        assert error is not None and error.get("type") == etype
        assert error.find(f"{{urn:ietf:params:xml:ns:xmpp-stanzas}}{condition}") is not None
        assert (await RosterStore(im.redis).load(A)).items == {}

    limits = {"roster": {"max_name_length": 10, "max_group_length": 10, "max_groups": 2}}
    run_im(run_async, redis_client, scenario, limits=limits)


def test_item_count_limit(redis_client: Any, run_async: Any) -> None:
    """A roster at its size limit refuses new items with resource-constraint, but still
    accepts updates of existing ones."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        await im.send(a, _set("<item jid='b@x'/>"))
        await im.send(a, _set("<item jid='c@x'/>"))
        a.take()
        await im.send(a, _set("<item jid='d@x'/>", "s3"))
        assert_stanzas(
            a.take(),
            _error(
                "s3", "wait", "resource-constraint", f"<query {ROSTER}><item jid='d@x'/></query>"
            ),
        )
        await im.send(a, _set("<item jid='c@x' name='C'/>", "s4"))
        assert a.take()[-1].get("type") == "result"

    run_im(run_async, redis_client, scenario, limits={"roster": {"max_items": 2}})


def test_roster_get_with_items_is_bad_request(redis_client: Any, run_async: Any) -> None:
    """§2.1.3: a roster get carries an empty query."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        await im.send(a, f"<iq type='get' id='g'><query {ROSTER}><item jid='b@x'/></query></iq>")
        assert_stanzas(
            a.take(),
            _error("g", "modify", "bad-request", f"<query {ROSTER}><item jid='b@x'/></query>"),
        )

    run_im(run_async, redis_client, scenario)


def test_another_accounts_roster_is_forbidden(redis_client: Any, run_async: Any) -> None:
    """Only the account itself reads or changes its roster."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        a = await im.login(f"{A}/a")
        await im.send(a, f"<iq type='get' id='g' to='bob@localhost'><query {ROSTER}/></iq>")
        assert_stanzas(
            a.take(),
            f"<iq type='error' id='g' to='{A}/a' from='bob@localhost'><query {ROSTER}/>"
            f"<error type='auth'><forbidden {ERR}/><text {ERR}>*</text></error></iq>",
        )

    run_im(run_async, redis_client, scenario)


def test_versioning(redis_client: Any, run_async: Any) -> None:
    """§2.6: the current version gets an empty result; another one the whole roster with the
    current version, which pushes carry as well."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        await im.send(a, f"<iq type='get' id='v0'><query {ROSTER} ver=''/></iq>")
        [first] = a.take()
        assert first.find("{jabber:iq:roster}query").get("ver") == ""
        await im.send(a, _set("<item jid='b@x'/>"))
        push, _result = a.take()
        ver = push.find("{jabber:iq:roster}query").get("ver")
        assert ver
        await im.send(a, f"<iq type='get' id='v1'><query {ROSTER} ver='{ver}'/></iq>")
        assert_stanzas(a.take(), f"<iq type='result' id='v1' to='{A}/a' from='{A}'/>")
        await im.send(a, f"<iq type='get' id='v2'><query {ROSTER} ver='stale'/></iq>")
        assert_stanzas(
            a.take(),
            f"<iq type='result' id='v2' to='{A}/a' from='{A}'><query {ROSTER} ver='{ver}'>"
            "<item jid='b@x' subscription='none'/></query></iq>",
        )
        await im.send(a, _set("<item jid='c@x'/>", "s2"))
        push2, _ = a.take()
        ver2 = push2.find("{jabber:iq:roster}query").get("ver")
        assert ver2 and ver2 != ver
        # Without 'ver' in the request, the result has none either.
        await im.send(a, f"<iq type='get' id='v3'><query {ROSTER}/></iq>")
        [plain] = a.take()
        assert plain.find("{jabber:iq:roster}query").get("ver") is None

    run_im(run_async, redis_client, scenario)


def test_stream_features_offered() -> None:
    """§2.6.1 and §3.4: roster versioning and pre-approval are stream features."""
    assert roster_versioning(None).tag == "{urn:xmpp:features:rosterver}ver"
    assert pre_approval(None).tag == "{urn:xmpp:features:pre-approval}sub"


def test_remove_cancels_both_directions(redis_client: Any, run_async: Any) -> None:
    """§2.5.2: removing a contact with a mutual subscription sends 'unsubscribe' and
    'unsubscribed' from the bare JID, and unavailable from each available resource."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        await RosterStore(im.redis).write(
            A,
            version="e-1",
            items={"romeo@remote.example": RosterItem("romeo@remote.example", subscription="both")},
        )
        a = await im.login(f"{A}/a")
        im.remote.take()
        await im.send(a, _set("<item jid='romeo@remote.example' subscription='remove'/>"))
        assert_stanzas(
            im.remote.take(),
            f"<presence type='unsubscribe' from='{A}' to='romeo@remote.example'/>",
            f"<presence type='unsubscribed' from='{A}' to='romeo@remote.example'/>",
            f"<presence type='unavailable' from='{A}/a' to='romeo@remote.example'/>",
        )

    run_im(run_async, redis_client, scenario)


def test_change_on_another_node_is_pushed_here(redis_client: Any, run_async: Any) -> None:
    """A roster changed on another core node is announced through Redis: this node reloads
    its copy and pushes the change to its own interested resources."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        here = await im.login(f"{A}/here")
        other = await Im(im.redis, node_id="other-node").start()
        try:
            await asyncio.wait_for(im.core.rosters.subscribed.wait(), 5)
            pushed = asyncio.Event()
            record = here.send

            def send(stanza: Any) -> None:
                record(stanza)
                pushed.set()

            here.send = send  # type: ignore[method-assign]
            there = await other.login(f"{A}/there")
            await other.send(there, _set("<item jid='bob@localhost' name='Bob'/>"))
            await asyncio.wait_for(pushed.wait(), 5)
            assert_stanzas(
                here.take(),
                f"<iq type='set' id='*' to='{A}/here'><query {ROSTER} ver='*'>"
                "<item jid='bob@localhost' name='Bob' subscription='none'/></query></iq>",
            )
            cached = im.core.rosters.cached(A)
            assert cached is not None and "bob@localhost" in cached.items
        finally:
            await other.stop()

    run_im(run_async, redis_client, scenario)
