"""XEP-0016 §2.10, §2.11 and XEP-0191 §5.3, §5.4: what a change of privacy lists does to
presence, for the privacy service of core/modules/privacy.py.

* presence-out newly blocked for a contact allowed to see the user's presence (a 'from' or
  'both' subscription, or directed presence): unavailable presence from each available
  resource; allowed again: their current presence;
* presence-in newly blocked for a contact whose available presence the user's resources were
  given: unavailable presence from it, on its behalf; allowed again: a probe to the contacts the
  user is subscribed to, whose answers bring their presence back;
* presence to the bare JID is held back from a session whose own active list refuses it;
* whether the lists hide the account's presence from someone, for the server's answers on the
  account's behalf (XEP-0012 last activity, XEP-0030 §8).
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any

from lxml import etree

from core.storage.privacy import AccountLists, CompiledList, Contact, stanza_kind
from core.xmpp.jid import JID, JIDError, parse_jid
from core.xmpp.stanza import make

if TYPE_CHECKING:
    from core.server import CoreServer
    from core.storage.privacy import PrivacyCache

Element = etree._Element
ACTIVE = "privacy-active"  # session.data: the name of the session's active list
SUBSCRIBED_FROM = ("from", "both")  # RFC 6121: the contact may see the user's presence
SUBSCRIBED_TO = ("to", "both")  # RFC 6121: the user receives the contact's presence


def _data(session: Any) -> dict[str, Any]:
    data = getattr(session, "data", None)
    return data if isinstance(data, dict) else {}


class PresenceEffects:
    """The presence side of the privacy service (mixed into ``PrivacyService``, which provides
    ``roster``, ``contact``, ``_cached_contact`` and ``_inbound_list``)."""

    server: CoreServer
    cache: PrivacyCache

    async def presence_effects(
        self,
        bare: str,
        before: AccountLists,
        after: AccountLists,
        active_before: dict[int, str | None],
    ) -> None:
        """Unavailable presence to each contact that may see the user's presence and for
        which presence-out became blocked; current presence where it became allowed."""
        router = self.server.router
        sessions = router.available_sessions(bare)
        if not sessions:
            return
        roster: dict[str, Any] | None = None
        probes: dict[str, JID] = {}
        for s in sessions:
            active = _data(s).get(ACTIVE)
            old = before.effective(active_before.get(id(s), active))
            new = after.effective(active)
            if (old.rules if old else ()) == (new.rules if new else ()):
                continue
            if roster is None:
                roster = await self.roster(bare)
            watchers: dict[str, JID] = {}
            for jid, item in roster.items():
                if item.subscription in SUBSCRIBED_FROM:
                    with contextlib.suppress(JIDError):
                        watchers[jid] = parse_jid(jid)
            for full, jid in dict(_data(s).get("directed", {})).items():
                watchers.setdefault(full, jid)
            for peer in watchers.values():
                item = roster.get(str(peer.bare))
                contact = (item.subscription, frozenset(item.groups)) if item else None
                was = old is not None and old.denies("presence-out", peer, contact)
                now = new is not None and new.denies("presence-out", peer, contact)
                if was == now:
                    continue
                if now:
                    out = make("presence", type="unavailable", frm=s.full, to=str(peer))
                elif s.presence is not None:
                    out = copy.deepcopy(s.presence)
                    out.set("from", s.full)
                    out.set("to", str(peer))
                else:
                    continue
                pending = router.route(out, s.jid, peer, filtered=True)
                if pending is not None:
                    await pending
            self._presence_in_effects(bare, s, old, new, roster, probes)
        # Contacts whose presence may come in again: ask for it once, for all the resources.
        for contact in probes.values():
            probe = make("presence", type="probe", frm=bare, to=str(contact))
            pending = router.route(probe, parse_jid(bare), contact)
            if pending is not None:
                await pending

    def _presence_in_effects(
        self,
        bare: str,
        session: Any,
        old: CompiledList | None,
        new: CompiledList | None,
        roster: dict[str, Any],
        probes: dict[str, JID],
    ) -> None:
        """§2.10 note: unavailable presence, on the contact's behalf, to ``session`` from each
        contact it saw available and now blocks with presence-in. The contacts the account is
        subscribed to and no longer blocks are added to ``probes``."""

        def contact_of(peer: JID) -> Contact | None:
            item = roster.get(str(peer.bare))
            return (item.subscription, frozenset(item.groups)) if item is not None else None

        def denies(lst: CompiledList | None, peer: JID) -> bool:
            return lst is not None and lst.denies("presence-in", peer, contact_of(peer))

        presence = self.server.presence
        for peer in presence.heard_from(bare) if presence is not None else ():
            if denies(new, peer) and not denies(old, peer):
                session.send(make("presence", type="unavailable", frm=str(peer), to=session.full))
        for jid, item in roster.items():
            if item.subscription not in SUBSCRIBED_TO or jid in probes:
                continue
            with contextlib.suppress(JIDError):
                peer = parse_jid(jid)
                if denies(old, peer) and not denies(new, peer):
                    probes[jid] = peer

    def refuses_for(self, session: Any, stanza: Element, sender: JID) -> bool:
        """Whether the active list of ``session`` refuses inbound presence that was addressed
        to its bare JID. The router decided for the bare JID with the list its sessions share,
        else the default list (§2.2 rule 2); a session with an active list of its own must not
        get what that list blocks (rule 1)."""
        name = _data(session).get(ACTIVE)
        if name is None:
            return False
        lists = self.cache.peek(session.bare)
        compiled = lists.compiled.get(name) if lists is not None else None
        if compiled is None:
            return False
        contact = None
        if compiled.needs_roster:
            known, contact = self._cached_contact(session.bare, sender)
            if not known:
                return False
        return compiled.denies(stanza_kind(stanza, True), sender, contact)

    async def hides_presence(self, owner: str, peer: JID) -> bool:
        """Whether the lists of the account ``owner`` block its presence to ``peer``
        (presence-out), as they apply to the account as a whole: the active list its
        sessions share, else the default list (for XEP-0012 and XEP-0030 §8 answers)."""
        lists = await self.cache.get(owner)
        compiled = self._inbound_list(lists, parse_jid(owner))
        if compiled is None:
            return False
        contact = await self.contact(owner, peer) if compiled.needs_roster else None
        return compiled.denies("presence-out", peer, contact)
