"""RFC 6121 §8.5 as a table: every kind and type of stanza, to a bare or full JID, of an
account that exists or not, with resources of various priorities and availability, with all
the IM modules loaded (presence, offline storage). Each row is one case.

Alice (alice@localhost/a) sends; Bob's roster lets Alice see his presence, so that probes are
answered (rows about subscription requests say where Bob has not approved her yet). Bob's
sessions, unless a row says otherwise: ``hi`` (priority 5), ``lo`` (1), ``neg`` (-1), all
available, and ``idle``, connected without initial presence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from core.storage.offline import OfflineStore
from core.storage.roster import RosterItem, RosterStore
from tests.unit.test_roster_harness import Im, run_im

A = "alice@localhost"
B = "bob@localhost"
DISCO = "<query xmlns='http://jabber.org/protocol/disco#info'/>"
# resource -> priority, or None for a connected resource that sent no initial presence.
BOB: dict[str, int | None] = {"hi": 5, "lo": 1, "neg": -1, "idle": None}


@dataclass
class Case:
    id: str
    stanza: str
    to: str
    delivered: list[str]  # Bob's resources that receive the stanza
    error: str | None = None  # the condition bounced to Alice
    stored: int = 0  # messages in Bob's offline storage afterwards
    answers: list[str] = field(default_factory=list)  # 'from' of what Alice gets back
    bob: dict[str, int | None] = field(default_factory=lambda: dict(BOB))
    sub: str = "from"  # Alice's subscription state in Bob's roster


def m(mtype: str | None) -> str:
    t = f" type='{mtype}'" if mtype else ""
    return f"<message id='x'{t}><body>hi</body></message>"


def p(ptype: str | None = None) -> str:
    t = f" type='{ptype}'" if ptype else ""
    return f"<presence id='x'{t}/>"


def iq(itype: str) -> str:
    return f"<iq id='x' type='{itype}'>{DISCO if itype in ('get', 'set') else ''}</iq>"


NOBODY = "nobody@localhost"
ITEMS_GET = "<iq id='x' type='get'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
AVAILABLE = ["hi", "lo", "neg"]
PROBED = [f"{B}/hi", f"{B}/lo", f"{B}/neg"]
IDLE_ONLY: dict[str, int | None] = {"idle": None}

CASES = [
    # §8.5.1: no such account.
    Case("unknown/chat", m("chat"), NOBODY, [], "service-unavailable"),
    Case("unknown/normal", m(None), NOBODY, [], "service-unavailable"),
    Case("unknown/groupchat", m("groupchat"), NOBODY, [], "service-unavailable"),
    Case("unknown/headline", m("headline"), NOBODY, []),
    Case("unknown/error", m("error"), NOBODY, []),
    Case("unknown/iq-get", iq("get"), NOBODY, [], "service-unavailable"),
    # XEP-0030 §8: disco#items of a missing account is an empty result, as for a stranger.
    Case("unknown/iq-disco-items", ITEMS_GET, NOBODY, [], answers=[NOBODY]),
    Case("unknown/iq-set-full", iq("set"), f"{NOBODY}/r", [], "service-unavailable"),
    Case("unknown/presence", p(), NOBODY, []),
    Case("unknown/unavailable", p("unavailable"), NOBODY, []),
    Case("unknown/subscribe", p("subscribe"), NOBODY, [], sub="none"),
    Case("unknown/probe", p("probe"), NOBODY, []),
    Case("unknown/chat-full", m("chat"), f"{NOBODY}/r", [], "service-unavailable"),
    # §8.5.2.1: bare JID, available resources.
    Case("bare/normal", m(None), B, ["hi"]),
    Case("bare/normal-typed", m("normal"), B, ["hi"]),
    Case("bare/chat", m("chat"), B, ["hi"]),
    Case("bare/chat-equal-top", m("chat"), B, ["one", "two"], bob={"one": 3, "two": 3, "z": 0}),
    Case("bare/groupchat", m("groupchat"), B, [], "service-unavailable"),
    Case("bare/headline", m("headline"), B, ["hi", "lo"]),
    Case("bare/error", m("error"), B, []),
    Case("bare/chat-negative-only", m("chat"), B, [], stored=1, bob={"neg": -1}),
    Case("bare/presence", p(), B, AVAILABLE),
    Case("bare/unavailable", p("unavailable"), B, AVAILABLE),
    Case("bare/subscribe", p("subscribe"), B, AVAILABLE, sub="none"),
    Case("bare/subscribe-subscribed", p("subscribe"), B, [], answers=[B]),
    Case("bare/probe", p("probe"), B, [], answers=PROBED),
    Case("bare/iq-get", iq("get"), B, [], answers=[B]),
    Case("bare/iq-result", iq("result"), B, []),
    Case("bare/iq-error", iq("error"), B, []),
    # §8.5.2.2: bare JID, no available resource.
    Case("offline/normal", m(None), B, [], stored=1, bob=IDLE_ONLY),
    Case("offline/chat", m("chat"), B, [], stored=1, bob=IDLE_ONLY),
    Case("offline/chat-no-session", m("chat"), B, [], stored=1, bob={}),
    Case("offline/groupchat", m("groupchat"), B, [], "service-unavailable", bob=IDLE_ONLY),
    Case("offline/headline", m("headline"), B, [], bob=IDLE_ONLY),
    Case("offline/error", m("error"), B, [], bob=IDLE_ONLY),
    Case("offline/presence", p(), B, [], bob=IDLE_ONLY),
    Case("offline/unavailable", p("unavailable"), B, [], bob=IDLE_ONLY),
    Case("offline/subscribe", p("subscribe"), B, [], bob=IDLE_ONLY, sub="none"),
    Case("offline/probe", p("probe"), B, [], bob=IDLE_ONLY),
    Case("offline/iq-get", iq("get"), B, [], answers=[B], bob={}),
    # §8.5.3.1: full JID of a connected resource.
    Case("full/chat", m("chat"), f"{B}/lo", ["lo"]),
    Case("full/normal-negative", m(None), f"{B}/neg", ["neg"]),
    Case("full/groupchat", m("groupchat"), f"{B}/lo", ["lo"]),
    Case("full/headline", m("headline"), f"{B}/lo", ["lo"]),
    Case("full/error", m("error"), f"{B}/lo", ["lo"]),
    Case("full/not-available", m("chat"), f"{B}/idle", ["idle"]),
    Case("full/iq-get", iq("get"), f"{B}/lo", ["lo"]),
    Case("full/iq-result", iq("result"), f"{B}/lo", ["lo"]),
    Case("full/presence", p(), f"{B}/lo", ["lo"]),
    Case("full/unavailable", p("unavailable"), f"{B}/lo", ["lo"]),
    Case("full/subscribe", p("subscribe"), f"{B}/lo", AVAILABLE, sub="none"),
    Case("full/probe", p("probe"), f"{B}/lo", [], answers=PROBED),
    # §8.5.3.2: full JID with no such resource.
    Case("gone/chat", m("chat"), f"{B}/gone", ["hi"]),
    Case("gone/normal", m(None), f"{B}/gone", ["hi"]),
    Case("gone/chat-offline", m("chat"), f"{B}/gone", [], stored=1, bob={}),
    Case("gone/groupchat", m("groupchat"), f"{B}/gone", [], "service-unavailable"),
    Case("gone/headline", m("headline"), f"{B}/gone", []),
    Case("gone/error", m("error"), f"{B}/gone", []),
    Case("gone/presence", p(), f"{B}/gone", []),
    Case("gone/unavailable", p("unavailable"), f"{B}/gone", []),
    Case("gone/subscribe", p("subscribe"), f"{B}/gone", AVAILABLE, sub="none"),
    Case("gone/probe", p("probe"), f"{B}/gone", [], answers=PROBED),
    Case("gone/iq-get", iq("get"), f"{B}/gone", [], "service-unavailable"),
    Case("gone/iq-result", iq("result"), f"{B}/gone", []),
]


def _condition(stanza: Any) -> str | None:
    error = stanza.find("{jabber:client}error")
    if error is None:
        return None
    for child in error:
        if child.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}") and not child.tag.endswith(
            "}text"
        ):
            return child.tag.rpartition("}")[2]
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_delivery(redis_client: Any, run_async: Any, case: Case) -> None:
    """§8.5: who receives the stanza, what bounces, what is stored, what the server answers."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob")
        await RosterStore(im.redis).write(
            B, version="e-1", items={A: RosterItem(A, subscription=case.sub)}
        )
        alice = await im.login(f"{A}/a")
        bobs = {}
        for resource, priority in case.bob.items():
            bobs[resource] = await im.login(
                f"{B}/{resource}", available=priority is not None, priority=priority
            )
        for s in (alice, *bobs.values()):
            s.take()
        await im.send(alice, case.stanza.replace(" id='x'", f" id='x' to='{case.to}'", 1))
        kind = case.stanza[1 : case.stanza.index(" ")]
        got = sorted(
            r
            for r, s in bobs.items()
            if any(e.tag.endswith("}" + kind) and e.get("id") == "x" for e in s.take())
        )
        assert got == sorted(case.delivered)
        back = alice.take()
        errors = [_condition(e) for e in back if e.get("type") == "error"]
        assert errors == ([case.error] if case.error else [])
        # Roster pushes (a subscribe from Alice adds Bob to her roster) are not answers.
        answers = sorted(e.get("from") for e in back if e.get("type") not in ("error", "set"))
        assert answers == sorted(case.answers)
        assert await OfflineStore(im.redis).count(B) == case.stored

    run_im(run_async, redis_client, scenario)
