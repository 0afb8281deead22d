"""End to end, XEP-0045 use cases beyond test_muc.py: real slixmpp clients (the XEP-0045
plugin, raw stanzas where it has no API) against a real core and a real ``switchboard muc``
process, with Redis. One core and one MUC instance serve the module; each test uses rooms
of its own.

Covered: declining a mediated invitation (§7.8.2), a full room (§7.2.10), removal on loss
of membership (§9.4, status 321) and on a room becoming members-only (§10.2, status 322),
the configuration-change notice (§10.2.1, status 104), the reserved-nick lookup (§7.12),
the owner and admin lists in the configuration form (§10.2) and the notice to an absent
user whose affiliation changes (status 101).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_muc import (
    MUC_USER,
    SERVICE,
    USERS,
    codes,
    core_with_muc,
    create_room,
    groupchat_from,
    next_where,
)
from tests.e2e.test_muc import (
    clients as muc_clients,
)
from tests.harness import CoreProcess

ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
DISCO_INFO = "{http://jabber.org/protocol/disco#info}"


@pytest.fixture(scope="module")
def stack(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """A core with [components.muc] and one MUC instance linked to it."""
    with core_with_muc(redis_server, Path(tmp_path_factory.mktemp("muc-more")), USERS) as core:
        yield core


@contextlib.asynccontextmanager
async def clients(core: CoreProcess, *users: str) -> AsyncIterator[list[Any]]:
    """The clients of test_muc.py, each also recording every message stanza it receives in
    ``client.messages``: slixmpp's ``message`` event skips messages without a body, such as
    declines (§7.8.2) and status notices (§10.2.1)."""
    from slixmpp.xmlstream.handler import Callback
    from slixmpp.xmlstream.matcher import MatchXPath

    async with muc_clients(core, *users) as out:
        for client in out:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            client.messages = queue
            client.register_handler(
                Callback("all messages", MatchXPath("{jabber:client}message"), queue.put_nowait)
            )
        yield out


def status_message(msg: Any, room: str, status: int) -> bool:
    """Whether ``msg`` comes from the bare ``room`` and carries muc#user status ``status``."""
    if msg["from"] != room:
        return False
    return any(
        el.get("code") == str(status) for el in msg.xml.iterfind(f"{MUC_USER}x/{MUC_USER}status")
    )


def test_declined_invitation_reaches_the_inviter(stack: CoreProcess) -> None:
    """§7.8.2: the invitee's decline, sent to the room, reaches the inviter from the room
    JID with the decliner's address and reason."""
    room = f"declined@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice", "bob") as (alice, bob):
            await create_room(alice, room, "Alice")
            alice.plugin["xep_0045"].invite(room, "bob@localhost", reason="Come in")
            await next_where(bob.inbox, lambda m: m["from"] == room and m["muc"]["invite"]["from"])
            bob.plugin["xep_0045"].decline(room, "alice@localhost", reason="Sorry, busy")
            msg = await next_where(
                alice.messages, lambda m: m["from"] == room and m["muc"]["decline"]["from"]
            )
            assert msg["muc"]["decline"]["from"].bare == "bob@localhost"
            assert msg["muc"]["decline"]["reason"] == "Sorry, busy"

    asyncio.run(run())


def test_full_room_refuses_entry_with_503(stack: CoreProcess) -> None:
    """§7.2.10: with maxusers reached, a further user gets service-unavailable (503) and
    the occupants see no one join."""
    from slixmpp.exceptions import PresenceError

    room = f"crowded@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice", "bob", "carol") as (alice, bob, carol):
            await create_room(alice, room, "Alice", **{"muc#roomconfig_maxusers": "2"})
            await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            with pytest.raises(PresenceError) as err:
                await carol.plugin["xep_0045"].join_muc_wait(room, "Carol", timeout=5)
            assert err.value.condition == "service-unavailable"
            assert err.value.etype == "cancel"
            # Once Bob leaves there is room again.
            bob.plugin["xep_0045"].leave_muc(room, "Bob")
            await next_where(
                alice.room_presences,
                lambda p: p["from"] == f"{room}/Bob" and p["type"] == "unavailable",
            )
            pres, _, _, _ = await carol.plugin["xep_0045"].join_muc_wait(room, "Carol", timeout=5)
            assert 110 in codes(pres)

    asyncio.run(run())


