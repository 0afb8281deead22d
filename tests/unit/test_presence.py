"""Presence transcripts (RFC 6121 §4): initial presence, probes, updates, directed presence,
unavailable on logout and on a dropped connection, priorities."""

from __future__ import annotations

from typing import Any

import pytest

from core.storage.roster import RosterItem, RosterStore
from tests.unit.test_roster_harness import Im, assert_contains, assert_stanzas, run_im

J = "juliet@localhost"
R = "romeo@localhost"
REMOTE = "mercutio@remote.example"
ROOM = "room@conference.remote.example/juliet"
ERR = "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'"


async def roster(im: Im, owner: str, **subs: str) -> None:
    """Give ``owner`` roster items: contact JID (with '_at_' for '@') -> subscription."""
    items = {}
    for key, sub in subs.items():
        jid = key.replace("_at_", "@").replace("_", ".")
        items[jid] = RosterItem(jid, subscription=sub)
    await RosterStore(im.redis).write(owner, version="e-1", items=items)


async def mutual(im: Im) -> None:
    """Juliet and Romeo subscribed to each other; Juliet also shares with a remote contact."""
    await im.accounts("juliet", "romeo")
    await roster(im, J, romeo_at_localhost="both", mercutio_at_remote_example="both")
    await roster(im, R, juliet_at_localhost="both")


def test_initial_presence(redis_client: Any, run_async: Any) -> None:
    """§4.2: initial presence goes to subscribed contacts and to all the account's available
    resources (the sender included); probes go to the contacts the account is subscribed to;
    the new resource learns its other resources' and its contacts' presence."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        r = await im.login(f"{R}/orchard")
        other = await im.login(f"{J}/chamber")
        r.take(), im.remote.take()
        j = await im.login(f"{J}/balcony", available=False)
        await im.send(j, "<presence><show>away</show><priority>3</priority></presence>")
        mine = (
            "<presence from='juliet@localhost/balcony' to='{to}'>"
            "<show>away</show><priority>3</priority></presence>"
        )
        assert_stanzas(r.take(), mine.format(to=R))
        # The probe went from the bare JID, so its answer reaches every available resource.
        assert_contains(
            other.take(), mine.format(to=f"{J}/chamber"), f"<presence from='{R}/orchard' to='{J}'/>"
        )
        assert_stanzas(
            im.remote.take(),
            mine.format(to=REMOTE),
            f"<presence type='probe' from='{J}' to='{REMOTE}'/>",
        )
        assert_contains(
            j.take(),
            mine.format(to=f"{J}/balcony"),
            f"<presence from='{J}/chamber' to='{J}/balcony'/>",
            # Romeo's answer to the probe goes to Juliet's bare JID: every available resource.
            f"<presence from='{R}/orchard' to='{J}'/>",
        )
        assert j.available and j.priority == 3

    run_im(run_async, redis_client, scenario)


def test_update_broadcast_without_probes(redis_client: Any, run_async: Any) -> None:
    """§4.4: a presence update is broadcast again, without probes."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        r = await im.login(f"{R}/orchard")
        j = await im.login(f"{J}/balcony")
        r.take(), j.take(), im.remote.take()
        await im.send(j, "<presence><status>reading</status></presence>")
        assert_stanzas(
            r.take(), f"<presence from='{J}/balcony' to='{R}'><status>reading</status></presence>"
        )
        assert_stanzas(
            im.remote.take(),
            f"<presence from='{J}/balcony' to='{REMOTE}'><status>reading</status></presence>",
        )
        assert_stanzas(
            j.take(),
            f"<presence from='{J}/balcony' to='{J}/balcony'><status>reading</status></presence>",
        )

    run_im(run_async, redis_client, scenario)


