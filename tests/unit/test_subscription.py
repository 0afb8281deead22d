"""Subscription transcripts (RFC 6121 §3): two local accounts, and a contact on another domain
reached through the remote route."""

from __future__ import annotations

from typing import Any

from core.storage.roster import RosterStore
from tests.unit.test_roster_harness import Im, assert_contains, assert_stanzas, run_im

J = "juliet@localhost"
R = "romeo@localhost"
ROSTER = "xmlns='jabber:iq:roster'"


def push(to: str, item: str) -> str:
    return f"<iq type='set' id='*' to='{to}'><query {ROSTER} ver='*'>{item}</query></iq>"


def test_mutual_subscription_between_local_accounts(redis_client: Any, run_async: Any) -> None:
    """§3.1: request, approval, roster pushes on both sides and presence after approval; the
    request is stamped with the bare JID and addressed to the bare JID."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet", "romeo")
        j = await im.login(f"{J}/balcony")
        r = await im.login(f"{R}/orchard")
        await im.send(
            r, f"<presence type='subscribe' to='{J}/balcony'><status>hi</status></presence>"
        )
        assert_stanzas(
            r.take(), push(f"{R}/orchard", f"<item jid='{J}' subscription='none' ask='subscribe'/>")
        )
        assert_stanzas(
            j.take(),
            f"<presence type='subscribe' from='{R}' to='{J}'><status>hi</status></presence>",
        )
        await im.send(j, f"<presence type='subscribed' to='{R}'/>")
        assert_stanzas(j.take(), push(f"{J}/balcony", f"<item jid='{R}' subscription='from'/>"))
        # Romeo: the approval, the push, then Juliet's current presence (§3.1.5, §3.1.6).
        assert_stanzas(
            r.take(),
            push(f"{R}/orchard", f"<item jid='{J}' subscription='to'/>"),
            f"<presence type='subscribed' from='{J}' to='{R}'/>",
            f"<presence from='{J}/balcony' to='{R}'/>",
        )
        # And back the other way: both.
        await im.send(j, f"<presence type='subscribe' to='{R}'/>")
        j.take()
        r.take()
        await im.send(r, f"<presence type='subscribed' to='{J}'/>")
        assert_stanzas(r.take(), push(f"{R}/orchard", f"<item jid='{J}' subscription='both'/>"))
        assert_stanzas(
            j.take(),
            push(f"{J}/balcony", f"<item jid='{R}' subscription='both'/>"),
            f"<presence type='subscribed' from='{R}' to='{J}'/>",
            f"<presence from='{R}/orchard' to='{J}'/>",
        )

    run_im(run_async, redis_client, scenario)


def test_pending_request_redelivered_at_each_login(redis_client: Any, run_async: Any) -> None:
    """§3.1.3: a request to an offline account is stored and delivered at every login until
    answered; then it is gone."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet", "romeo")
        r = await im.login(f"{R}/orchard")
        await im.send(
            r, f"<presence type='subscribe' to='{J}'><status>let me in</status></presence>"
        )
        request = (
            f"<presence type='subscribe' from='{R}' to='{J}'><status>let me in</status></presence>"
        )
        for _ in range(2):
            j = await im.login(f"{J}/balcony", available=False)
            await im.send(j, "<presence/>")
            got = [p for p in j.take() if p.get("type") == "subscribe"]
            assert_stanzas(got, request)
            await im.logout(j)
        # A second request while one is pending is not delivered again (A.3.1).
        j = await im.login(f"{J}/balcony")
        await im.send(r, f"<presence type='subscribe' to='{J}'/>")
        assert [p for p in j.take() if p.get("type") == "subscribe"] == []
        await im.send(j, f"<presence type='unsubscribed' to='{R}'/>")
        await im.logout(j)
        j = await im.login(f"{J}/balcony", available=False)
        await im.send(j, "<presence/>")
        assert [p for p in j.take() if p.get("type") == "subscribe"] == []
        assert (await RosterStore(im.redis).load(J)).pending == {}

    run_im(run_async, redis_client, scenario)


def test_pre_approval(redis_client: Any, run_async: Any) -> None:
    """§3.4: 'subscribed' with nothing pending is kept as approved='true', not routed; the
    contact's later request is approved by the server without asking the user."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        j = await im.login(f"{J}/balcony")
        im.remote.take()
        await im.send(j, "<presence type='subscribed' to='romeo@remote.example'/>")
        assert im.remote.take() == []
        assert_stanzas(
            j.take(),
            push(
                f"{J}/balcony",
                "<item jid='romeo@remote.example' subscription='none' approved='true'/>",
            ),
        )
        # Approving again changes nothing and pushes nothing.
        await im.send(j, "<presence type='subscribed' to='romeo@remote.example'/>")
        assert j.take() == []
        await im.receive(f"<presence type='subscribe' from='romeo@remote.example' to='{J}'/>")
        assert_stanzas(
            j.take(), push(f"{J}/balcony", "<item jid='romeo@remote.example' subscription='from'/>")
        )
        assert_stanzas(
            im.remote.take(),
            f"<presence type='subscribed' from='{J}' to='romeo@remote.example'/>",
            f"<presence from='{J}/balcony' to='romeo@remote.example'/>",
        )

    run_im(run_async, redis_client, scenario)


def test_unsubscribed_withdraws_pre_approval(redis_client: Any, run_async: Any) -> None:
    """§3.4: refusing a contact after pre-approving it withdraws the approval."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        j = await im.login(f"{J}/balcony")
        await im.send(j, "<presence type='subscribed' to='romeo@remote.example'/>")
        j.take()
        await im.send(j, "<presence type='unsubscribed' to='romeo@remote.example'/>")
        assert_stanzas(
            j.take(), push(f"{J}/balcony", "<item jid='romeo@remote.example' subscription='none'/>")
        )
        await im.receive(f"<presence type='subscribe' from='romeo@remote.example' to='{J}'/>")
        assert_stanzas(
            j.take(), f"<presence type='subscribe' from='romeo@remote.example' to='{J}'/>"
        )

    run_im(run_async, redis_client, scenario)