def test_removal_on_lost_membership_and_on_members_only(stack: CoreProcess) -> None:
    """§9.4: a member of a members-only room whose membership is revoked is removed with
    status 321; §10.2: when an open room becomes members-only, occupants who are not
    members are removed with status 322, members stay."""
    room = f"club@{SERVICE}"
    room2 = f"lounge@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice", "bob", "carol") as (alice, bob, carol):
            amuc = alice.plugin["xep_0045"]
            await create_room(alice, room, "Alice", **{"muc#roomconfig_membersonly": True})
            await amuc.set_affiliation(room, "member", jid="bob@localhost", timeout=5)
            await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            await amuc.set_affiliation(room, "none", jid="bob@localhost", timeout=5)
            removed = await next_where(
                bob.room_presences,
                lambda p: p["from"] == f"{room}/Bob" and p["type"] == "unavailable",
            )
            assert {110, 321} <= codes(removed)
            assert removed["muc"]["affiliation"] == "none" and removed["muc"]["role"] == "none"
            seen = await next_where(
                alice.room_presences,
                lambda p: p["from"] == f"{room}/Bob" and p["type"] == "unavailable",
            )
            assert 321 in codes(seen) and 110 not in codes(seen)

            await create_room(alice, room2, "Alice")
            await amuc.set_affiliation(room2, "member", jid="bob@localhost", timeout=5)
            await bob.plugin["xep_0045"].join_muc_wait(room2, "Bob", timeout=5)
            await carol.plugin["xep_0045"].join_muc_wait(room2, "Carol", timeout=5)
            form = alice.plugin["xep_0004"].make_form(ftype="submit")
            form.add_field(var="FORM_TYPE", ftype="hidden", value=ROOMCONFIG)
            form.add_field(var="muc#roomconfig_membersonly", value=True)
            await amuc.set_room_config(room2, form, timeout=5)
            gone = await next_where(
                carol.room_presences,
                lambda p: p["from"] == f"{room2}/Carol" and p["type"] == "unavailable",
            )
            assert {110, 322} <= codes(gone)
            seen = await next_where(
                bob.room_presences,
                lambda p: p["from"] == f"{room2}/Carol" and p["type"] == "unavailable",
            )
            assert 322 in codes(seen)
            # Bob, a member, is still an occupant: the room still relays to him.
            alice.send_message(mto=room2, mbody="members only now", mtype="groupchat")
            await next_where(
                bob.inbox, lambda m: m["type"] == "groupchat" and m["body"] == "members only now"
            )

    asyncio.run(run())


def test_configuration_change_notice(stack: CoreProcess) -> None:
    """§10.2.1: after the owner changes the configuration, every occupant gets a groupchat
    message from the room with status 104; making the room non-anonymous adds 172."""
    room = f"notice@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice", "bob") as (alice, bob):
            amuc = alice.plugin["xep_0045"]
            await create_room(alice, room, "Alice")
            await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            form = alice.plugin["xep_0004"].make_form(ftype="submit")
            form.add_field(var="FORM_TYPE", ftype="hidden", value=ROOMCONFIG)
            form.add_field(var="muc#roomconfig_roomname", value="Renamed")
            await amuc.set_room_config(room, form, timeout=5)
            for client in (alice, bob):
                msg = await next_where(client.messages, lambda m: status_message(m, room, 104))
                assert msg["type"] == "groupchat"

            form = alice.plugin["xep_0004"].make_form(ftype="submit")
            form.add_field(var="FORM_TYPE", ftype="hidden", value=ROOMCONFIG)
            form.add_field(var="muc#roomconfig_whois", value="anyone")
            await amuc.set_room_config(room, form, timeout=5)
            msg = await next_where(bob.messages, lambda m: status_message(m, room, 104))
            assert status_message(msg, room, 172)

    asyncio.run(run())


def test_reserved_nick_lookup(stack: CoreProcess) -> None:
    """§7.12: disco#info to the room with node x-roomuser-item names the nick reserved for
    the requester as the identity's name; a user without one gets no identity."""
    room = f"reserved@{SERVICE}"

    async def lookup(client: Any) -> Any:
        iq = await client.plugin["xep_0030"].get_info(
            jid=room, node="x-roomuser-item", local=False, cached=False, timeout=5
        )
        query = iq.xml.find(f"{DISCO_INFO}query")
        assert query is not None and query.get("node") == "x-roomuser-item"
        return query.findall(f"{DISCO_INFO}identity")

    async def run() -> None:
        async with clients(stack, "alice", "bob", "carol") as (alice, bob, carol):
            await create_room(alice, room, "Alice")
            await alice.plugin["xep_0045"].set_affiliation(
                room, "member", jid="bob@localhost", nick="Bobby", timeout=5
            )
            identities = await lookup(bob)
            assert [(i.get("category"), i.get("type"), i.get("name")) for i in identities] == [
                ("conference", "text", "Bobby")
            ]
            assert await lookup(carol) == []
            # The reserved nick is Bob's: Carol cannot take it.
            from slixmpp.exceptions import PresenceError

            with pytest.raises(PresenceError) as err:
                await carol.plugin["xep_0045"].join_muc_wait(room, "Bobby", timeout=5)
            assert err.value.condition == "conflict"

    asyncio.run(run())


