"""Rendezvous (highest random weight) hashing for shard instances, and the choice of a shard
key and of a link, without sockets."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

from core.component_routes import (
    IQ_AFFINITY_MAX,
    DomainRoute,
    rendezvous,
    rendezvous_weight,
)
from core.runtime.config import ComponentConfig
from core.xmpp.stanza import make

KEYS = [f"room{i}@muc.example" for i in range(2000)]


def assignment(instances: list[str]) -> dict[str, str | None]:
    return {k: rendezvous(k, instances) for k in KEYS}


def test_rendezvous_is_deterministic_and_order_free() -> None:
    """The same key and instances give the same instance, in whatever order they are listed."""
    for key in KEYS[:200]:
        assert rendezvous(key, ["a", "b", "c"]) == rendezvous(key, ["c", "a", "b"])
    assert rendezvous_weight("k", "a") == rendezvous_weight("k", "a")
    assert rendezvous("k", []) is None
    assert rendezvous("k", ["only"]) == "only"


def test_removing_an_instance_moves_only_its_keys() -> None:
    """Keys of the removed instance spread over the rest; no other key moves."""
    before = assignment(["a", "b", "c", "d"])
    after = assignment(["a", "b", "d"])
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "c"}
    assert {after[k] for k in moved} == {"a", "b", "d"}


def test_adding_an_instance_takes_keys_only_for_itself() -> None:
    """A new instance takes about its share; every key that moves, moves to it."""
    before = assignment(["a", "b", "c"])
    after = assignment(["a", "b", "c", "d"])
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "d" for k in moved)
    assert 0.15 < len(moved) / len(KEYS) < 0.35


def test_keys_spread_evenly() -> None:
    """Four instances each get a fair share of 2000 keys."""
    counts = Counter(assignment(["a", "b", "c", "d"]).values())
    assert set(counts) == {"a", "b", "c", "d"}
    assert all(350 < n < 650 for n in counts.values()), counts


def _route(shard: bool = True) -> DomainRoute:
    clock: dict[str, float] = {"now": 0.0}
    routes: Any = SimpleNamespace(grace_period=30.0, now=lambda: clock["now"], clock=clock)
    mode = "shard" if shard else "replace"
    return DomainRoute(routes, "muc", ComponentConfig(domain="muc.example", instances=mode))


def test_shard_key() -> None:
    """The key is the normalised bare 'to' JID; for the domain itself, the sender's bare JID."""
    route = _route()
    msg = make("message", to="Room@MUC.example/Nick", frm="alice@example/phone")
    assert route.shard_key(msg) == "room@muc.example"
    msg = make("iq", to="muc.example", frm="Alice@example/phone", type="get")
    assert route.shard_key(msg) == "alice@example"
    msg = make("presence", to="muc.example/x", frm="bob@example")
    assert route.shard_key(msg) == "bob@example"


def test_iq_affinity_is_bounded() -> None:
    """Remembered IQs expire and their number is capped, oldest first."""
    route = _route()
    clock = route.routes.clock
    for n in range(IQ_AFFINITY_MAX + 10):
        route.remember_iq(make("iq", frm="muc.example", id=f"q{n}", type="get"), "a")
    assert len(route._iq_owner) == IQ_AFFINITY_MAX
    assert ("muc.example", "q0") not in route._iq_owner
    clock["now"] = 1000.0
    route.remember_iq(make("iq", frm="muc.example", id="late", type="get"), "a")
    assert list(route._iq_owner) == [("muc.example", "late")]
    # Only shard domains keep them: with one link there is nothing to choose.
    plain = _route(shard=False)
    plain.remember_iq(make("iq", frm="muc.example", id="q", type="get"), "a")
    assert len(plain._iq_owner) == 0
