"""Routes to external components (XEP-0114): the live links of each component domain, the
choice of a link for each stanza, the answer when there is none, and the link records in Redis.

* ``instances = "replace"`` (the default): one link per domain; a new link replaces the old
  one, which gets a ``<conflict/>`` stream error.
* ``instances = "shard"``: several links per domain, told apart by instance id. Each stanza
  goes to exactly one live instance, chosen by rendezvous (highest random weight) hashing of
  its key over the instance ids, so adding or removing an instance moves only the keys that
  instance wins or held. The key is the bare ``to`` JID (a room, a node); for stanzas to the
  domain itself (or ``domain/resource``) it is the sender's bare JID, so one user's traffic to
  the service stays on one instance. An IQ result or error going back to an IQ that an
  instance sent goes to that instance, whatever the hash says.
* No live link: ``remote-server-timeout`` (type wait) while the domain lost its last link less
  than ``component_listener.grace_period`` seconds ago (it is expected back), else
  ``service-unavailable``. A domain whose component never connected is service-unavailable.
  Nothing is queued.

Redis (see ``core.storage.keys``): ``component-links:{<domain>}`` maps instance -> node id;
``component-link:{<domain>}/<instance>`` holds the node id with a TTL refreshed by the node
heartbeat, so the records of a crashed node expire; ``component-down:{<domain>}`` marks a lost
link for the grace period, so a restarted node still answers ``remote-server-timeout`` for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from lxml import etree

from core.runtime.config import ComponentConfig
from core.sessions import HEARTBEAT, TTL
from core.storage import keys
from core.xmpp.errors import StanzaError, StreamError
from core.xmpp.jid import JIDError, parse_jid
from core.xmpp.ns import QN_IQ

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)
Element = etree._Element

# How long, and for how many IQs, a shard instance's outstanding IQs pin their replies to it.
IQ_AFFINITY_SECONDS = 120.0
IQ_AFFINITY_MAX = 10000


class Link(Protocol):
    """What routing needs of a component link (core.component_listener.ComponentStream)."""

    domain: str
    instance: str
    peer: str

    def deliver(self, stanza: Element) -> None: ...

    def close_with(self, error: StreamError) -> None: ...


def rendezvous_weight(key: str, instance: str) -> int:
    """The weight of ``instance`` for ``key``: a stable 64-bit hash of both."""
    digest = hashlib.blake2b(f"{instance}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(key: str, instances: Iterable[str]) -> str | None:
    """The instance with the highest weight for ``key`` (ties: the smallest id); None if none.

    Removing an instance moves only the keys it won; adding one moves only the keys it wins."""
    best: str | None = None
    best_weight = -1
    for instance in instances:
        weight = rendezvous_weight(key, instance)
        if weight > best_weight or (weight == best_weight and best is not None and instance < best):
            best, best_weight = instance, weight
    return best


class DomainRoute:
    """The router's route (core.router.Route) for one configured component domain."""

    def __init__(self, routes: ComponentRoutes, name: str, config: ComponentConfig) -> None:
        self.routes = routes
        self.name = name
        self.domain = config.domain
        self.secret = config.secret
        self.shard = config.instances == "shard"
        self.links: dict[str, Link] = {}
        # Clock time at which the domain lost its last link; None while linked or never linked.
        self.down_since: float | None = None
        self._iq_owner: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    # Routing ---------------------------------------------------------------------------

    def send(self, stanza: Element) -> None:
        """Deliver ``stanza`` to the link that serves it, or bounce it with an error."""
        to = stanza.get("to")
        if to is not None:
            # Components get prepared addresses (RFC 7622), as the router compared them.
            stanza.set("to", _norm(to))
        link = self.pick(stanza)
        if link is not None:
            link.deliver(stanza)
            return
        self.routes.bounce(stanza, self.unavailable_error())

    def unavailable_error(self) -> StanzaError:
        grace = self.routes.grace_period
        if self.down_since is not None and self.routes.now() - self.down_since < grace:
            return StanzaError("remote-server-timeout", f"{self.domain} is reconnecting")
        return StanzaError("service-unavailable")

    def pick(self, stanza: Element) -> Link | None:
        """The link for ``stanza``: the only one, or the shard instance that owns its key."""
        if not self.links:
            return None
        if not self.shard:
            return next(iter(self.links.values()))
        if stanza.tag == QN_IQ and stanza.get("type") in ("result", "error"):
            owner = self._iq_owner.pop((_norm(stanza.get("to")), stanza.get("id", "")), None)
            if owner is not None and owner[0] in self.links:
                return self.links[owner[0]]
        instance = rendezvous(self.shard_key(stanza), self.links)
        return self.links[instance] if instance is not None else None

    def shard_key(self, stanza: Element) -> str:
        """The bare ``to`` JID; the sender's bare JID for stanzas to the domain itself."""
        try:
            to = parse_jid(stanza.get("to") or self.domain)
        except JIDError:
            return stanza.get("to") or ""
        if to.local is not None:
            return f"{to.local}@{to.domain}"
        try:
            return str(parse_jid(stanza.get("from") or "").bare)
        except JIDError:
            return stanza.get("from") or ""

    def remember_iq(self, stanza: Element, instance: str) -> None:
        """Pin the reply to an IQ get/set sent by ``instance`` to that instance (shard)."""
        if not self.shard:
            return
        now = self.routes.now()
        owners = self._iq_owner
        # Bounded: expired entries leave from the front, and the oldest when full.
        while owners:
            first = next(iter(owners.values()))
            if first[1] > now and len(owners) < IQ_AFFINITY_MAX:
                break
            owners.popitem(last=False)
        key = (_norm(stanza.get("from")), stanza.get("id", ""))
        owners[key] = (instance, now + IQ_AFFINITY_SECONDS)

    def instances(self) -> list[str]:
        return sorted(self.links)


