"""What initial presence reads and routes (RFC 6121 §4.2.2, §4.3.2): broadcasts skip local
contacts with nothing available, probes to contacts with no session here are read ahead, and
the last presence of a contact with a session that is not available is read once."""

from __future__ import annotations

from typing import Any

import pytest

from core.storage.last import LastActivityStore
from core.storage.roster import RosterItem, RosterStore
from tests.unit.test_roster_harness import Im, assert_stanzas, run_im

J = "juliet@localhost"
R = "romeo@localhost"
REMOTE = "mercutio@remote.example"
DELAY = "<delay xmlns='urn:xmpp:delay' from='localhost' stamp='*'/>"


async def mutual(im: Im) -> None:
    """Juliet and Romeo subscribed to each other; Juliet also shares with a remote contact."""
    await im.accounts("juliet", "romeo")
    both = "both"
    await RosterStore(im.redis).write(
        J,
        version="e-1",
        items={R: RosterItem(R, subscription=both), REMOTE: RosterItem(REMOTE, subscription=both)},
    )
    await RosterStore(im.redis).write(R, version="e-1", items={J: RosterItem(J, subscription=both)})


async def leave(im: Im, jid: str, status: str) -> None:
    """Log in, go unavailable with ``status`` and log out: the account's last presence."""
    s = await im.login(jid)
    await im.send(s, f"<presence type='unavailable'><status>{status}</status></presence>")
    await im.logout(s)


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The accounts whose last presence is read through a batch, in order."""
    reads: list[str] = []
    queue_get = LastActivityStore.queue_get

    def counted(pipe: Any, bare: str) -> None:
        reads.append(bare)
        queue_get(pipe, bare)

    monkeypatch.setattr(LastActivityStore, "queue_get", staticmethod(counted))
    return reads


def test_probes_to_a_bound_contact_read_its_last_presence_once(
    redis_client: Any, run_async: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§4.3.2: probes to an account whose session has not sent initial presence are answered
    with its last unavailable presence, read once; a new last presence is read again."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        await leave(im, f"{J}/balcony", "bye")
        j = await im.login(f"{J}/balcony", available=False)
        im.remote.take()
        reads = count_reads(monkeypatch)

        async def no_direct_read(*args: Any) -> Any:
            raise AssertionError("the last presence was read per probe")

        monkeypatch.setattr(im.core.presence.last, "get", no_direct_read)
        gone = (
            f"<presence type='unavailable' from='{J}/balcony' to='{REMOTE}'>"
            f"<status>bye</status>{DELAY}</presence>"
        )
        for _ in range(3):
            await im.receive(f"<presence type='probe' from='{REMOTE}' to='{J}'/>")
            assert_stanzas(im.remote.take(), gone)
        assert reads == [J]
        # Available, then unavailable again: the answer is the new last presence.
        await im.send(j, "<presence/>")
        await im.send(j, "<presence type='unavailable'><status>later</status></presence>")
        im.remote.take()
        await im.receive(f"<presence type='probe' from='{REMOTE}' to='{J}'/>")
        assert_stanzas(im.remote.take(), gone.replace("bye", "later"))
        assert reads.count(J) == 2  # (Romeo's, read ahead for Juliet's probe, is apart)

    run_im(run_async, redis_client, scenario)


def test_probe_to_offline_contact_is_read_ahead(
    redis_client: Any, run_async: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§4.3.2: a contact with no session here answers the probe of initial presence with its
    last unavailable presence, read ahead with the roster item, not per probe."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        await leave(im, f"{R}/orchard", "asleep")
        reads = count_reads(monkeypatch)

        async def no_direct_read(*args: Any) -> Any:
            raise AssertionError("the last presence was read per probe")

        monkeypatch.setattr(im.core.presence.last, "get", no_direct_read)
        j = await im.login(f"{J}/balcony", available=False)
        await im.send(j, "<presence/>")
        out = [p for p in j.take() if p.get("from", "").startswith(R)]
        assert_stanzas(
            out,
            f"<presence type='unavailable' from='{R}/orchard' to='{J}'>"
            f"<status>asleep</status>{DELAY}</presence>",
        )
        assert reads == [R]

    run_im(run_async, redis_client, scenario)


def test_broadcast_skips_contacts_with_nothing_available(
    redis_client: Any, run_async: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.5.2.2.2: a local contact with no available resource would ignore the broadcast, so
    it is not routed; the contact still sees the presence once, through its own probe."""

    async def scenario(im: Im) -> None:
        await mutual(im)
        r = await im.login(f"{R}/orchard", available=False)
        routed: list[tuple[str | None, str]] = []
        route = im.core.router.route

        def recording(stanza: Any, sender: Any, to: Any, *args: Any, **kw: Any) -> Any:
            routed.append((stanza.get("type"), str(to)))
            return route(stanza, sender, to, *args, **kw)

        monkeypatch.setattr(im.core.router, "route", recording)
        await im.login(f"{J}/balcony")
        assert (None, R) not in routed  # the broadcast
        assert ("probe", R) in routed  # the probe goes, and finds Romeo not available
        assert (None, REMOTE) in routed  # a remote contact is always routed
        await im.send(r, "<presence/>")
        assert_stanzas(
            [p for p in r.take() if p.get("from") == f"{J}/balcony"],
            f"<presence from='{J}/balcony' to='{R}'/>",
        )

    run_im(run_async, redis_client, scenario)