def test_contact_unsubscribes_and_loses_presence(redis_client: Any, run_async: Any) -> None:
    """§3.3.3: when a subscribed contact unsubscribes, the user's server pushes the change
    and sends the contact unavailable presence from each available resource."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        j = await im.login(f"{J}/balcony")
        await im.receive(f"<presence type='subscribe' from='romeo@remote.example' to='{J}'/>")
        await im.send(j, "<presence type='subscribed' to='romeo@remote.example'/>")
        j.take(), im.remote.take()
        await im.receive(f"<presence type='unsubscribe' from='romeo@remote.example' to='{J}'/>")
        assert_stanzas(
            j.take(),
            push(f"{J}/balcony", "<item jid='romeo@remote.example' subscription='none'/>"),
            f"<presence type='unsubscribe' from='romeo@remote.example' to='{J}'/>",
        )
        assert_stanzas(
            im.remote.take(),
            f"<presence type='unavailable' from='{J}/balcony' to='romeo@remote.example'/>",
        )

    run_im(run_async, redis_client, scenario)


def test_cancel_subscription_sends_unavailable(redis_client: Any, run_async: Any) -> None:
    """§3.2.2: when the user cancels a contact's subscription, the contact gets the
    'unsubscribed' and unavailable presence from each available resource."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        j = await im.login(f"{J}/balcony")
        await im.receive(f"<presence type='subscribe' from='romeo@remote.example' to='{J}'/>")
        await im.send(j, "<presence type='subscribed' to='romeo@remote.example'/>")
        j.take(), im.remote.take()
        await im.send(j, "<presence type='unsubscribed' to='romeo@remote.example'/>")
        assert_stanzas(
            im.remote.take(),
            f"<presence type='unsubscribed' from='{J}' to='romeo@remote.example'/>",
            f"<presence type='unavailable' from='{J}/balcony' to='romeo@remote.example'/>",
        )

    run_im(run_async, redis_client, scenario)


def test_subscription_refusals(redis_client: Any, run_async: Any) -> None:
    """Subscribing to oneself or without 'to' is a bad request; a subscription stanza to an
    account that does not exist is ignored (§8.5.1)."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        j = await im.login(f"{J}/balcony")
        await im.send(j, f"<presence type='subscribe' to='{J}'/>")
        await im.send(j, "<presence type='subscribe'/>")
        err = "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'"
        assert_stanzas(
            j.take(),
            f"<presence type='error' from='{J}' to='{J}/balcony'><error type='modify'>"
            f"<bad-request {err}/><text {err}>*</text></error></presence>",
            f"<presence type='error' to='{J}/balcony'><error type='modify'>"
            f"<bad-request {err}/><text {err}>*</text></error></presence>",
        )
        await im.send(j, "<presence type='subscribe' to='nobody@localhost'/>")
        assert (await RosterStore(im.redis).load("nobody@localhost")).pending == {}
        assert_contains(
            j.take(),
            push(
                f"{J}/balcony", "<item jid='nobody@localhost' subscription='none' ask='subscribe'/>"
            ),
        )

    run_im(run_async, redis_client, scenario)


def test_inbound_subscription_to_full_jid_concerns_the_account(
    redis_client: Any, run_async: Any
) -> None:
    """§3.1.3: a request addressed to a full JID is handled as if sent to the bare JID and
    reaches every available resource."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        a = await im.login(f"{J}/a")
        b = await im.login(f"{J}/b")
        a.take(), b.take()
        await im.receive(f"<presence type='subscribe' from='romeo@remote.example/x' to='{J}/a'/>")
        expected = f"<presence type='subscribe' from='romeo@remote.example' to='{J}'/>"
        assert_stanzas(a.take(), expected)
        assert_stanzas(b.take(), expected)

    run_im(run_async, redis_client, scenario)


def test_request_to_a_new_contact_with_a_full_roster(redis_client: Any, run_async: Any) -> None:
    """A subscription request that would add an item to a full roster is refused with
    resource-constraint, as a roster set would be, and goes nowhere."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        j = await im.login(f"{J}/balcony")
        await im.send(
            j,
            "<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='a@x'/></query></iq>",
        )
        j.take(), im.remote.take()
        await im.send(j, "<presence type='subscribe' to='romeo@remote.example'/>")
        assert_stanzas(
            j.take(),
            f"<presence type='error' to='{J}/balcony' from='romeo@remote.example'>"
            "<error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>*</text></error></presence>",
        )
        assert im.remote.take() == []

    run_im(run_async, redis_client, scenario, limits={"roster": {"max_items": 1}})


def test_storage_failure_is_internal_server_error(
    redis_client: Any, run_async: Any, monkeypatch: Any
) -> None:
    """When Redis fails under a subscription change, the client hears internal-server-error
    and nothing is routed."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        j = await im.login(f"{J}/balcony")
        j.take(), im.remote.take()

        async def broken(*args: Any, **kwargs: Any) -> None:
            raise ConnectionError("redis went away")

        monkeypatch.setattr(RosterStore, "write", broken)
        await im.send(j, "<presence type='subscribe' to='romeo@remote.example'/>")
        assert_stanzas(
            j.take(),
            f"<presence type='error' to='{J}/balcony' from='romeo@remote.example'>"
            "<error type='cancel'><internal-server-error "
            "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
        )
        assert im.remote.take() == []

    run_im(run_async, redis_client, scenario)
