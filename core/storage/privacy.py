"""Privacy lists (XEP-0016) in Redis: the one store behind simple blocking (XEP-0191) too.

XEP-0191 §3 (Relationship to Privacy Lists): the blocklist is the default privacy list seen
through a narrow window, its items of type 'jid' with action 'deny' that block every kind of
stanza. Blocking puts such items at the head of the default list (creating a default list
named ``blocklist`` when there is none); unblocking removes them; a privacy client that edits
the default list changes the blocklist, and one that picks another default list picks another
blocklist. Both protocols read and write the same two keys, ``keys.privacy`` (list name ->
JSON items) and ``keys.privacy_default`` (the default list's name).

This module also holds the pure rules: parsing and checking items (XEP-0016 §2.1), JID matching
(§2.1, XEP-0191 §4) and finding the first item that applies to a stanza (§2.2 rules 5-7), and
``PrivacyCache``, each node's copy of the lists of its accounts, kept fresh by a Redis pub/sub
channel (``keys.privacy_changes``) on which every writer announces the accounts it changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio
import redis.exceptions
from lxml import etree
from redis.asyncio.client import Pipeline

from core.storage import keys
from core.storage.batch import Batch
from core.xmpp.jid import JID, JIDError, parse_jid
from core.xmpp.ns import NS_PRIVACY, QN_IQ, QN_MESSAGE, QN_PRESENCE, qn

log = logging.getLogger(__name__)
PUBSUB_CLOSE_TIMEOUT = 1.0  # seconds

ACTIONS = ("allow", "deny")
ITEM_TYPES = ("jid", "group", "subscription")
# §2.1: the child elements that narrow an item to some kinds of stanza; none means all.
KINDS = ("message", "iq", "presence-in", "presence-out")
SUBSCRIPTIONS = ("both", "to", "from", "none")
MAX_ORDER = 2**32 - 1  # xs:unsignedInt
BLOCKLIST_NAME = "blocklist"
# Optimistic transactions retried this often before giving up on a hot account.
WRITE_ATTEMPTS = 5

QN_ITEM = qn(NS_PRIVACY, "item")


class InvalidItem(ValueError):
    """A privacy list item that breaks XEP-0016 §2.1 (stanza error ``bad-request``)."""


# -- Items and lists ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrivacyItem:
    """One rule of a privacy list (XEP-0016 §2.1); ``value`` of a 'jid' item is normalised."""

    action: str
    order: int
    type: str | None = None
    value: str | None = None
    kinds: frozenset[str] = frozenset()

    @property
    def blocks(self) -> bool:
        """Whether this item is a blocklist entry (XEP-0191 §3): jid, deny, every stanza."""
        return self.type == "jid" and self.action == "deny" and not self.kinds

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"action": self.action, "order": self.order}
        if self.type is not None:
            data["type"] = self.type
            data["value"] = self.value
        if self.kinds:
            data["kinds"] = sorted(self.kinds)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrivacyItem:
        return cls(
            action=data["action"],
            order=int(data["order"]),
            type=data.get("type"),
            value=data.get("value"),
            kinds=frozenset(data.get("kinds", ())),
        )

    def to_element(self) -> etree._Element:
        el = etree.Element(QN_ITEM, nsmap={None: NS_PRIVACY})
        if self.type is not None:
            el.set("type", self.type)
            el.set("value", self.value or "")
        el.set("action", self.action)
        el.set("order", str(self.order))
        for kind in KINDS:
            if kind in self.kinds:
                etree.SubElement(el, qn(NS_PRIVACY, kind))
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> PrivacyItem:
        """Read and check one ``<item/>``; raises InvalidItem."""
        action = el.get("action")
        if action not in ACTIONS:
            raise InvalidItem("an item's action is 'allow' or 'deny'")
        raw_order = el.get("order", "")
        if not raw_order.isascii() or not raw_order.isdigit() or int(raw_order) > MAX_ORDER:
            raise InvalidItem("an item's order is a non-negative integer")
        itype = el.get("type")
        value = el.get("value")
        if itype is None:
            value = None
        elif itype not in ITEM_TYPES:
            raise InvalidItem(f"unknown item type {itype!r}")
        elif value is None:
            raise InvalidItem(f"an item of type {itype!r} needs a value")
        elif itype == "jid":
            try:
                value = str(parse_jid(value))
            except JIDError as e:
                raise InvalidItem(f"invalid JID {value!r}: {e}") from None
        elif itype == "subscription" and value not in SUBSCRIPTIONS:
            raise InvalidItem("a subscription item's value is both, to, from or none")
        kinds = set()
        for c in el:
            if not isinstance(c.tag, str):
                continue
            local = c.tag.rpartition("}")[2]
            if c.tag != qn(NS_PRIVACY, local) or local not in KINDS:
                raise InvalidItem(f"unknown item child <{local}/>")
            kinds.add(local)
        return cls(action, int(raw_order), itype, value, frozenset(kinds))


def check_orders(items: Iterable[PrivacyItem]) -> None:
    """§2.1: the order of each item is unique in its list."""
    seen: set[int] = set()
    for item in items:
        if item.order in seen:
            raise InvalidItem(f"two items have the order {item.order}")
        seen.add(item.order)


def blocking_item(jid: str, order: int) -> PrivacyItem:
    return PrivacyItem("deny", order, "jid", jid)


@dataclass(frozen=True)
class PrivacyLists:
    """All privacy lists of one account and the name of its default list."""

    lists: dict[str, tuple[PrivacyItem, ...]] = field(default_factory=dict)
    default: str | None = None

    @property
    def empty(self) -> bool:
        return not self.lists

    def blocklist(self) -> list[str]:
        """XEP-0191 §3: the JIDs the default list blocks outright, in list order."""
        if self.default is None:
            return []
        return [i.value or "" for i in self.lists.get(self.default, ()) if i.blocks]

    def with_list(self, name: str, items: Iterable[PrivacyItem]) -> PrivacyLists:
        lists = dict(self.lists)
        lists[name] = tuple(sorted(items, key=lambda i: i.order))
        return replace(self, lists=lists)

    def without_list(self, name: str) -> PrivacyLists:
        lists = dict(self.lists)
        lists.pop(name, None)
        return PrivacyLists(lists, None if self.default == name else self.default)

    def with_default(self, name: str | None) -> PrivacyLists:
        return replace(self, default=name)

    def blocking(self, jids: Iterable[str]) -> PrivacyLists:
        """Block ``jids``: new jid/deny items at the head of the default list (XEP-0191 §3
        wants them first), which is created when there is none. Items already there keep
        their relative order, so what the list means for other JIDs does not change."""
        lists = self
        name = self.default
        if name is None:
            name = BLOCKLIST_NAME
            n = 1
            while name in self.lists:
                n += 1
                name = f"{BLOCKLIST_NAME}-{n}"
            lists = replace(self, default=name)
        current = lists.lists.get(name, ())
        have = {i.value for i in current if i.blocks}
        new: list[str] = []
        for jid in jids:
            if jid not in have and jid not in new:
                new.append(jid)
        if not new and name in lists.lists:
            return lists
        lowest = min((i.order for i in current), default=len(new))
        if lowest >= len(new):
            head = [blocking_item(jid, n) for n, jid in enumerate(new)]
            return lists.with_list(name, [*head, *current])
        # No room below the existing orders: number the whole list again, keeping its order.
        items = [blocking_item(jid, 0) for jid in new] + list(current)
        return lists.with_list(name, [replace(i, order=n) for n, i in enumerate(items)])

    def unblocking(self, jids: Iterable[str] | None) -> PrivacyLists:
        """Unblock ``jids`` (None: every blocked JID); a default list left empty is removed."""
        if self.default is None or self.default not in self.lists:
            return self
        drop = None if jids is None else set(jids)
        current = self.lists[self.default]
        kept = [i for i in current if not (i.blocks and (drop is None or i.value in drop))]
        if len(kept) == len(current):
            return self
        if not kept:
            return self.without_list(self.default)
        return self.with_list(self.default, kept)

    def to_redis(self) -> tuple[dict[bytes, bytes], bytes | None]:
        lists = {
            name.encode(): json.dumps([i.to_json() for i in items], separators=(",", ":")).encode()
            for name, items in self.lists.items()
        }
        return lists, self.default.encode() if self.default is not None else None

    @classmethod
    def from_redis(cls, raw_lists: dict[bytes, bytes], raw_default: bytes | None) -> PrivacyLists:
        lists = {}
        for name, raw in raw_lists.items():
            items = [PrivacyItem.from_json(d) for d in json.loads(raw)]
            lists[name.decode()] = tuple(sorted(items, key=lambda i: i.order))
        default = raw_default.decode() if raw_default is not None else None
        return cls(lists, default if default in lists else None)


# -- Matching (XEP-0016 §2.1, §2.2) -------------------------------------------------------


def jid_matches(item: JID, peer: JID) -> bool:
    """§2.1 / XEP-0191 §4: user@domain/resource matches only that resource; user@domain any
    resource; domain/resource that resource at the domain; domain the domain itself, every
    address at it and every address at its subdomains."""
    if item.local is not None:
        if item.local != peer.local or item.domain != peer.domain:
            return False
        return item.resource is None or item.resource == peer.resource
    if item.resource is not None:
        return item.domain == peer.domain and item.resource == peer.resource
    return peer.domain == item.domain or peer.domain.endswith("." + item.domain)


# What the user's roster says of a contact: (subscription, groups).
Contact = tuple[str, frozenset[str]]
NOT_IN_ROSTER: Contact = ("none", frozenset())


@dataclass(frozen=True, slots=True)
class Rule:
    item: PrivacyItem
    jid: JID | None

    def applies(self, kind: str | None, peer: JID, contact: Contact | None) -> bool:
        item = self.item
        if item.kinds and kind not in item.kinds:
            return False
        if item.type is None:
            return True
        if self.jid is not None:
            return jid_matches(self.jid, peer)
        sub, groups = contact or NOT_IN_ROSTER
        if item.type == "subscription":
            return sub == item.value
        return item.value in groups


class CompiledList:
    """A privacy list ready to be applied: items in ascending order (§2.2 rule 5)."""

    __slots__ = ("name", "needs_roster", "rules")

    def __init__(self, name: str, items: Iterable[PrivacyItem]) -> None:
        self.name = name
        rules = []
        for item in sorted(items, key=lambda i: i.order):
            jid = parse_jid(item.value) if item.type == "jid" and item.value else None
            rules.append(Rule(item, jid))
        self.rules = tuple(rules)
        self.needs_roster = any(r.item.type in ("group", "subscription") for r in rules)

    def first_match(
        self, kind: str | None, peer: JID, contact: Contact | None = None
    ) -> PrivacyItem | None:
        """The first item that applies (§2.2 rule 6); None means the fall-through 'allow'
        (rule 7). ``kind`` is message, iq, presence-in or presence-out; None (another
        kind of stanza) is matched only by items that apply to every stanza."""
        for rule in self.rules:
            if rule.applies(kind, peer, contact):
                return rule.item
        return None

    def denies(self, kind: str | None, peer: JID, contact: Contact | None = None) -> bool:
        item = self.first_match(kind, peer, contact)
        return item is not None and item.action == "deny"


def stanza_kind(stanza: etree._Element, inbound: bool) -> str | None:
    """Which §2.1 child element governs ``stanza``; None: only items for every stanza."""
    tag = stanza.tag
    if tag == QN_MESSAGE:
        return "message" if inbound else None
    if tag == QN_IQ:
        return "iq" if inbound else None
    if tag == QN_PRESENCE and stanza.get("type") in (None, "unavailable"):
        # §2: presence notifications only; subscriptions and probes are not among them.
        return "presence-in" if inbound else "presence-out"
    return None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A stanza that a list refuses: out of the account (``outbound``) or into it."""

    outbound: bool
    item: PrivacyItem

    @property
    def blocked(self) -> bool:
        """A blocklist entry of XEP-0191 matched (the error then says <blocked/>)."""
        return self.item.blocks


