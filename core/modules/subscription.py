"""Presence subscriptions: the state machine of RFC 6121 §3 and Appendix A, as data.

A subscription state is one of the nine states of Appendix A.1, seen from the account that owns
the roster. The tables below are Appendix A.2 (stanzas the account sends) and A.3 (stanzas the
account receives), row for row; ``outbound`` and ``inbound`` apply them to a roster, write the
result, push the changed item and route what the RFC says to route.

Pre-approval (§3.4) is the ``approved`` flag of a roster item: a ``subscribed`` sent in a state
where nothing is pending sets it; a later ``subscribe`` from that contact is then approved by
the server without asking the user.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from core.storage.roster import RosterItem
from core.xmpp.errors import StanzaError
from core.xmpp.jid import JID
from core.xmpp.stanza import make, serialize

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)

SUBSCRIPTION_TYPES = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})


class State(Enum):
    """The nine subscription states of RFC 6121 Appendix A.1."""

    NONE = "None"
    NONE_OUT = "None + Pending Out"
    NONE_IN = "None + Pending In"
    NONE_OUT_IN = "None + Pending Out+In"
    TO = "To"
    TO_IN = "To + Pending In"
    FROM = "From"
    FROM_OUT = "From + Pending Out"
    BOTH = "Both"

    @property
    def subscription(self) -> str:
        """The roster's 'subscription' attribute for this state."""
        return _PARTS[self][0]

    @property
    def pending_out(self) -> bool:
        """ask='subscribe' in the roster."""
        return _PARTS[self][1]

    @property
    def pending_in(self) -> bool:
        return _PARTS[self][2]

    @property
    def contact_subscribed(self) -> bool:
        """The contact receives the account's presence ('from' or 'both')."""
        return self.subscription in ("from", "both")

    @property
    def subscribed_to_contact(self) -> bool:
        """The account receives the contact's presence ('to' or 'both')."""
        return self.subscription in ("to", "both")


# state -> (subscription attribute, pending out, pending in)
_PARTS: dict[State, tuple[str, bool, bool]] = {
    State.NONE: ("none", False, False),
    State.NONE_OUT: ("none", True, False),
    State.NONE_IN: ("none", False, True),
    State.NONE_OUT_IN: ("none", True, True),
    State.TO: ("to", False, False),
    State.TO_IN: ("to", False, True),
    State.FROM: ("from", False, False),
    State.FROM_OUT: ("from", True, False),
    State.BOTH: ("both", False, False),
}
_BY_PARTS = {parts: state for state, parts in _PARTS.items()}


