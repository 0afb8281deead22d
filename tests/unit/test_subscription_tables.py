"""RFC 6121 Appendix A, row by row: every subscription stanza in every one of the nine states.

The expectations below are transcribed from the RFC's tables independently of the module's own
tables, and each row runs against a real core: the account's roster is put in the state, the
stanza is sent (A.2, by the account's client to a contact on another domain) or received (A.3,
from that contact), and the test checks what is routed or delivered, the state written to
Redis and the roster push.
"""

from __future__ import annotations

from typing import Any

import pytest

from core.modules.subscription import state_of
from core.storage.roster import RosterItem, RosterStore
from tests.unit.test_roster_harness import Im, run_im

USER = "juliet@localhost"
CONTACT = "romeo@remote.example"

# State name -> (subscription, ask='subscribe', pending inbound request), Appendix A.1.
STATES: dict[str, tuple[str, bool, bool]] = {
    "None": ("none", False, False),
    "None + Pending Out": ("none", True, False),
    "None + Pending In": ("none", False, True),
    "None + Pending Out+In": ("none", True, True),
    "To": ("to", False, False),
    "To + Pending In": ("to", False, True),
    "From": ("from", False, False),
    "From + Pending Out": ("from", True, False),
    "Both": ("both", False, False),
}
SAME = None  # "no state change"

# A.2: (stanza type, existing state, routed to the contact?, resulting state).
OUTBOUND = [
    # A.2.1 Subscribe
    ("subscribe", "None", True, "None + Pending Out"),
    ("subscribe", "None + Pending Out", True, SAME),
    ("subscribe", "None + Pending In", True, "None + Pending Out+In"),
    ("subscribe", "None + Pending Out+In", True, SAME),
    ("subscribe", "To", True, SAME),
    ("subscribe", "To + Pending In", True, SAME),
    ("subscribe", "From", True, "From + Pending Out"),
    ("subscribe", "From + Pending Out", True, SAME),
    ("subscribe", "Both", True, SAME),
    # A.2.2 Unsubscribe
    ("unsubscribe", "None", True, SAME),
    ("unsubscribe", "None + Pending Out", True, "None"),
    ("unsubscribe", "None + Pending In", True, SAME),
    ("unsubscribe", "None + Pending Out+In", True, "None + Pending In"),
    ("unsubscribe", "To", True, "None"),
    ("unsubscribe", "To + Pending In", True, "None + Pending In"),
    ("unsubscribe", "From", True, SAME),
    ("unsubscribe", "From + Pending Out", True, "From"),
    ("unsubscribe", "Both", True, "From"),
    # A.2.3 Subscribed
    ("subscribed", "None", False, SAME),
    ("subscribed", "None + Pending Out", False, SAME),
    ("subscribed", "None + Pending In", True, "From"),
    ("subscribed", "None + Pending Out+In", True, "From + Pending Out"),
    ("subscribed", "To", False, SAME),
    ("subscribed", "To + Pending In", True, "Both"),
    ("subscribed", "From", False, SAME),
    ("subscribed", "From + Pending Out", False, SAME),
    ("subscribed", "Both", False, SAME),
    # A.2.4 Unsubscribed
    ("unsubscribed", "None", False, SAME),
    ("unsubscribed", "None + Pending Out", False, SAME),
    ("unsubscribed", "None + Pending In", True, "None"),
    ("unsubscribed", "None + Pending Out+In", True, "None + Pending Out"),
    ("unsubscribed", "To", False, SAME),
    ("unsubscribed", "To + Pending In", True, "To"),
    ("unsubscribed", "From", True, "None"),
    ("unsubscribed", "From + Pending Out", True, "None + Pending Out"),
    ("unsubscribed", "Both", True, "To"),
]

# A.3: (stanza type, existing state, delivered to the user?, resulting state); for subscribe
# in From, From + Pending Out and Both the server replies 'subscribed' itself (A.3.1 "*").
INBOUND = [
    # A.3.1 Subscribe
    ("subscribe", "None", True, "None + Pending In"),
    ("subscribe", "None + Pending Out", True, "None + Pending Out+In"),
    ("subscribe", "None + Pending In", False, SAME),
    ("subscribe", "None + Pending Out+In", False, SAME),
    ("subscribe", "To", True, "To + Pending In"),
    ("subscribe", "To + Pending In", False, SAME),
    ("subscribe", "From", False, SAME),
    ("subscribe", "From + Pending Out", False, SAME),
    ("subscribe", "Both", False, SAME),
    # A.3.2 Unsubscribe
    ("unsubscribe", "None", False, SAME),
    ("unsubscribe", "None + Pending Out", False, SAME),
    ("unsubscribe", "None + Pending In", True, "None"),
    ("unsubscribe", "None + Pending Out+In", True, "None + Pending Out"),
    ("unsubscribe", "To", False, SAME),
    ("unsubscribe", "To + Pending In", True, "To"),
    ("unsubscribe", "From", True, "None"),
    ("unsubscribe", "From + Pending Out", True, "None + Pending Out"),
    ("unsubscribe", "Both", True, "To"),
    # A.3.3 Subscribed
    ("subscribed", "None", False, SAME),
    ("subscribed", "None + Pending Out", True, "To"),
    ("subscribed", "None + Pending In", False, SAME),
    ("subscribed", "None + Pending Out+In", True, "To + Pending In"),
    ("subscribed", "To", False, SAME),
    ("subscribed", "To + Pending In", False, SAME),
    ("subscribed", "From", False, SAME),
    ("subscribed", "From + Pending Out", True, "Both"),
    ("subscribed", "Both", False, SAME),
    # A.3.4 Unsubscribed
    ("unsubscribed", "None", False, SAME),
    ("unsubscribed", "None + Pending Out", True, "None"),
    ("unsubscribed", "None + Pending In", False, SAME),
    ("unsubscribed", "None + Pending Out+In", True, "None + Pending In"),
    ("unsubscribed", "To", True, "None"),
    ("unsubscribed", "To + Pending In", True, "None + Pending In"),
    ("unsubscribed", "From", False, SAME),
    ("unsubscribed", "From + Pending Out", True, "From"),
    ("unsubscribed", "Both", True, "From"),
]
AUTO_REPLY = {("subscribe", "From"), ("subscribe", "From + Pending Out"), ("subscribe", "Both")}
# §3.4: an outbound 'subscribed' where nothing is pending is a pre-approval.
PREAPPROVAL = {"None", "None + Pending Out", "To"}