def _norm(text: str | None) -> str:
    if not text:
        return ""
    try:
        return str(parse_jid(text))
    except JIDError:
        return text


class ComponentRoutes:
    """Every configured component domain, its live links on this node, and their records."""

    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self.node_id = server.node_id
        self.grace_period = server.config.component_listener.grace_period
        self.domains: dict[str, DomainRoute] = {
            c.domain: DomainRoute(self, name, c)
            for name, c in server.config.components.items()
            if c.domain
        }
        server.router.domain_routes.update(self.domains)
        self._lock = asyncio.Lock()
        self._beat: Any = None

    def now(self) -> float:
        return float(self.server.reactor.seconds())

    @property
    def redis(self) -> Any:
        return self.server.redis

    def route(self, domain: str) -> DomainRoute | None:
        return self.domains.get(domain)

    def links(self) -> list[Link]:
        return [link for route in self.domains.values() for link in route.links.values()]

    def bounce(self, stanza: Element, error: StanzaError) -> None:
        """Answer ``stanza`` with ``error`` on behalf of the component (never an error to an
        error, RFC 6120 §8.3.1)."""
        self.server.router.deliver_error(stanza, error)

    # Links -----------------------------------------------------------------------------

    def link_up(self, link: Link) -> None:
        """Make ``link`` live; the link it replaces (same domain, or same shard instance)
        gets ``<conflict/>``."""
        route = self.domains[link.domain]
        if route.shard:
            replaced = [route.links[link.instance]] if link.instance in route.links else []
        else:
            replaced = list(route.links.values())
        for old in replaced:
            del route.links[old.instance]
            log.info(
                "component link replaced: %s instance %s by %s",
                link.domain,
                old.instance,
                link.peer,
            )
            old.close_with(StreamError("conflict", "replaced by a new connection"))
            self._sync(route, old.instance)
        route.links[link.instance] = link
        route.down_since = None
        log.info(
            "component link up: %s instance %s from %s (%d live)",
            link.domain,
            link.instance,
            link.peer,
            len(route.links),
        )
        self._sync(route, link.instance)

    def link_down(self, link: Link, reason: str) -> None:
        """Forget ``link`` (if it is still the live one for its instance)."""
        route = self.domains.get(link.domain)
        if route is None or route.links.get(link.instance) is not link:
            return
        del route.links[link.instance]
        if not route.links:
            route.down_since = self.now()
        log.info(
            "component link down: %s instance %s from %s: %s (%d live)",
            link.domain,
            link.instance,
            link.peer,
            reason,
            len(route.links),
        )
        self._sync(route, link.instance)

    # Redis records ---------------------------------------------------------------------

    def _sync(self, route: DomainRoute, instance: str) -> None:
        self.server.spawn(self._write(route, instance))

    async def _write(self, route: DomainRoute, instance: str) -> None:
        """Write the current state of one link; the state is read when the write runs, so
        writes that run late or out of order still leave Redis right."""
        async with self._lock:
            domain = route.domain
            pipe = self.redis.pipeline(transaction=True)
            if instance in route.links:
                pipe.hset(keys.component_links(domain), instance, self.node_id)
                pipe.set(keys.component_link(domain, instance), self.node_id, ex=TTL)
                pipe.delete(keys.component_down(domain))
            else:
                # Only this node's record: the instance may have linked to another node since.
                owner = await self.redis.hget(keys.component_links(domain), instance)
                if owner is None or owner.decode() == self.node_id:
                    pipe.hdel(keys.component_links(domain), instance)
                    pipe.delete(keys.component_link(domain, instance))
                if not route.links and route.down_since is not None and self.grace_period > 0:
                    left = self.grace_period - (self.now() - route.down_since)
                    if left > 0:
                        pipe.set(keys.component_down(domain), self.node_id, px=int(left * 1000))
            await pipe.execute()

    async def heartbeat(self) -> None:
        """Refresh the TTL of this node's link records (DESIGN: live state carries a TTL)."""
        links = self.links()
        if not links:
            return
        pipe = self.redis.pipeline(transaction=False)
        for link in links:
            pipe.set(keys.component_link(link.domain, link.instance), self.node_id, ex=TTL)
        await pipe.execute()

    async def start(self) -> None:
        """Remove records left by this node's last run and by nodes whose links expired, and
        resume the grace period of domains that lost their link shortly before."""
        for route in self.domains.values():
            domain = route.domain
            records = await self.redis.hgetall(keys.component_links(domain))
            stale = []
            for raw_instance, raw_node in records.items():
                instance, node = raw_instance.decode(), raw_node.decode()
                if node == self.node_id or not await self.redis.exists(
                    keys.component_link(domain, instance)
                ):
                    stale.append(instance)
            if stale:
                pipe = self.redis.pipeline(transaction=True)
                pipe.hdel(keys.component_links(domain), *stale)
                for instance in stale:
                    pipe.delete(keys.component_link(domain, instance))
                await pipe.execute()
                log.info("removed %d stale link records of component %s", len(stale), domain)
            left_ms = await self.redis.pttl(keys.component_down(domain))
            if left_ms > 0 and not route.links:
                route.down_since = self.now() - max(0.0, self.grace_period - left_ms / 1000)
        from twisted.internet.task import LoopingCall

        self._beat = LoopingCall(lambda: self.server.spawn(self.heartbeat()))
        self._beat.clock = self.server.reactor
        self._beat.start(HEARTBEAT, now=False)

    def close_all(self, error: StreamError) -> None:
        """Close every link of this node (server shutdown)."""
        for link in self.links():
            link.close_with(error)

    async def stop(self) -> None:
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        async with self._lock:
            pass  # let pending writes finish first
        pipe = self.redis.pipeline(transaction=False)
        for route in self.domains.values():
            for instance, link in list(route.links.items()):
                pipe.hdel(keys.component_links(route.domain), instance)
                pipe.delete(keys.component_link(route.domain, link.instance))
        await pipe.execute()