def state_of(item: RosterItem | None, pending_in: bool) -> State:
    """The Appendix A state of a contact; no item counts as 'None' (A.1 implementation note).
    Combinations that Appendix A does not name (a request to a contact one is already
    subscribed to, a pending request from a contact already subscribed) drop the part that no
    longer means anything."""
    sub = item.subscription if item is not None else "none"
    ask = item.ask if item is not None else False
    if sub in ("to", "both"):
        ask = False  # already subscribed: nothing to ask
    if sub in ("from", "both"):
        pending_in = False  # already approved: nothing pending
    return _BY_PARTS[(sub, ask, pending_in)]


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of an Appendix A table: whether the stanza goes on (routed to the contact for
    outbound stanzas, delivered to the account's resources for inbound ones) and the state
    after it. ``auto_reply``: the server answers 'subscribed' on the account's behalf (A.3.1)."""

    passes: bool
    new: State | None = None
    auto_reply: bool = False

    def after(self, state: State) -> State:
        return state if self.new is None else self.new


S = State
_ = None  # "no state change"

# RFC 6121 Appendix A.2: outbound stanzas, from the account to the contact. 'passes' is
# "route to the contact". A.2 requires every subscribe and unsubscribe to be routed so that
# the contact's server can resynchronise.
OUTBOUND: dict[str, dict[State, Rule]] = {
    # A.2.1
    "subscribe": {
        S.NONE: Rule(True, S.NONE_OUT),
        S.NONE_OUT: Rule(True, _),
        S.NONE_IN: Rule(True, S.NONE_OUT_IN),
        S.NONE_OUT_IN: Rule(True, _),
        S.TO: Rule(True, _),
        S.TO_IN: Rule(True, _),
        S.FROM: Rule(True, S.FROM_OUT),
        S.FROM_OUT: Rule(True, _),
        S.BOTH: Rule(True, _),
    },
    # A.2.2
    "unsubscribe": {
        S.NONE: Rule(True, _),
        S.NONE_OUT: Rule(True, S.NONE),
        S.NONE_IN: Rule(True, _),
        S.NONE_OUT_IN: Rule(True, S.NONE_IN),
        S.TO: Rule(True, S.NONE),
        S.TO_IN: Rule(True, S.NONE_IN),
        S.FROM: Rule(True, _),
        S.FROM_OUT: Rule(True, S.FROM),
        S.BOTH: Rule(True, S.FROM),
    },
    # A.2.3 (in 'None', 'None + Pending Out' and 'To' a 'subscribed' is a pre-approval, §3.4)
    "subscribed": {
        S.NONE: Rule(False, _),
        S.NONE_OUT: Rule(False, _),
        S.NONE_IN: Rule(True, S.FROM),
        S.NONE_OUT_IN: Rule(True, S.FROM_OUT),
        S.TO: Rule(False, _),
        S.TO_IN: Rule(True, S.BOTH),
        S.FROM: Rule(False, _),
        S.FROM_OUT: Rule(False, _),
        S.BOTH: Rule(False, _),
    },
    # A.2.4
    "unsubscribed": {
        S.NONE: Rule(False, _),
        S.NONE_OUT: Rule(False, _),
        S.NONE_IN: Rule(True, S.NONE),
        S.NONE_OUT_IN: Rule(True, S.NONE_OUT),
        S.TO: Rule(False, _),
        S.TO_IN: Rule(True, S.TO),
        S.FROM: Rule(True, S.NONE),
        S.FROM_OUT: Rule(True, S.NONE_OUT),
        S.BOTH: Rule(True, S.TO),
    },
}

# RFC 6121 Appendix A.3: inbound stanzas, from the contact to the account. 'passes' is
# "deliver to the account's available resources".
INBOUND: dict[str, dict[State, Rule]] = {
    # A.3.1 (*: the server replies 'subscribed' on the account's behalf)
    "subscribe": {
        S.NONE: Rule(True, S.NONE_IN),
        S.NONE_OUT: Rule(True, S.NONE_OUT_IN),
        S.NONE_IN: Rule(False, _),
        S.NONE_OUT_IN: Rule(False, _),
        S.TO: Rule(True, S.TO_IN),
        S.TO_IN: Rule(False, _),
        S.FROM: Rule(False, _, auto_reply=True),
        S.FROM_OUT: Rule(False, _, auto_reply=True),
        S.BOTH: Rule(False, _, auto_reply=True),
    },
    # A.3.2
    "unsubscribe": {
        S.NONE: Rule(False, _),
        S.NONE_OUT: Rule(False, _),
        S.NONE_IN: Rule(True, S.NONE),
        S.NONE_OUT_IN: Rule(True, S.NONE_OUT),
        S.TO: Rule(False, _),
        S.TO_IN: Rule(True, S.TO),
        S.FROM: Rule(True, S.NONE),
        S.FROM_OUT: Rule(True, S.NONE_OUT),
        S.BOTH: Rule(True, S.TO),
    },
    # A.3.3
    "subscribed": {
        S.NONE: Rule(False, _),
        S.NONE_OUT: Rule(True, S.TO),
        S.NONE_IN: Rule(False, _),
        S.NONE_OUT_IN: Rule(True, S.TO_IN),
        S.TO: Rule(False, _),
        S.TO_IN: Rule(False, _),
        S.FROM: Rule(False, _),
        S.FROM_OUT: Rule(True, S.BOTH),
        S.BOTH: Rule(False, _),
    },
    # A.3.4
    "unsubscribed": {
        S.NONE: Rule(False, _),
        S.NONE_OUT: Rule(True, S.NONE),
        S.NONE_IN: Rule(False, _),
        S.NONE_OUT_IN: Rule(True, S.NONE_IN),
        S.TO: Rule(True, S.NONE),
        S.TO_IN: Rule(True, S.NONE_IN),
        S.FROM: Rule(False, _),
        S.FROM_OUT: Rule(True, S.FROM),
        S.BOTH: Rule(True, S.FROM),
    },
}

# §3.4: states in which an outbound 'subscribed' records a pre-approval instead of being routed,
# and the state a pre-approved inbound 'subscribe' leads to.
PREAPPROVABLE = {S.NONE: S.FROM, S.NONE_OUT: S.FROM_OUT, S.TO: S.BOTH}


def apply_state(item: RosterItem | None, contact: str, old: State, new: State) -> RosterItem | None:
    """The roster item after moving from ``old`` to ``new``: None when there is no item and
    the new state needs none (a pending inbound request alone is not a roster item)."""
    if item is None:
        if new.subscription == "none" and not new.pending_out:
            return None
        item = RosterItem(contact)
    if old == new:
        return item
    return item.evolve(subscription=new.subscription, ask=new.pending_out)


# Processing -------------------------------------------------------------------------------


def _presence(type: str | None, frm: str, to: str) -> Any:
    return make("presence", type=type, frm=frm, to=to)


def _readdressed(stanza: Any, frm: str, to: str) -> Any:
    """The stanza (id, status, extensions and all) between the two bare JIDs."""
    out = copy.deepcopy(stanza)
    out.set("from", frm)
    out.set("to", to)
    return out


async def route(server: CoreServer, stanza: Any, sender: JID, to: JID) -> None:
    """Route a stanza the server generates and wait until routing is done (the router returns
    an awaitable when the decision needs I/O, such as a subscription to a local account)."""
    pending = server.router.route(stanza, sender, to)
    if pending is not None:
        await pending


async def outbound(server: CoreServer, stanza: Any, user: JID, contact: JID) -> None:
    """A subscription stanza the account ``user`` sends to ``contact`` (RFC 6121 §3.1.2,
    §3.1.5, §3.2.2, §3.3.2, §3.4; Appendix A.2)."""
    stype = stanza.get("type")
    bare, cbare = str(user.bare), str(contact.bare)
    rosters = server.rosters
    routed = False
    lost_contact_presence = False
    async with rosters.lock(bare):
        roster = await rosters.get(bare)
        item = roster.items.get(cbare)
        old = state_of(item, cbare in roster.pending)
        items: dict[str, RosterItem | None] = {}
        pending: dict[str, bytes | None] = {}
        if item is None and len(roster.items) >= rosters.limits.max_items:
            # Both would add an item to a full roster, as a roster set would.
            if stype in ("subscribe", "subscribed"):
                raise StanzaError(
                    "resource-constraint",
                    f"a roster holds at most {rosters.limits.max_items} items",
                )
        if stype == "subscribed" and old in PREAPPROVABLE:
            # §3.4.2: nothing to approve yet: remember the approval, route nothing.
            if item is None or not item.approved:
                items[cbare] = (item or RosterItem(cbare)).evolve(approved=True)
                await rosters.save(bare, roster, items=items)
            return
        rule = OUTBOUND[stype][old]
        new = rule.after(old)
        new_item = apply_state(item, cbare, old, new)
        if stype == "unsubscribed" and new_item is not None and new_item.approved:
            # Refusing the contact also withdraws a pre-approval (§3.4).
            new_item = new_item.evolve(approved=False)
        if new_item != item:
            items[cbare] = new_item
        if old.pending_in and not new.pending_in:
            pending[cbare] = None
        if items or pending:
            await rosters.save(bare, roster, items=items, pending=pending)
        routed = rule.passes
        lost_contact_presence = old.contact_subscribed and not new.contact_subscribed
    if not routed:
        return
    # §3.1.2: the user's server stamps the bare JID; the request concerns the bare JIDs.
    await route(server, _readdressed(stanza, bare, cbare), user.bare, contact.bare)
    presence = server.presence
    if stype == "subscribed" and presence is not None:
        # §3.1.5: the contact now receives the user's presence: send the current one.
        await presence.send_current(bare, contact.bare)
    elif lost_contact_presence and presence is not None:
        # §3.2.2: the contact no longer sees the user: say the user is gone.
        await presence.send_unavailable(bare, contact.bare)


async def inbound(server: CoreServer, stanza: Any, contact: JID, user: JID) -> None:
    """A subscription stanza from ``contact`` to the local account ``user`` (RFC 6121
    §3.1.3, §3.1.6, §3.2.3, §3.3.3, §3.4; Appendix A.3)."""
    stype = stanza.get("type")
    bare, cbare = str(user.bare), str(contact.bare)
    rosters = server.rosters
    deliver = auto_reply = approved_now = False
    lost_contact_presence = False
    out = _readdressed(stanza, cbare, bare)
    async with rosters.lock(bare):
        roster = await rosters.get(bare)
        item = roster.items.get(cbare)
        old = state_of(item, cbare in roster.pending)
        items: dict[str, RosterItem | None] = {}
        pending: dict[str, bytes | None] = {}
        if stype == "subscribe" and item is not None and item.approved and old in PREAPPROVABLE:
            # §3.4: pre-approved: approve on the user's behalf, deliver nothing.
            new = PREAPPROVABLE[old]
            items[cbare] = item.evolve(
                subscription=new.subscription, ask=new.pending_out, approved=False
            )
            auto_reply = approved_now = True
        else:
            rule = INBOUND[stype][old]
            new = rule.after(old)
            new_item = apply_state(item, cbare, old, new)
            if new_item != item:
                items[cbare] = new_item
            if new.pending_in and not old.pending_in:
                # §3.1.3: kept until the user answers, and delivered again at each login.
                pending[cbare] = serialize(out)
            elif old.pending_in and not new.pending_in:
                pending[cbare] = None
            deliver = rule.passes
            auto_reply = rule.auto_reply
            lost_contact_presence = old.contact_subscribed and not new.contact_subscribed
        if items or pending:
            await rosters.save(bare, roster, items=items, pending=pending)
    if deliver:
        presence = server.presence
        if presence is not None:
            presence.deliver_to_available(bare, out)
    if auto_reply:
        await route(server, _presence("subscribed", bare, cbare), user.bare, contact.bare)
    presence = server.presence
    if presence is None:
        return
    if approved_now:
        await presence.send_current(bare, contact.bare)
    elif lost_contact_presence:
        # §3.3.3: the contact cancelled its subscription: it sees the user go away.
        await presence.send_unavailable(bare, contact.bare)