def verdict(
    stanza: etree._Element,
    sender: JID,
    to: JID,
    out_list: CompiledList | None,
    out_contact: Contact | None,
    in_list: CompiledList | None,
    in_contact: Contact | None,
) -> Refusal | None:
    """The refusal that the sender's list (out) or else the recipient's list (in) makes."""
    if out_list is not None:
        item = out_list.first_match(stanza_kind(stanza, False), to, out_contact)
        if item is not None and item.action == "deny":
            return Refusal(True, item)
    if in_list is not None:
        item = in_list.first_match(stanza_kind(stanza, True), sender, in_contact)
        if item is not None and item.action == "deny":
            return Refusal(False, item)
    return None


@dataclass(slots=True)
class AccountLists:
    """One account's lists as a node keeps them: as stored, and compiled."""

    data: PrivacyLists
    compiled: dict[str, CompiledList]

    @classmethod
    def of(cls, data: PrivacyLists) -> AccountLists:
        return cls(data, {name: CompiledList(name, items) for name, items in data.lists.items()})

    @property
    def empty(self) -> bool:
        return not self.compiled

    @property
    def default(self) -> CompiledList | None:
        name = self.data.default
        return self.compiled.get(name) if name is not None else None

    def effective(self, active: str | None) -> CompiledList | None:
        """§2.2 rules 1-3: the session's active list, else the default list, else none."""
        if active is not None:
            found = self.compiled.get(active)
            if found is not None:
                return found
        return self.default


