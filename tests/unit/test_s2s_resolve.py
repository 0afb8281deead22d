"""Finding a remote domain's server: static map, SRV (RFC 2782, XEP-0368), fallback."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer
from twisted.names import dns, error

from core.s2s.resolve import SrvRecord, Target, order_records, resolve


def srv(priority: int, weight: int, port: int, target: str) -> dns.RRHeader:
    return dns.RRHeader(
        name=b"x", type=dns.SRV, payload=dns.Record_SRV(priority, weight, port, target.encode())
    )


def lookup_from(answers: dict[str, list[dns.RRHeader]]) -> Any:
    """A twisted.names-style lookup: NXDOMAIN for names it does not know."""
    asked: list[str] = []

    def lookup(name: str) -> defer.Deferred[Any]:
        asked.append(name)
        if name not in answers:
            return defer.fail(error.DNSNameError(name))
        return defer.succeed((answers[name], [], []))

    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


def run(coro: Any) -> Any:
    d = defer.ensureDeferred(coro)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the lookup did not finish"
    if isinstance(results[0], Exception):
        raise results[0]
    return results[0]


def test_static_map_and_ip_literals_skip_dns() -> None:
    """s2s.hosts wins; an IP-literal domain is its own address; neither asks DNS."""
    lookup = lookup_from({})
    hosts = {"private.example": "10.1.2.3:5999", "v6.example": "[::1]:5270"}
    assert run(resolve("private.example", hosts=hosts, lookup=lookup)) == [Target("10.1.2.3", 5999)]
    assert run(resolve("v6.example", hosts=hosts, lookup=lookup)) == [Target("::1", 5270)]
    assert run(resolve("192.0.2.7", hosts={}, lookup=lookup)) == [Target("192.0.2.7", 5269)]
    assert run(resolve("[2001:db8::1]", hosts={}, lookup=lookup)) == [Target("2001:db8::1", 5269)]
    assert lookup.asked == []


def test_srv_records_of_both_services_are_merged() -> None:
    """_xmpps-server (direct TLS) and _xmpp-server records form one set ordered by priority."""
    lookup = lookup_from(
        {
            "_xmpps-server._tcp.example.net": [srv(5, 0, 5270, "tls.example.net")],
            "_xmpp-server._tcp.example.net": [
                srv(10, 0, 5269, "backup.example.net"),
                srv(1, 0, 5269, "main.example.net"),
            ],
        }
    )
    targets = run(resolve("example.net", hosts={}, lookup=lookup))
    assert targets == [
        Target("main.example.net", 5269),
        Target("tls.example.net", 5270, direct_tls=True),
        Target("backup.example.net", 5269),
    ]
    assert sorted(lookup.asked) == [
        "_xmpp-server._tcp.example.net",
        "_xmpps-server._tcp.example.net",
    ]


def test_no_records_fall_back_to_the_domain() -> None:
    """RFC 6120 §3.2.2: no SRV records (NXDOMAIN, timeouts) → the domain on 5269."""
    assert run(resolve("plain.example", hosts={}, lookup=lookup_from({}))) == [
        Target("plain.example", 5269)
    ]


def test_dot_target_means_no_service() -> None:
    """RFC 2782: a single record with target '.' says the service is not offered."""
    lookup = lookup_from({"_xmpp-server._tcp.nope.example": [srv(0, 0, 0, "")]})
    assert run(resolve("nope.example", hosts={}, lookup=lookup)) == []


def test_weighted_order_within_a_priority() -> None:
    """Within one priority, heavier records come first more often; every record appears."""
    records = [
        SrvRecord(1, 90, 5269, "heavy", False),
        SrvRecord(1, 10, 5269, "light", False),
        SrvRecord(2, 0, 5269, "last", False),
    ]
    rng = random.Random(7)
    firsts = [order_records(records, rng)[0].host for _ in range(400)]
    assert 300 < firsts.count("heavy") < 400
    for _ in range(20):
        order = [t.host for t in order_records(records, rng)]
        assert sorted(order[:2]) == ["heavy", "light"] and order[2] == "last"
