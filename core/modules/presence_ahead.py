"""The probe read-ahead of initial presence (RFC 6121 §4.2.2, §4.3.2), for
core/modules/presence.py.

A session that sends initial presence probes every contact it is subscribed to. Answering the
probe to a local account with no available resource here reads Redis: whether the account
exists, its roster item for the prober, its last unavailable presence. One read per probe is
one round trip per contact (and, in a burst of logins, a new Redis connection for many of
them), so:

* for the contacts with no session here, the reads for a whole roster are made at once before
  the probes go out (``read_ahead``), through the shared pipeline of core/storage/batch.py;
* a contact with a session here that has not sent initial presence yet (a login in progress,
  probed by every contact that comes online meanwhile) has its roster pinned in memory, and
  its last unavailable presence is read once for all the probes it gets (``BoundLast``).

What is read ahead is used only while the contact still has no available resource when its
probe is answered.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.storage.accounts import AccountStore
from core.storage.batch import Batch
from core.storage.last import LastActivityStore, LastPresence, parse_last
from core.storage.roster import RosterItem, RosterStore
from core.xmpp.jid import JID

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Offline:
    """What answering a probe to a local account with no available resource here reads from
    Redis (§4.3.2), read ahead: whether the account exists, its roster item for the prober and
    its last unavailable presence."""

    exists: bool
    item: RosterItem | None
    last: LastPresence | None


def has_available(server: CoreServer, bare: str) -> bool:
    """Whether the account ``bare`` has an available resource on this node."""
    return bool(server.router.available_sessions(bare))


def is_local_account(server: CoreServer, jid: str) -> bool:
    """Whether the bare JID ``jid`` (normalised, as in a roster) names an account here."""
    local, at, domain = jid.partition("@")
    return bool(at and local) and domain == server.domain


async def read_ahead(server: CoreServer, prober: str, contacts: list[str]) -> dict[str, Offline]:
    """For the local accounts among ``contacts`` with no session here, what answering a probe
    from ``prober`` reads, in one round trip shared with the other batches of this turn of the
    event loop. Empty when Redis fails: each probe then reads for itself."""
    router = server.router
    wanted = [c for c in contacts if is_local_account(server, c) and not router.resources(c)]
    if not wanted:
        return {}

    def queue(pipe: Any) -> None:
        for c in wanted:
            AccountStore.queue_exists(pipe, c)
            RosterStore.queue_item(pipe, c, prober)
            LastActivityStore.queue_get(pipe, c)

    batch = Batch(server.redis)
    part = batch.add(queue)
    try:
        await batch.run()
    except Exception:
        log.exception("reading ahead for the probes of %s failed", prober)
        return {}
    replies = part.replies
    out = {}
    for i, c in enumerate(wanted):
        exists, raw_item, raw_last = replies[3 * i : 3 * i + 3]
        item = RosterStore.item_loaded(prober, raw_item)
        out[c] = Offline(bool(exists), item, parse_last(raw_last))
    return out


async def roster_item(
    server: CoreServer, to: JID, contact: str, ahead: Offline | None
) -> RosterItem | None:
    """The item of ``contact`` in the roster of the local account ``to`` (None: no such
    item, or no such account): from memory while the roster is pinned here, else as read
    ahead, else from Redis."""
    rosters = server.rosters
    roster = rosters.cached(str(to))
    if roster is None:
        if ahead is not None:
            return ahead.item if ahead.exists else None
        if not await server.account_exists(to):
            return None
        roster = await rosters.get(str(to))
    return roster.items.get(contact)


class BoundLast:
    """The last unavailable presence of accounts with a session here and no available
    resource, read from Redis once for all the probes that arrive meanwhile (§4.3.2).

    An entry is dropped when the account records a new last presence or comes online
    (``forget``), and when its last session here ends."""

    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self._reads: dict[str, asyncio.Future[LastPresence | None]] = {}

    async def get(self, bare: str) -> LastPresence | None:
        read = self._reads.get(bare)
        if read is None:
            read = self._reads[bare] = asyncio.ensure_future(self._read(bare))
        # Shielded: a prober that goes away does not cancel the others' read.
        return await asyncio.shield(read)

    async def _read(self, bare: str) -> LastPresence | None:
        batch = Batch(self.server.redis)
        part = batch.add(lambda pipe: LastActivityStore.queue_get(pipe, bare))
        try:
            await batch.run()
        except BaseException:
            # Not kept: the next probe reads again.
            if self._reads.get(bare) is asyncio.current_task():
                del self._reads[bare]
            raise
        return parse_last(part.replies[0])

    def forget(self, bare: str) -> None:
        self._reads.pop(bare, None)
