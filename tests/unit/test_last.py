"""Last Activity (XEP-0012): server uptime, and when an account last went offline, shown only
to those allowed to see its presence."""

from __future__ import annotations

from typing import Any

from core.storage.last import LastActivityStore
from core.storage.roster import RosterItem, RosterStore
from tests.unit.test_roster_harness import Im, assert_stanzas, run_im

J = "juliet@localhost"
R = "romeo@localhost"
LAST = "xmlns='jabber:iq:last'"
ERR = "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'"


def _ask(to: str) -> str:
    return f"<iq type='get' id='l' to='{to}'><query {LAST}/></iq>"


def test_server_uptime(redis_client: Any, run_async: Any) -> None:
    """XEP-0012 §5: the server answers with its uptime in seconds, without text."""

    async def scenario(im: Im) -> None:
        await im.accounts("romeo")
        r = await im.login(f"{R}/orchard")
        im.core.started_at -= 100
        await im.send(r, _ask("localhost"))
        [reply] = r.take()
        query = reply.find("{jabber:iq:last}query")
        assert reply.get("type") == "result" and reply.get("from") == "localhost"
        assert 100 <= int(query.get("seconds")) < 110 and not query.text

    run_im(run_async, redis_client, scenario)


def test_offline_contact(redis_client: Any, run_async: Any) -> None:
    """XEP-0012 §3: a subscribed contact learns how long ago the account logged out and the
    status it left with; 0 while it has an available resource."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet", "romeo")
        await RosterStore(im.redis).write(
            J, version="e-1", items={R: RosterItem(R, subscription="from")}
        )
        r = await im.login(f"{R}/orchard")
        j = await im.login(f"{J}/balcony")
        r.take()
        await im.send(r, _ask(J))
        assert_stanzas(
            r.take(),
            f"<iq type='result' id='l' to='{R}/orchard' from='{J}'>"
            f"<query {LAST} seconds='0'/></iq>",
        )
        await im.send(j, "<presence type='unavailable'><status>Heading home</status></presence>")
        await im.logout(j)
        r.take()
        await im.send(r, _ask(J))
        assert_stanzas(
            r.take(),
            f"<iq type='result' id='l' to='{R}/orchard' from='{J}'>"
            f"<query {LAST} seconds='*'>Heading home</query></iq>",
        )

    run_im(run_async, redis_client, scenario)


def test_refusals(redis_client: Any, run_async: Any) -> None:
    """XEP-0012 §3: someone without a subscription is forbidden; an account that never went
    offline has no last activity (service-unavailable, as ejabberd and Prosody answer)."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet", "romeo")
        r = await im.login(f"{R}/orchard")
        await im.send(r, _ask(J))
        assert_stanzas(
            r.take(),
            f"<iq type='error' id='l' to='{R}/orchard' from='{J}'><query {LAST}/>"
            f"<error type='auth'><forbidden {ERR}/><text {ERR}>*</text></error></iq>",
        )
        await RosterStore(im.redis).write(
            J, version="e-1", items={R: RosterItem(R, subscription="both")}
        )
        await im.send(r, _ask(J))
        assert_stanzas(
            r.take(),
            f"<iq type='error' id='l' to='{R}/orchard' from='{J}'><query {LAST}/>"
            f"<error type='cancel'><service-unavailable {ERR}/><text {ERR}>*</text></error></iq>",
        )

    run_im(run_async, redis_client, scenario)


def test_privacy_and_unknown_accounts(redis_client: Any, run_async: Any) -> None:
    """XEP-0012 §8: a subscribed contact from whom the account hides its presence
    (presence-out in its default privacy list) is forbidden too; an account that does not
    exist gives the same forbidden as one that does, so the answer reveals no account."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet", "romeo")
        await RosterStore(im.redis).write(
            J, version="e-1", items={R: RosterItem(R, subscription="both")}
        )
        j = await im.login(f"{J}/balcony")
        r = await im.login(f"{R}/orchard")
        await im.send(r, _ask(J))
        assert [s.get("type") for s in r.take() if s.get("id") == "l"] == ["result"]
        hide = (
            "<iq type='set' id='p1'><query xmlns='jabber:iq:privacy'><list name='hide'>"
            f"<item type='jid' value='{R}' action='deny' order='1'><presence-out/></item>"
            "</list></query></iq>"
        )
        await im.send(j, hide)
        await im.send(
            j,
            "<iq type='set' id='p2'><query xmlns='jabber:iq:privacy'>"
            "<default name='hide'/></query></iq>",
        )
        await im.logout(j)
        forbidden = f"<error type='auth'><forbidden {ERR}/><text {ERR}>*</text></error>"
        for to in (J, "nobody@localhost"):
            await im.send(r, _ask(to))
            assert_stanzas(
                r.take(),
                f"<iq type='error' id='l' to='{R}/orchard' from='{to}'><query {LAST}/>"
                f"{forbidden}</iq>",
            )

    run_im(run_async, redis_client, scenario)


def test_last_activity_store(redis_client: Any, run_async: Any) -> None:
    """The store keeps the time and the presence; nothing recorded reads as None."""

    async def scenario() -> None:
        store = LastActivityStore(redis_client)
        assert await store.get(J) is None
        await store.record(J, 1234.5, b"<presence type='unavailable'/>")
        last = await store.get(J)
        assert last is not None
        assert (last.time, last.presence) == (1234.5, b"<presence type='unavailable'/>")

    run_async(scenario())