EMPTY = AccountLists(PrivacyLists(), {})


# -- The store ---------------------------------------------------------------------------


class PrivacyStore:
    """Load and change one account's privacy lists; each change is one optimistic
    transaction on the account's two keys, retried when another writer got there first."""

    def __init__(self, redis: redis.asyncio.Redis) -> None:
        self._redis = redis

    async def load(self, bare: str) -> PrivacyLists:
        async with self._redis.pipeline(transaction=True) as pipe:
            self.queue_load(pipe, bare)
            return self.loaded(await pipe.execute())

    @staticmethod
    def queue_load(pipe: Pipeline, bare: str) -> None:
        """Queue the reads of ``load`` on a transaction (``core.storage.batch``)."""
        pipe.hgetall(keys.privacy(bare))
        pipe.get(keys.privacy_default(bare))

    @staticmethod
    def loaded(replies: list[Any]) -> PrivacyLists:
        """The lists from the replies to the commands ``queue_load`` queued."""
        raw_lists, raw_default = replies
        return PrivacyLists.from_redis(raw_lists, raw_default)

    async def update(
        self, bare: str, change: Callable[[PrivacyLists], PrivacyLists]
    ) -> tuple[PrivacyLists, PrivacyLists]:
        """Apply ``change`` (which may raise to refuse) to the stored lists and write the
        result; returns (before, after)."""
        k_lists, k_default = keys.privacy(bare), keys.privacy_default(bare)
        for _ in range(WRITE_ATTEMPTS):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(k_lists, k_default)
                    raw_lists = await pipe.hgetall(k_lists)
                    raw_default = await pipe.get(k_default)
                    before = PrivacyLists.from_redis(raw_lists, raw_default)
                    after = change(before)
                    if after == before:
                        await pipe.unwatch()
                        return before, after
                    lists, default = after.to_redis()
                    pipe.multi()
                    gone = [name for name in raw_lists if name not in lists]
                    if gone:
                        pipe.hdel(k_lists, *gone)
                    changed = {n: v for n, v in lists.items() if raw_lists.get(n) != v}
                    if changed:
                        pipe.hset(k_lists, mapping=changed)
                    if default is None:
                        pipe.delete(k_default)
                    else:
                        pipe.set(k_default, default)
                    await pipe.execute()
                    return before, after
                except redis.exceptions.WatchError:
                    continue
        raise RuntimeError(f"privacy lists of {bare} kept changing; gave up")