def _visible(state: str) -> tuple[str, bool]:
    sub, ask, _pending = STATES[state]
    return sub, ask


async def _setup(im: Im, state: str, with_item: bool) -> None:
    sub, ask, pending = STATES[state]
    items = {CONTACT: RosterItem(CONTACT, subscription=sub, ask=ask)} if with_item else {}
    request = f"<presence xmlns='jabber:client' type='subscribe' from='{CONTACT}' to='{USER}'/>"
    stored = {CONTACT: request.encode()}
    await RosterStore(im.redis).write(
        USER, version="e-1", items=items, pending=stored if pending else {}
    )


def _needs_item(state: str) -> bool:
    sub, ask, _ = STATES[state]
    return sub != "none" or ask


def _cases(rows: list[tuple[str, str, bool, str | None]]) -> list[Any]:
    out = []
    for stype, state, passes, new in rows:
        variants = [True] if _needs_item(state) else [True, False]
        for with_item in variants:
            suffix = "" if with_item else " (not in roster)"
            out.append(
                pytest.param(
                    stype, state, passes, new or state, with_item, id=f"{stype}: {state}{suffix}"
                )
            )
    return out


async def _state_in_redis(im: Im) -> tuple[str, RosterItem | None]:
    roster = await RosterStore(im.redis).load(USER)
    item = roster.items.get(CONTACT)
    return state_of(item, CONTACT in roster.pending).value, item


def _pushes(session: Any) -> list[Any]:
    return [s for s in session.out if s.tag == "{jabber:client}iq" and s.get("type") == "set"]


@pytest.mark.parametrize(("stype", "old", "routed", "new", "with_item"), _cases(OUTBOUND))
def test_outbound_row(
    redis_client: Any,
    run_async: Any,
    stype: str,
    old: str,
    routed: bool,
    new: str,
    with_item: bool,
) -> None:
    """Appendix A.2: the user's server routes (or not) and moves to the resulting state."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        await _setup(im, old, with_item)
        s = await im.login(f"{USER}/balcony", available=False)
        await im.send(s, f"<presence type='{stype}' to='{CONTACT}'/>")
        sent = im.remote.take()
        if routed:
            assert [(p.get("type"), p.get("from"), p.get("to")) for p in sent][:1] == [
                (stype, USER, CONTACT)
            ]
        else:
            assert [p for p in sent if p.get("type") == stype] == []
        state, item = await _state_in_redis(im)
        assert state == new
        preapproval = stype == "subscribed" and old in PREAPPROVAL
        if preapproval:
            assert item is not None and item.approved
        changed = (with_item or _needs_item(new)) and (
            not with_item or _visible(old) != _visible(new)
        )
        assert len(_pushes(s)) == (1 if changed or preapproval else 0)

    run_im(run_async, redis_client, scenario)


@pytest.mark.parametrize(("stype", "old", "delivered", "new", "with_item"), _cases(INBOUND))
def test_inbound_row(
    redis_client: Any,
    run_async: Any,
    stype: str,
    old: str,
    delivered: bool,
    new: str,
    with_item: bool,
) -> None:
    """Appendix A.3: the contact's server delivers (or not), answers (A.3.1 "*") and moves to
    the resulting state."""

    async def scenario(im: Im) -> None:
        await im.accounts("juliet")
        await _setup(im, old, with_item)
        s = await im.login(f"{USER}/balcony", available=False)
        s.available = True  # available, but without the initial presence's side effects
        await im.receive(f"<presence type='{stype}' from='{CONTACT}/orchard' to='{USER}'/>")
        got = [p for p in s.out if p.tag == "{jabber:client}presence"]
        if delivered:
            assert [(p.get("type"), p.get("from")) for p in got] == [(stype, CONTACT)]
        else:
            assert got == []
        replies = [(p.get("type"), p.get("from"), p.get("to")) for p in im.remote.take()]
        if (stype, old) in AUTO_REPLY:
            assert replies == [("subscribed", USER, CONTACT)]
        else:
            assert ("subscribed", USER, CONTACT) not in replies
        state, _item = await _state_in_redis(im)
        assert state == new
        changed = (with_item or _needs_item(new)) and (
            not with_item or _visible(old) != _visible(new)
        )
        assert len(_pushes(s)) == (1 if changed else 0)

    run_im(run_async, redis_client, scenario)


def test_every_state_and_type_has_a_row() -> None:
    """The transcribed tables are complete: four types by nine states, each way."""
    for rows in (OUTBOUND, INBOUND):
        assert {(t, s) for t, s, _, _ in rows} == {
            (t, s)
            for t in ("subscribe", "unsubscribe", "subscribed", "unsubscribed")
            for s in STATES
        }