def test_owner_and_admin_lists_in_the_configuration_form(stack: CoreProcess) -> None:
    """§10.2: the roomowners and roomadmins fields of the configuration form set the owner
    and admin lists (as muc#admin shows them) and show the current lists."""
    room = f"council@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice") as (alice,):
            amuc = alice.plugin["xep_0045"]
            await create_room(alice, room, "Alice")
            form = await amuc.get_room_config(room, timeout=5)
            fields = form.get_fields()
            assert fields["muc#roomconfig_roomowners"]["type"] == "jid-multi"
            assert [str(j) for j in fields["muc#roomconfig_roomowners"]["value"]] == [
                "alice@localhost"
            ]
            assert fields["muc#roomconfig_roomadmins"]["value"] in ([], "", None)

            submit = alice.plugin["xep_0004"].make_form(ftype="submit")
            submit.add_field(var="FORM_TYPE", ftype="hidden", value=ROOMCONFIG)
            submit.add_field(
                var="muc#roomconfig_roomowners",
                ftype="jid-multi",
                value=["alice@localhost", "carol@localhost"],
            )
            submit.add_field(
                var="muc#roomconfig_roomadmins", ftype="jid-multi", value=["dave@localhost"]
            )
            await amuc.set_room_config(room, submit, timeout=5)
            lists = {
                a: sorted(str(j) for j in await amuc.get_affiliation_list(room, a, timeout=5))
                for a in ("owner", "admin")
            }
            assert lists == {
                "owner": ["alice@localhost", "carol@localhost"],
                "admin": ["dave@localhost"],
            }
            fields = (await amuc.get_room_config(room, timeout=5)).get_fields()
            assert sorted(str(j) for j in fields["muc#roomconfig_roomowners"]["value"]) == [
                "alice@localhost",
                "carol@localhost",
            ]
            assert [str(j) for j in fields["muc#roomconfig_roomadmins"]["value"]] == [
                "dave@localhost"
            ]

            # Dropping Dave from the admin list leaves him without affiliation.
            submit = alice.plugin["xep_0004"].make_form(ftype="submit")
            submit.add_field(var="FORM_TYPE", ftype="hidden", value=ROOMCONFIG)
            submit.add_field(var="muc#roomconfig_roomadmins", ftype="jid-multi", value=[])
            await amuc.set_room_config(room, submit, timeout=5)
            assert await amuc.get_affiliation_list(room, "admin", timeout=5) == []
            owners = await amuc.get_affiliation_list(room, "owner", timeout=5)
            assert sorted(str(j) for j in owners) == ["alice@localhost", "carol@localhost"]

    asyncio.run(run())


def test_absent_user_is_told_of_an_affiliation_change(stack: CoreProcess) -> None:
    """A user who is not in the room and whose affiliation changes gets a headline message
    from the room with status 101 and the new affiliation."""
    room = f"faraway@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice", "bob") as (alice, bob):
            await create_room(alice, room, "Alice")
            await alice.plugin["xep_0045"].set_affiliation(
                room, "admin", jid="bob@localhost", reason="trusted", timeout=5
            )
            msg = await next_where(bob.messages, lambda m: status_message(m, room, 101))
            assert msg["type"] == "headline"
            item = msg.xml.find(f"{MUC_USER}x/{MUC_USER}item")
            assert item is not None and item.get("affiliation") == "admin"
            assert item.get("jid") == "bob@localhost"
            assert item.findtext(f"{MUC_USER}reason") == "trusted"

    asyncio.run(run())


def test_a_room_without_history_keeps_none(stack: CoreProcess) -> None:
    """§7.2.15 with muc#maxhistoryfetch 0: messages are reflected to everyone, nothing is
    kept in Redis and a newcomer gets no history; the MUC instance follows other instances'
    changes on Redis pub/sub (how it serves such messages from memory)."""
    import redis

    room = f"nohistory@{SERVICE}"
    store = redis.Redis.from_url(stack.redis_url)

    async def run() -> None:
        async with clients(stack, "alice", "bob", "carol") as (alice, bob, carol):
            await create_room(alice, room, "Alice", **{"muc#maxhistoryfetch": "0"})
            await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            for i in range(3):
                alice.send_message(mto=room, mbody=f"line {i}", mtype="groupchat")
                await groupchat_from(bob, room, f"line {i}")
            _, _, _, history = await carol.plugin["xep_0045"].join_muc_wait(
                room, "Carol", timeout=5
            )
            assert history == []
            # The room is stored (it goes with its last occupant), its history is not.
            assert store.exists(f"muc:room:{{{room}}}") == 1
            assert store.exists(f"muc:history:{{{room}}}") == 0

    try:
        asyncio.run(run())
        # The one MUC instance of this module listens (pub/sub is not per database).
        ((_, listeners),) = store.pubsub_numsub(f"muc:changes:{{{SERVICE}}}")
        assert listeners == 1
    finally:
        store.close()
