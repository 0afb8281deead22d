"""Offline messages (XEP-0160) with delay stamps (XEP-0203): stored while the account has no
available resource, delivered in order at the next non-negative available presence, capped."""

from __future__ import annotations

from typing import Any

from core.storage.offline import OfflineStore
from core.xmpp.jid import parse_jid
from tests.unit.test_roster_harness import Im, assert_stanzas, run_im, xml

J = "juliet@localhost"
R = "romeo@localhost"
ERR = "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'"
DELAY = "<delay xmlns='urn:xmpp:delay' from='localhost' stamp='*'>Offline Storage</delay>"


def test_stored_then_delivered_in_order(redis_client: Any, run_async: Any) -> None:
    """Normal and chat messages wait in Redis, then reach the first resource that becomes
    available, oldest first, stamped, and leave storage."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet", "romeo")
        r = await im.login(f"{R}/orchard")
        await im.send(r, f"<message type='chat' to='{J}' id='1'><body>one</body></message>")
        await im.send(r, f"<message to='{J}/gone' id='2'><body>two</body></message>")
        await im.send(r, f"<message type='normal' to='{J}' id='3'><body>three</body></message>")
        assert r.take() == []
        assert await OfflineStore(im.redis).count(J) == 3
        j = await im.login(f"{J}/balcony", available=False)
        await im.send(j, "<presence/>")
        messages = [s for s in j.take() if s.tag == "{jabber:client}message"]
        frm = f"from='{R}/orchard'"
        assert_stanzas(
            messages,
            f"<message type='chat' to='{J}' id='1' {frm}><body>one</body>{DELAY}</message>",
            f"<message to='{J}/gone' id='2' {frm}><body>two</body>{DELAY}</message>",
            f"<message type='normal' to='{J}' id='3' {frm}><body>three</body>{DELAY}</message>",
        )
        assert await OfflineStore(im.redis).count(J) == 0
        other = await im.login(f"{J}/chamber")
        assert [s for s in other.out if s.tag == "{jabber:client}message"] == []

    run_im(run_async, redis_client, scenario)


def test_negative_priority_waits(redis_client: Any, run_async: Any) -> None:
    """XEP-0160 §2: a resource with a negative priority gets nothing until it raises it."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet", "romeo")
        r = await im.login(f"{R}/orchard")
        await im.send(r, f"<message type='chat' to='{J}'><body>wait</body></message>")
        j = await im.login(f"{J}/balcony", priority=-1)
        await im.send(r, f"<message type='chat' to='{J}'><body>still</body></message>")
        assert await OfflineStore(im.redis).count(J) == 2
        await im.send(j, "<presence><priority>0</priority></presence>")
        bodies = [s.findtext("{jabber:client}body") for s in j.take() if s.tag.endswith("message")]
        assert bodies == ["wait", "still"]

    run_im(run_async, redis_client, scenario)


def test_cap_bounces_with_service_unavailable(redis_client: Any, run_async: Any) -> None:
    """Past the per-account cap the sender gets service-unavailable, the body echoed."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet", "romeo")
        r = await im.login(f"{R}/orchard")
        for n in range(3):
            await im.send(r, f"<message type='chat' to='{J}' id='m{n}'><body>{n}</body></message>")
        assert_stanzas(
            r.take(),
            f"<message type='error' id='m2' to='{R}/orchard' from='{J}'><body>2</body>"
            f"<error type='cancel'><service-unavailable {ERR}/></error></message>",
        )
        assert await OfflineStore(im.redis).count(J) == 2

    run_im(run_async, redis_client, scenario, limits={"offline": {"max_messages": 2}})


def test_what_is_not_stored(redis_client: Any, run_async: Any) -> None:
    """Headline and error messages are dropped, groupchat bounces, chat states alone are not
    worth keeping; a message to an account that does not exist bounces (§8.5.1)."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet", "romeo")
        r = await im.login(f"{R}/orchard")
        await im.send(r, f"<message type='headline' to='{J}'><body>news</body></message>")
        await im.send(r, f"<message type='error' to='{J}'><body>oops</body></message>")
        await im.send(
            r,
            f"<message type='chat' to='{J}'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        )
        assert r.take() == []
        await im.send(r, f"<message type='groupchat' to='{J}' id='g'><body>all</body></message>")
        await im.send(
            r, "<message type='chat' to='nobody@localhost' id='n'><body>hi</body></message>"
        )
        assert [(s.get("id"), s.get("type")) for s in r.take()] == [("g", "error"), ("n", "error")]
        assert await OfflineStore(im.redis).count(J) == 0
        assert await OfflineStore(im.redis).count("nobody@localhost") == 0

    run_im(run_async, redis_client, scenario)


def test_message_stored_during_login_is_not_stranded(redis_client: Any, run_async: Any) -> None:
    """A message that reaches storage just after the resource took the stored ones goes to
    that resource at once instead of waiting for the next login."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        j = await im.login(f"{J}/balcony")
        late = xml(f"<message type='chat' from='{R}/orchard' to='{J}'><body>late</body></message>")
        assert await im.core.offline_store(late, parse_jid(J))
        assert [s.findtext("{jabber:client}body") for s in j.take()] == ["late"]
        assert await OfflineStore(im.redis).count(J) == 0

    run_im(run_async, redis_client, scenario)


def test_stored_messages_outlive_the_core(redis_client: Any, run_async: Any) -> None:
    """Storage is Redis: a new core on the same Redis delivers what the old one stored."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet", "romeo")
        r = await im.login(f"{R}/orchard")
        await im.send(r, f"<message type='chat' to='{J}'><body>kept</body></message>")
        fresh = await Im(im.redis).start()
        try:
            j = await fresh.login(f"{J}/balcony", available=False)
            await fresh.send(j, "<presence/>")
            bodies = [s.findtext("{jabber:client}body") for s in j.take()]
            assert [b for b in bodies if b] == ["kept"]
        finally:
            await fresh.stop()

    run_im(run_async, redis_client, scenario)


def test_disco_advertises_msgoffline(redis_client: Any, run_async: Any) -> None:
    """XEP-0160 §4: the server lists the 'msgoffline' feature, and XEP-0012's namespace."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        j = await im.login(f"{J}/balcony")
        await im.send(
            j,
            "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        [reply] = j.take()
        features = {
            f.get("var") for f in reply.iter("{http://jabber.org/protocol/disco#info}feature")
        }
        assert {"msgoffline", "jabber:iq:last"} <= features

    run_im(run_async, redis_client, scenario)


def test_store_cap_and_take(redis_client: Any, run_async: Any) -> None:
    """The offline store appends up to the cap, then refuses; taking returns everything,
    oldest first, and leaves nothing behind."""

    async def scenario() -> None:
        store = OfflineStore(redis_client)
        assert await store.push(J, b"<m1/>", 2)
        assert await store.push(J, b"<m2/>", 2)
        assert not await store.push(J, b"<m3/>", 2)
        assert await store.take(J) == [b"<m1/>", b"<m2/>"]
        assert await store.take(J) == []
        assert await store.count(J) == 0

    run_async(scenario())
