"""End-to-end vcard-temp (XEP-0054) against a real core and Redis with slixmpp clients: a
round trip, another user's view, the refusals, a core restart that keeps the vCard, and the
XEP-0153 avatar hash the server puts into presence."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio
from slixmpp.exceptions import IqError

from core.storage.roster import RosterItem, RosterStore
from tests.harness import CoreProcess, RawClient, slix_client

PASSWORD = "e2e-vcard-secret-3"
PLUGINS = ("xep_0030", "xep_0054")
PHOTO = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(64)).decode()


def users(core: CoreProcess, *names: str) -> list[str]:
    for name in names:
        core.add_user(name, PASSWORD)
    return [f"{name}@{core.domain}" for name in names]


async def publish(client: Any, nickname: str) -> None:
    card = client.plugin["xep_0054"].make_vcard()
    card["FN"] = "Alice Liddell"
    card["NICKNAME"] = nickname
    card["PHOTO"]["TYPE"] = "image/png"
    card["PHOTO"]["BINVAL"] = base64.b64decode(PHOTO)
    await client.plugin["xep_0054"].publish_vcard(card)


async def fetch(client: Any, jid: str) -> Any:
    return (await client.plugin["xep_0054"].get_vcard(jid, local=False, timeout=5))["vcard_temp"]


def test_vcard_round_trip(core: CoreProcess, run_async: Any) -> None:
    """Alice publishes her vCard and reads it back; Bob reads it at her bare JID; Bob's own is
    empty; a user without vCard and one that does not exist answer alike."""
    alice, bob = users(core, "vc-alice", "vc-bob")

    async def scenario() -> None:
        async with (
            slix_client(core.c2s_port, f"{alice}/a", PASSWORD, plugins=PLUGINS) as a,
            slix_client(core.c2s_port, f"{bob}/b", PASSWORD, plugins=PLUGINS) as b,
        ):
            await publish(a, "alice")
            own = await fetch(a, alice)
            assert own["FN"] == "Alice Liddell" and own["NICKNAME"] == ["alice"]
            assert own["PHOTO"]["BINVAL"] == base64.b64decode(PHOTO)
            seen = await fetch(b, alice)
            assert seen["NICKNAME"] == ["alice"] and seen["PHOTO"]["TYPE"] == "image/png"
            assert a.inbox.empty()  # answered by the server, not by Alice's client
            assert (await fetch(b, bob))["FN"] == ""
            conditions = []
            for target in (bob, f"nobody@{core.domain}"):
                with pytest.raises(IqError) as caught:
                    await fetch(a, target)
                conditions.append(caught.value.condition)
            assert conditions == ["service-unavailable", "service-unavailable"]

    run_async(scenario())


def test_vcard_refusals(core: CoreProcess, run_async: Any) -> None:
    """Setting another user's vCard is forbidden; an oversized vCard is refused with
    policy-violation; the stream stays open."""
    users(core, "vc-carol", "vc-dave")

    async def scenario() -> None:
        c = RawClient(core.c2s_port)
        await c.login("vc-carol", PASSWORD)
        try:
            await c.send(
                "<iq type='set' id='v1' to='vc-dave@localhost'>"
                "<vCard xmlns='vcard-temp'><FN>Not Dave</FN></vCard></iq>"
            )
            reply = await c.next_element()
            assert reply.get("id") == "v1" and reply.get("type") == "error"
            assert reply.find(".//{urn:ietf:params:xml:ns:xmpp-stanzas}forbidden") is not None
            await c.send(
                f"<iq type='set' id='v2'><vCard xmlns='vcard-temp'><DESC>{'x' * 70000}</DESC>"
                "</vCard></iq>"
            )
            reply = await c.next_element()
            assert reply.get("id") == "v2" and reply.get("type") == "error"
            condition = ".//{urn:ietf:params:xml:ns:xmpp-stanzas}policy-violation"
            assert reply.find(condition) is not None
            await c.send("<iq type='get' id='v3'><vCard xmlns='vcard-temp'/></iq>")
            reply = await c.next_element()
            assert reply.get("id") == "v3" and reply.get("type") == "result"
        finally:
            await c.close()

    run_async(scenario())


def test_vcard_survives_a_restart(make_core: Callable[..., CoreProcess], run_async: Any) -> None:
    """A vCard is in Redis before the result: after a core restart it is still served."""
    core = make_core()
    alice, bob = users(core, "vc-keep-alice", "vc-keep-bob")

    async def before() -> None:
        async with slix_client(core.c2s_port, f"{alice}/a", PASSWORD, plugins=PLUGINS) as a:
            await publish(a, "kept")

    async def after() -> None:
        async with slix_client(core.c2s_port, f"{bob}/b", PASSWORD, plugins=PLUGINS) as b:
            card = await asyncio.wait_for(fetch(b, alice), 5)
            assert card["NICKNAME"] == ["kept"]

    run_async(before())
    core.restart()
    run_async(after())


def test_avatar_hash_in_presence(core: CoreProcess, run_async: Any) -> None:
    """XEP-0153: once Alice's vCard has a photo, Bob (subscribed to her presence) sees its
    SHA-1 in her presence, at once (the server broadcasts again) and in the initial presence
    of her next session, without her client adding anything."""
    alice, bob = users(core, "vc-av-alice", "vc-av-bob")
    mutual_subscription(core, alice, bob)
    digest = hashlib.sha1(base64.b64decode(PHOTO)).hexdigest()

    def avatar(p: Any) -> str | None:
        photo = p.xml.find("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")
        return None if photo is None else (photo.text or "")

    async def presence_from(client: Any, frm: str, digest: str) -> None:
        deadline = time.monotonic() + 5
        while True:
            p = await asyncio.wait_for(client.presences.get(), deadline - time.monotonic())
            if str(p["from"]) == frm and p["type"] == "available" and avatar(p) == digest:
                return

    async def scenario() -> None:
        async with slix_client(core.c2s_port, f"{bob}/b", PASSWORD, plugins=PLUGINS) as b:
            async with slix_client(core.c2s_port, f"{alice}/a", PASSWORD, plugins=PLUGINS) as a:
                await publish(a, "alice")
                await presence_from(b, f"{alice}/a", digest)
            async with slix_client(core.c2s_port, f"{alice}/a2", PASSWORD, plugins=PLUGINS):
                await presence_from(b, f"{alice}/a2", digest)

    run_async(scenario())


def mutual_subscription(core: CoreProcess, one: str, other: str) -> None:
    """Both accounts see each other's presence (RFC 6121 'both'), written before any login."""

    async def write() -> None:
        client = redis.asyncio.Redis.from_url(core.redis_url)
        try:
            store = RosterStore(client)
            for owner, contact in ((one, other), (other, one)):
                items = {contact: RosterItem(contact, subscription="both")}
                await store.write(owner, version="e-1", items=items)
        finally:
            await client.aclose()

    asyncio.run(write())
