"""Where a remote domain's server listens (RFC 6120 §3.2, XEP-0368, RFC 2782).

In order: the static map ``s2s.hosts`` (private deployments, tests); an IP-literal domain as
itself; the SRV records ``_xmpps-server._tcp`` (direct TLS) and ``_xmpp-server._tcp``
(STARTTLS), looked up in parallel with twisted.names and merged by priority and weight; when
there are none, the domain itself on port 5269 (§3.2.2). A lone SRV record whose target is
"." says the service is not offered there (RFC 2782).
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

log = logging.getLogger(__name__)

DEFAULT_PORT = 5269
# Short DNS timeouts: an unreachable resolver must not hold stanzas longer than the link's
# own connect timeout.
DNS_TIMEOUT = (1, 3)

Lookup = Callable[[str], "defer.Deferred[Any]"]


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    direct_tls: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}{' (direct TLS)' if self.direct_tls else ''}"


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str
    direct_tls: bool


def parse_address(address: str) -> Target:
    """``host:port`` or ``[v6]:port`` from the static map."""
    host, _, port = address.rpartition(":")
    return Target(host.strip("[]"), int(port))


def ip_literal(domain: str) -> str | None:
    """The address of an IP-literal domain (``127.0.0.1``, ``[::1]``), else None."""
    try:
        return str(ipaddress.ip_address(domain.strip("[]")))
    except ValueError:
        return None


def order_records(records: list[SrvRecord], rng: random.Random | None = None) -> list[Target]:
    """Targets in RFC 2782 order: lowest priority first, weighted random within a priority
    (XEP-0368 §3: direct TLS and STARTTLS records form one set)."""
    rng = rng or random.Random()
    out: list[Target] = []
    for prio in sorted({r.priority for r in records}):
        # RFC 2782: zero-weight records first, so that they have a small chance of being
        # picked; then pick by running sum.
        group = sorted((r for r in records if r.priority == prio), key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total) if total else 0
            running = 0
            for i, r in enumerate(group):
                running += r.weight
                if running >= pick:
                    out.append(Target(r.target, r.port, r.direct_tls))
                    del group[i]
                    break
    return out


async def resolve(
    domain: str,
    *,
    hosts: dict[str, str],
    lookup: Lookup | None,
    rng: random.Random | None = None,
) -> list[Target]:
    """The addresses to try for ``domain``, best first; [] when it offers no XMPP service."""
    if domain in hosts:
        return [parse_address(hosts[domain])]
    ip = ip_literal(domain)
    if ip is not None:
        return [Target(ip, DEFAULT_PORT)]
    if lookup is None:
        return [Target(domain, DEFAULT_PORT)]
    names = ((f"_xmpps-server._tcp.{domain}", True), (f"_xmpp-server._tcp.{domain}", False))
    results = await defer.DeferredList([lookup(name) for name, _ in names], consumeErrors=True)  # type: ignore[misc]
    records: list[SrvRecord] = []
    declined = 0
    for (name, direct), (ok, result) in zip(names, results, strict=True):
        if not ok:
            log.debug("SRV %s: %s", name, result.getErrorMessage())
            continue
        found = _srv_records(result, direct)
        if len(found) == 1 and found[0].target in ("", "."):
            declined += 1  # RFC 2782: "service decidedly not available at this domain"
            continue
        records.extend(r for r in found if r.target not in ("", "."))
    if records:
        return order_records(records, rng)
    if declined:
        return []
    return [Target(domain, DEFAULT_PORT)]


def _srv_records(result: Any, direct: bool) -> list[SrvRecord]:
    from twisted.names import dns

    answers = result[0] if isinstance(result, tuple) else result
    out = []
    for rr in answers:
        if rr.type != dns.SRV:
            continue
        p = rr.payload
        target = p.target.name.decode("ascii", "replace").rstrip(".") or "."
        out.append(SrvRecord(p.priority, p.weight, p.port, target, direct))
    return out


def dns_lookup() -> Lookup:
    """A non-blocking SRV lookup with twisted.names, using the system's resolv.conf."""
    from twisted.names import client

    resolver = client.createResolver()

    def lookup(name: str) -> defer.Deferred[Any]:
        return resolver.lookupService(name, timeout=DNS_TIMEOUT)

    return lookup