def test_presence_updates_stay_in_memory(
    redis_client: Any, run_async: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path: once both are online, presence updates and messages between them read
    nothing from Redis."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        r = await im.login(f"{R}/orchard")
        j = await im.login(f"{J}/balcony")
        r.take(), j.take()

        async def no_redis(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("Redis was read on the hot path")

        monkeypatch.setattr(RosterStore, "load", no_redis)
        monkeypatch.setattr(im.core.accounts, "exists", no_redis)
        await im.send(j, "<presence><show>dnd</show></presence>")
        await im.send(j, f"<message type='chat' to='{R}'><body>hi</body></message>")
        assert [s.tag.rpartition("}")[2] for s in r.take()] == ["presence", "message"]

    run_im(run_async, redis_client, scenario)


def test_unavailable_and_dropped_connection(redis_client: Any, run_async: Any) -> None:
    """§4.5: an unavailable presence is broadcast like an available one; a connection that
    drops without one makes the server generate it (RFC 6120 §4.4)."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        r = await im.login(f"{R}/orchard")
        j = await im.login(f"{J}/balcony")
        r.take(), im.remote.take()
        await im.send(j, "<presence type='unavailable'><status>gone</status></presence>")
        gone = (
            "<presence type='unavailable' from='juliet@localhost/balcony' to='{to}'>"
            "<status>gone</status></presence>"
        )
        assert_stanzas(r.take(), gone.format(to=R))
        assert_stanzas(im.remote.take(), gone.format(to=REMOTE))
        assert_stanzas(j.take(), gone.format(to=f"{J}/balcony"))
        assert not j.available
        # Back online, then the connection drops.
        await im.send(j, "<presence/>")
        r.take(), im.remote.take()
        await im.logout(j)
        assert_stanzas(r.take(), f"<presence type='unavailable' from='{J}/balcony' to='{R}'/>")
        assert_stanzas(
            im.remote.take(), f"<presence type='unavailable' from='{J}/balcony' to='{REMOTE}'/>"
        )
        last = await im.core.presence.last.get(J)
        assert last is not None and b"unavailable" in last.presence

    run_im(run_async, redis_client, scenario)


def test_directed_presence_tracked(redis_client: Any, run_async: Any) -> None:
    """§4.6: directed presence reaches its recipient; recipients without a subscription get
    unavailable when the session goes away; a directed unavailable ends the tracking."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        j = await im.login(f"{J}/balcony")
        im.remote.take()
        await im.send(j, f"<presence to='{ROOM}'/>")
        await im.send(j, "<presence to='nurse@remote.example'/>")
        await im.send(j, "<presence type='unavailable' to='nurse@remote.example'/>")
        await im.send(j, f"<presence to='{REMOTE}'/>")  # subscribed already: not tracked
        assert len(im.remote.take()) == 4
        await im.logout(j)
        assert_contains(
            im.remote.take(),
            f"<presence type='unavailable' from='{J}/balcony' to='{ROOM}'/>",
            f"<presence type='unavailable' from='{J}/balcony' to='{REMOTE}'/>",
        )

    run_im(run_async, redis_client, scenario)


def test_directed_presence_before_initial_presence(redis_client: Any, run_async: Any) -> None:
    """§4.6: a session that never became available still owes its directed presence
    recipients an unavailable at the end, and nothing to its contacts."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        j = await im.login(f"{J}/balcony", available=False)
        await im.send(j, f"<presence to='{ROOM}'/>")
        im.remote.take()
        await im.logout(j)
        assert_stanzas(
            im.remote.take(),
            f"<presence type='unavailable' from='{J}/balcony' to='{ROOM}'/>",
        )

    run_im(run_async, redis_client, scenario)


def test_probe_answers(redis_client: Any, run_async: Any) -> None:
    """§4.3.2: an authorised probe gets each available resource's presence, or the last
    unavailable presence with a delay stamp; an unauthorised one gets 'unsubscribed', and so
    does a probe to an account that does not exist (§8.5.1), so the two look the same."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        j = await im.login(f"{J}/balcony")
        await im.send(j, "<presence><status>here</status></presence>")
        im.remote.take()
        await im.receive(f"<presence type='probe' from='{REMOTE}' to='{J}'/>")
        assert_stanzas(
            im.remote.take(),
            f"<presence from='{J}/balcony' to='{REMOTE}'><status>here</status></presence>",
        )
        await im.receive(f"<presence type='probe' from='stranger@remote.example' to='{J}'/>")
        assert_stanzas(
            im.remote.take(),
            f"<presence type='unsubscribed' from='{J}' to='stranger@remote.example'/>",
        )
        await im.send(j, "<presence type='unavailable'><status>bye</status></presence>")
        im.remote.take()
        await im.logout(j)
        await im.receive(f"<presence type='probe' from='{REMOTE}' to='{J}/anything'/>")
        assert_stanzas(
            im.remote.take(),
            f"<presence type='unavailable' from='{J}/balcony' to='{REMOTE}'><status>bye</status>"
            f"<delay xmlns='urn:xmpp:delay' from='localhost' stamp='*'/></presence>",
        )
        await im.receive(f"<presence type='probe' from='{REMOTE}' to='nobody@localhost'/>")
        assert_stanzas(
            im.remote.take(),
            f"<presence type='unsubscribed' from='nobody@localhost' to='{REMOTE}'/>",
        )

    run_im(run_async, redis_client, scenario)


@pytest.mark.parametrize(
    ("presence", "ok"),
    [
        ("<presence><priority>-128</priority></presence>", True),
        ("<presence><priority>127</priority></presence>", True),
        ("<presence><priority>128</priority></presence>", False),
        ("<presence><priority>-129</priority></presence>", False),
        ("<presence><priority>high</priority></presence>", False),
        ("<presence><show>busy</show></presence>", False),
        ("<presence type='sideways'/>", False),
        ("<presence type='probe'/>", False),
    ],
)
def test_presence_checks(redis_client: Any, run_async: Any, presence: str, ok: bool) -> None:
    """§4.7.2: priorities are integers from -128 to 127, show values are the four defined
    ones; anything else is a bad request and changes nothing."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        j = await im.login(f"{J}/balcony", available=False)
        await im.send(j, presence)
        out = j.take()
        if ok:
            assert j.available
            assert [p.get("type") for p in out] == [None]
        else:
            assert not j.available
            assert_stanzas(
                out,
                f"<presence type='error' to='{J}/balcony'>"
                f"<error type='modify'><bad-request {ERR}/><text {ERR}>*</text></error></presence>",
            )

    run_im(run_async, redis_client, scenario)


def test_presence_to_bare_jid_reaches_available_resources(
    redis_client: Any, run_async: Any
) -> None:
    """§8.5.2.1.2: presence to a bare JID reaches every available resource, not a resource
    that has not sent initial presence."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        a = await im.login(f"{J}/a")
        quiet = await im.login(f"{J}/quiet", available=False)
        a.take(), quiet.take()
        await im.receive(f"<presence from='{REMOTE}/x' to='{J}'/>")
        assert_stanzas(a.take(), f"<presence from='{REMOTE}/x' to='{J}'/>")
        assert quiet.take() == []

    run_im(run_async, redis_client, scenario)


def test_replaced_session_does_not_go_unavailable(redis_client: Any, run_async: Any) -> None:
    """RFC 6120 §7.7.2.2: when a new session takes over a full JID and announced itself, the
    old one's end does not tell contacts the resource is gone."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        r = await im.login(f"{R}/orchard")
        old = await im.login(f"{J}/balcony")
        new = await im.login(f"{J}/balcony")
        r.take()
        await im.logout(old)
        assert r.take() == []
        assert im.core.router.session(new.jid) is new

    run_im(run_async, redis_client, scenario)