# -- Each node's copy ----------------------------------------------------------------------


class PrivacyCache:
    """The lists of this node's accounts in memory: the accounts with a session here (kept
    while they are online) and a bounded number of others (recently used). A change made on
    this node updates the copy and is announced on ``keys.privacy_changes``; an announcement
    from another node drops the copy, which the next use loads again."""

    def __init__(
        self,
        store: PrivacyStore,
        redis: redis.asyncio.Redis,
        node_id: str,
        *,
        is_online: Callable[[str], bool],
        recent_size: int = 1024,
    ) -> None:
        self.store = store
        self._redis = redis
        self.node_id = node_id
        self.is_online = is_online
        self.recent_size = recent_size
        self.online: dict[str, AccountLists] = {}
        self.recent: OrderedDict[str, AccountLists] = OrderedDict()
        # Counts invalidations, so a load that overlapped one is not kept.
        self._epoch = 0
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def peek(self, bare: str) -> AccountLists | None:
        """The cached lists of ``bare``, or None when they must be loaded."""
        found = self.online.get(bare)
        if found is None:
            found = self.recent.get(bare)
        return found

    async def get(self, bare: str) -> AccountLists:
        found = self.peek(bare)
        if found is not None:
            return found
        epoch = self._epoch
        data = await self.store.load(bare)
        lists = EMPTY if data.empty else AccountLists.of(data)
        if epoch == self._epoch:
            self._keep(bare, lists)
        return lists

    def prefetch(self, bare: str, batch: Batch) -> None:
        """Load the lists of ``bare`` with ``batch`` unless they are cached; like ``get``, a
        load that overlapped a change is not kept (the next ``get`` loads again)."""
        if self.peek(bare) is not None:
            return
        epoch = self._epoch

        def done(replies: list[Any]) -> None:
            if epoch == self._epoch and self.peek(bare) is None:
                data = self.store.loaded(replies)
                self._keep(bare, EMPTY if data.empty else AccountLists.of(data))

        batch.add(lambda pipe: self.store.queue_load(pipe, bare), done, key=("privacy", bare))

    def _keep(self, bare: str, lists: AccountLists) -> None:
        if self.is_online(bare):
            self.recent.pop(bare, None)
            self.online[bare] = lists
            return
        self.online.pop(bare, None)
        self.recent[bare] = lists
        self.recent.move_to_end(bare)
        while len(self.recent) > self.recent_size:
            self.recent.popitem(last=False)

    def went_offline(self, bare: str) -> None:
        """The account's last session here ended: its lists become an ordinary cache entry."""
        found = self.online.pop(bare, None)
        if found is not None:
            self._keep(bare, found)

    async def changed(self, bare: str, data: PrivacyLists) -> AccountLists:
        """A change written on this node: update the copy, then tell the other nodes."""
        lists = EMPTY if data.empty else AccountLists.of(data)
        self._epoch += 1
        self._keep(bare, lists)
        try:
            await self._redis.publish(keys.privacy_changes(), f"{self.node_id} {bare}".encode())
        except (redis.exceptions.RedisError, OSError):
            log.warning("could not announce the privacy change of %s", bare, exc_info=True)
        return lists

    def forget(self, bare: str | None = None) -> None:
        """Drop the copy of ``bare`` (None: of every account)."""
        self._epoch += 1
        if bare is None:
            self.online.clear()
            self.recent.clear()
        else:
            self.online.pop(bare, None)
            self.recent.pop(bare, None)

    def on_announcement(self, data: bytes) -> str | None:
        """Handle one message of the channel; returns the account dropped, if any."""
        node, _, bare = data.decode("utf-8", "replace").partition(" ")
        if node == self.node_id or not bare:
            return None
        self.forget(bare)
        return bare

    # The pub/sub listener ------------------------------------------------------------

    def start(self, reload: Callable[[str], Any] | None = None) -> None:
        """Listen to announcements until ``stop``; ``reload(bare)`` is called for each
        account whose copy was dropped while it is online here."""
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen(reload))

    async def wait_subscribed(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    async def stop(self) -> None:
        task, self._listener = self._listener, None
        if task is not None:
            task.cancel()
            # Bounded: redis-py's pub/sub read can absorb a cancellation, and stopping the
            # server must not wait on it.
            await asyncio.wait([task], timeout=PUBSUB_CLOSE_TIMEOUT)

    async def _listen(self, reload: Callable[[str], Any] | None) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(keys.privacy_changes())
                # Announcements sent while nobody listened are lost: start afresh.
                self.forget()
                self._subscribed.set()
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    bare = self.on_announcement(message["data"])
                    if bare is not None and reload is not None and self.is_online(bare):
                        reload(bare)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._subscribed.clear()
                log.warning("privacy announcements: listener failed, retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                try:
                    # Bounded: closing a pub/sub connection cancelled mid-command can wait
                    # forever on the connection, and shutdown must not.
                    await asyncio.wait_for(pubsub.aclose(), PUBSUB_CLOSE_TIMEOUT)
                except Exception:
                    log.debug("closing the privacy pub/sub connection failed", exc_info=True)
