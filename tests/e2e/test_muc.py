"""End to end: real slixmpp clients (XEP-0045 plugin) against a real core and a real
``switchboard muc`` process, with Redis. One core and one MUC instance serve the module;
each test uses rooms of its own.

``MucProcess`` and the fixtures here are also used by test_muc_failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from tests.harness import (
    ROOT,
    ComponentProcess,
    CoreProcess,
    separate_db,
    slix_client,
    wait_links,
)

SERVICE = "conference.localhost"
PASSWORD = "correct horse"
MUC_ENV = {
    "SWITCHBOARD_COMPONENTS_MUC_DOMAIN": SERVICE,
    "SWITCHBOARD_COMPONENTS_MUC_SECRET": "muc-secret",
    "SWITCHBOARD_COMPONENTS_MUC_INSTANCES": "shard",
}
USERS = ("alice", "bob", "carol", "dave")
PLUGINS = ("xep_0030", "xep_0045", "xep_0199", "xep_0004", "xep_0092")
MUC_USER = "{http://jabber.org/protocol/muc#user}"


class MucProcess(ComponentProcess):
    """One ``switchboard muc`` instance, a process of its own."""

    def __init__(self, core: CoreProcess, instance: str, env: dict[str, str] | None = None):
        args = ["muc", "--instance", instance]
        super().__init__(core, f"muc-{instance}.log", "core.cli", args, env)
        self.instance = instance


async def wait_instances(core: CoreProcess, instances: set[str], timeout: float = 15) -> None:
    """Wait until the core's link records for the MUC domain name exactly ``instances``."""
    await wait_links(core, SERVICE, instances, timeout)


def muc_core(redis_server: str, workdir: Path, users: tuple[str, ...]) -> CoreProcess:
    core = CoreProcess(separate_db(redis_server), workdir, env=MUC_ENV).start()
    for user in users:
        core.add_user(user, PASSWORD)
    return core


@contextlib.contextmanager
def core_with_muc(
    redis_server: str, workdir: Path, users: tuple[str, ...]
) -> Iterator[CoreProcess]:
    """A core with [components.muc] and one MUC instance ("m1") linked to it."""
    core = muc_core(redis_server, workdir, users)
    muc = MucProcess(core, "m1").start()
    try:
        asyncio.run(wait_instances(core, {"m1"}))
        yield core
    finally:
        muc.stop()
        core.stop()


@pytest.fixture(scope="module")
def stack(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """A core with [components.muc] and one MUC instance linked to it."""
    with core_with_muc(redis_server, Path(tmp_path_factory.mktemp("muc")), USERS) as core:
        yield core


@contextlib.asynccontextmanager
async def clients(core: CoreProcess, *users: str) -> AsyncIterator[list[Any]]:
    """Connected slixmpp clients with the MUC plugin, one per user. Room presence is in
    ``client.room_presences`` (the plugin keeps it from the generic presence event)."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for user in users:
            client = await stack.enter_async_context(
                slix_client(core.c2s_port, f"{user}@localhost", PASSWORD, plugins=PLUGINS)
            )
            queue: asyncio.Queue[Any] = asyncio.Queue()
            client.room_presences = queue
            client.add_event_handler("groupchat_presence", queue.put_nowait)
            subjects: asyncio.Queue[Any] = asyncio.Queue()
            client.room_subjects = subjects
            client.add_event_handler("groupchat_subject", subjects.put_nowait)
            out.append(client)
        yield out


async def next_where(
    queue: asyncio.Queue[Any], pred: Callable[[Any], bool], timeout: float = 5.0
) -> Any:
    """The next item of ``queue`` that satisfies ``pred`` (earlier ones are dropped)."""
    async with asyncio.timeout(timeout):
        while True:
            item = await queue.get()
            if pred(item):
                return item


def codes(presence: Any) -> set[int]:
    return set(presence["muc"]["status_codes"])


async def create_room(client: Any, room: str, nick: str, **config: Any) -> None:
    """Create ``room`` as an instant room (§10.1.2), then apply ``config`` if any."""
    muc = client.plugin["xep_0045"]
    pres, _, _, _ = await muc.join_muc_wait(room, nick, maxstanzas=0, timeout=5)
    assert 201 in codes(pres), pres
    empty = client.plugin["xep_0004"].make_form(ftype="submit")
    await muc.set_room_config(room, empty, timeout=5)
    if config:
        form = await muc.get_room_config(room, timeout=5)
        submit = client.plugin["xep_0004"].make_form(ftype="submit")
        submit.add_field(
            var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig"
        )
        for var, value in config.items():
            assert var in form.get_fields(), var
            submit.add_field(var=var, value=value)
        await muc.set_room_config(room, submit, timeout=5)


async def groupchat_from(client: Any, room: str, body: str, timeout: float = 5.0) -> Any:
    return await next_where(
        client.inbox,
        lambda m: m["type"] == "groupchat" and m["from"].bare == room and m["body"] == body,
        timeout,
    )


def test_create_join_talk_and_leave(stack: CoreProcess) -> None:
    """Create an instant room, join, fan-out from occupant JIDs, subject, nick change,
    private message and leaving, all with slixmpp's XEP-0045 plugin."""
    room = f"cave@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice", "bob") as (alice, bob):
            await create_room(alice, room, "Alice")
            amuc, bmuc = alice.plugin["xep_0045"], bob.plugin["xep_0045"]
            pres, subject, occupants, history = await bmuc.join_muc_wait(room, "Bob", timeout=5)
            assert 110 in codes(pres) and pres["muc"]["role"] == "participant"
            # §7.2.16: an empty subject is still sent, last.
            assert subject.xml.find("{jabber:client}subject") is not None
            assert not subject["subject"] and history == []
            assert [p["from"].resource for p in occupants] == ["Alice", "Bob"]
            joined = await next_where(
                alice.room_presences, lambda p: p["from"] == f"{room}/Bob" and p["type"] != "error"
            )
            # Alice moderates a semi-anonymous room: she sees Bob's real JID.
            assert joined["muc"]["jid"].bare == "bob@localhost"

            alice.send_message(
                mto=room, mbody="Thrice the brinded cat hath mew'd.", mtype="groupchat"
            )
            for client in (alice, bob):
                msg = await groupchat_from(client, room, "Thrice the brinded cat hath mew'd.")
                assert msg["from"] == f"{room}/Alice"

            amuc.set_subject(room, "Fire Burn and Cauldron Bubble!")
            changed = await next_where(bob.room_subjects, lambda m: bool(m["subject"]))
            assert (changed["from"], changed["subject"]) == (
                f"{room}/Alice",
                "Fire Burn and Cauldron Bubble!",
            )

            new_nick = await bmuc.set_self_nick(room, "Robert", timeout=5)
            assert new_nick == "Robert"
            gone = await next_where(
                alice.room_presences, lambda p: p["from"] == f"{room}/Bob" and 303 in codes(p)
            )
            assert gone["muc"]["item_nick"] == "Robert"
            await next_where(alice.room_presences, lambda p: p["from"] == f"{room}/Robert")

            alice.send_message(mto=f"{room}/Robert", mbody="psst", mtype="chat")
            pm = await next_where(bob.inbox, lambda m: m["body"] == "psst")
            assert pm["from"] == f"{room}/Alice" and pm["type"] == "chat"

            bmuc.leave_muc(room, "Robert", msg="gone where the goblins go")
            left = await next_where(
                alice.room_presences,
                lambda p: p["from"] == f"{room}/Robert" and p["type"] == "unavailable",
            )
            assert left["status"] == "gone where the goblins go"

    asyncio.run(run())


def test_history_is_sent_on_entry(stack: CoreProcess) -> None:
    """§7.2.15: a newcomer gets the last messages with delay stamps, limited by maxstanzas."""
    room = f"history@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice", "bob", "carol") as (alice, bob, carol):
            await create_room(alice, room, "Alice")
            for i in range(4):
                alice.send_message(mto=room, mbody=f"line {i}", mtype="groupchat")
                await groupchat_from(alice, room, f"line {i}")
            _, _, _, history = await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            assert [m["body"] for m in history] == [f"line {i}" for i in range(4)]
            assert all(m["delay"]["from"] == room for m in history)
            _, _, _, history = await carol.plugin["xep_0045"].join_muc_wait(
                room, "Carol", maxstanzas=2, timeout=5
            )
            assert [m["body"] for m in history] == ["line 2", "line 3"]

    asyncio.run(run())


def test_entry_refusals(stack: CoreProcess) -> None:
    """§7.2: nick conflict 409, wrong password 401, members-only 407, ban 403, locked 404."""
    from slixmpp.exceptions import PresenceError

    room = f"guarded@{SERVICE}"

    async def refused(client: Any, room: str, nick: str, **kw: Any) -> str:
        with pytest.raises(PresenceError) as err:
            await client.plugin["xep_0045"].join_muc_wait(room, nick, timeout=5, **kw)
        return str(err.value.condition)

    async def run() -> None:
        async with clients(stack, "alice", "bob", "carol") as (alice, bob, carol):
            amuc = alice.plugin["xep_0045"]
            # A new room is locked until configured.
            await amuc.join_muc_wait(f"locked@{SERVICE}", "Alice", timeout=5)
            assert await refused(bob, f"locked@{SERVICE}", "Bob") == "item-not-found"
            await create_room(
                alice,
                room,
                "Alice",
                **{
                    "muc#roomconfig_passwordprotectedroom": True,
                    "muc#roomconfig_roomsecret": "cauldronburn",
                },
            )
            assert await refused(bob, room, "Alice", password="cauldronburn") == "conflict"
            assert await refused(bob, room, "Bob", password="wrong") == "not-authorized"
            await amuc.set_affiliation(room, "outcast", jid="carol@localhost", timeout=5)
            assert await refused(carol, room, "Carol", password="cauldronburn") == "forbidden"
            form = alice.plugin["xep_0004"].make_form(ftype="submit")
            form.add_field(var="muc#roomconfig_membersonly", value=True)
            await amuc.set_room_config(room, form, timeout=5)
            assert await refused(bob, room, "Bob", password="cauldronburn") == (
                "registration-required"
            )
            await amuc.set_affiliation(room, "member", jid="bob@localhost", timeout=5)
            pres, _, _, _ = await bob.plugin["xep_0045"].join_muc_wait(
                room, "Bob", password="cauldronburn", timeout=5
            )
            assert pres["muc"]["affiliation"] == "member"

    asyncio.run(run())


def test_moderation(stack: CoreProcess) -> None:
    """§8, §9, §10: voice in a moderated room, kick (307), ban (301), and the member, admin
    and owner lists through muc#admin."""
    room = f"court@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice", "bob", "carol") as (alice, bob, carol):
            amuc = alice.plugin["xep_0045"]
            await create_room(alice, room, "Alice", **{"muc#roomconfig_moderatedroom": True})
            await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            await carol.plugin["xep_0045"].join_muc_wait(room, "Carol", timeout=5)
            # Visitors cannot talk until given voice.
            bob.send_message(mto=room, mbody="hello?", mtype="groupchat")
            err = await next_where(bob.inbox, lambda m: m["type"] == "error")
            assert err["error"]["condition"] == "forbidden"
            await amuc.set_role(room, "Bob", "participant", timeout=5)
            assert await amuc.get_roles_list(room, "participant", timeout=5) == ["Bob"]
            bob.send_message(mto=room, mbody="thanks", mtype="groupchat")
            await groupchat_from(alice, room, "thanks")

            await amuc.set_role(room, "Carol", "none", reason="Avaunt!", timeout=5)
            kicked = await next_where(carol.room_presences, lambda p: p["type"] == "unavailable")
            assert {110, 307} <= codes(kicked)
            seen = await next_where(
                bob.room_presences,
                lambda p: p["from"] == f"{room}/Carol" and p["type"] == "unavailable",
            )
            assert 307 in codes(seen)

            await amuc.set_affiliation(room, "outcast", jid="bob@localhost", reason="x", timeout=5)
            banned = await next_where(bob.room_presences, lambda p: p["type"] == "unavailable")
            assert {110, 301} <= codes(banned)
            outcasts = await amuc.get_affiliation_list(room, "outcast", timeout=5)
            assert [str(j) for j in outcasts] == ["bob@localhost"]

            await amuc.set_affiliation(room, "member", jid="carol@localhost", timeout=5)
            await amuc.set_affiliation(room, "admin", jid="dave@localhost", timeout=5)
            await amuc.set_affiliation(room, "owner", jid="carol@localhost", timeout=5)
            lists = {
                a: [str(j) for j in await amuc.get_affiliation_list(room, a, timeout=5)]
                for a in ("member", "admin", "owner")
            }
            assert lists == {
                "member": [],
                "admin": ["dave@localhost"],
                "owner": ["alice@localhost", "carol@localhost"],
            }
            # Bob, banned, cannot read the lists.
            from slixmpp.exceptions import IqError

            with pytest.raises(IqError) as err_info:
                await bob.plugin["xep_0045"].get_affiliation_list(room, "owner", timeout=5)
            assert err_info.value.condition == "forbidden"

    asyncio.run(run())


def test_configuration_disco_invitation_and_destroy(stack: CoreProcess) -> None:
    """§10.2 form, §6 discovery of service and rooms, §7.8 mediated invitation, §10.9
    destroy with an alternate venue."""
    room = f"coven@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice", "bob") as (alice, bob):
            amuc = alice.plugin["xep_0045"]
            await create_room(
                alice,
                room,
                "Alice",
                **{
                    "muc#roomconfig_roomname": "A Dark Cave",
                    "muc#roomconfig_persistentroom": True,
                    "muc#roomconfig_whois": "anyone",
                },
            )
            form = await amuc.get_room_config(room, timeout=5)
            assert form.get_fields()["muc#roomconfig_roomname"]["value"] == "A Dark Cave"

            disco = bob.plugin["xep_0030"]
            info = await disco.get_info(jid=SERVICE, timeout=5)
            assert ("conference", "text") in [
                (i[0], i[1]) for i in info["disco_info"]["identities"]
            ]
            assert "http://jabber.org/protocol/muc" in info["disco_info"]["features"]
            items = await disco.get_items(jid=SERVICE, timeout=5)
            assert (room, None, "A Dark Cave") in items["disco_items"]["items"]
            info = await disco.get_info(jid=room, timeout=5)
            features = info["disco_info"]["features"]
            assert {"muc_persistent", "muc_public", "muc_nonanonymous"} <= set(features)

            amuc.invite(room, "bob@localhost", reason="Come in")
            invite = await next_where(
                bob.inbox, lambda m: m["from"] == room and m["muc"]["invite"]["from"]
            )
            assert invite["muc"]["invite"]["reason"] == "Come in"
            assert invite["muc"]["invite"]["from"].bare == "alice@localhost"

            await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            await amuc.destroy(
                room, reason="Macbeth doth come.", altroom=f"other@{SERVICE}", timeout=5
            )
            gone = await next_where(bob.room_presences, lambda p: p["type"] == "unavailable")
            destroy = gone.xml.find(f"{MUC_USER}x/{MUC_USER}destroy")
            assert destroy is not None and destroy.get("jid") == f"other@{SERVICE}"
            items = await disco.get_items(jid=SERVICE, timeout=5)
            assert room not in [i[0] for i in items["disco_items"]["items"]]

    asyncio.run(run())


def test_self_ping_and_occupant_ids(stack: CoreProcess) -> None:
    """XEP-0410: a self-ping succeeds while joined; XEP-0421: messages and presence carry a
    stable occupant id."""
    room = f"ping@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice", "bob") as (alice, bob):
            await create_room(alice, room, "Alice")
            await alice.plugin["xep_0199"].ping(jid=f"{room}/Alice", timeout=5)
            from slixmpp.exceptions import IqError

            with pytest.raises(IqError) as err:
                await bob.plugin["xep_0199"].ping(jid=f"{room}/Alice", timeout=5)
            assert err.value.condition == "not-acceptable"
            await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            for body in ("one", "two"):
                alice.send_message(mto=room, mbody=body, mtype="groupchat")
            ids = []
            for body in ("one", "two"):
                msg = await groupchat_from(bob, room, body)
                oid = msg.xml.find("{urn:xmpp:occupant-id:0}occupant-id")
                ids.append(oid.get("id") if oid is not None else None)
            assert ids[0] is not None and ids[0] == ids[1]

    asyncio.run(run())


def test_muc_needs_its_configuration(tmp_path: Path) -> None:
    """`switchboard muc` without [components.muc] says what to configure and exits 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "core.cli", "muc"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert b"[components.muc]" in done.stderr


def test_disconnect_leaves_and_direct_invitations_pass(stack: CoreProcess) -> None:
    """A client that goes away without leaving is taken out of the room (the core sends
    unavailable presence to the rooms it joined, RFC 6121 §4.6.3); XEP-0249 direct
    invitations go from user to user untouched."""
    room = f"door@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice") as (alice,):
            await create_room(alice, room, "Alice")
            async with clients(stack, "bob") as (bob,):
                invite = alice.make_message(mto="bob@localhost", mbody="join us")
                # slixmpp stanzas are xml.etree elements.
                invite.xml.append(
                    ElementTree.fromstring(
                        f"<x xmlns='jabber:x:conference' jid='{room}' reason='hi'/>"
                    )
                )
                invite.send()
                direct = await next_where(
                    bob.inbox, lambda m: m.xml.find("{jabber:x:conference}x") is not None
                )
                assert direct.xml.find("{jabber:x:conference}x").get("jid") == room
                await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
                await next_where(alice.room_presences, lambda p: p["from"] == f"{room}/Bob")
            gone = await next_where(
                alice.room_presences,
                lambda p: p["from"] == f"{room}/Bob" and p["type"] == "unavailable",
                timeout=10,
            )
            assert 307 not in codes(gone)

    asyncio.run(run())


def test_iqs_to_occupants_are_relayed_without_holding_up_the_room(stack: CoreProcess) -> None:
    """IQs to room/nick reach the occupant's client from the asker's occupant JID (slixmpp
    answers the version query); while an occupant's client keeps an IQ unanswered, the room
    goes on fanning out messages, and the late answer still reaches the asker."""
    from slixmpp.xmlstream.handler import Callback
    from slixmpp.xmlstream.matcher import MatchXPath

    room = f"relay@{SERVICE}"

    async def run() -> None:
        async with clients(stack, "alice", "bob") as (alice, bob):
            await create_room(alice, room, "Alice")
            await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            version = await bob.plugin["xep_0092"].get_version(f"{room}/Alice", timeout=5)
            assert version["from"] == f"{room}/Alice"
            assert version["software_version"]["name"] == "Slixmpp"

            held: asyncio.Queue[Any] = asyncio.Queue()
            alice.register_handler(
                Callback(
                    "hold",
                    MatchXPath("{jabber:client}iq/{urn:example:slow}query"),
                    held.put_nowait,
                )
            )
            ask = bob.make_iq_get(queryxmlns="urn:example:slow", ito=f"{room}/Alice")
            answered = asyncio.ensure_future(ask.send(timeout=10))
            request = await asyncio.wait_for(held.get(), 5)
            assert request["from"] == f"{room}/Bob"
            bob.send_message(mto=room, mbody="still here", mtype="groupchat")
            for client in (alice, bob):
                await groupchat_from(client, room, "still here", timeout=5)
            assert not answered.done()
            request.reply().send()
            result = await asyncio.wait_for(answered, 5)
            assert (result["type"], result["from"]) == ("result", f"{room}/Alice")

    asyncio.run(run())


def test_members_only_room_registration_voice_and_sessions(stack: CoreProcess) -> None:
    """§7.10 with §9.9: a registration request to a members-only room reaches the owner as
    an approval form, whose approval makes the requester a member (invited); two sessions
    of one user share a nick; an availability change is broadcast; §7.13 and §8.6: a
    visitor's voice request reaches the moderator, whose approval gives voice back."""
    from slixmpp.exceptions import PresenceError

    room = f"guild@{SERVICE}"
    register_ns = "jabber:iq:register"
    data = "{jabber:x:data}"

    async def run() -> None:
        async with clients(stack, "alice", "bob", "bob") as (alice, bob, bob2):
            amuc = alice.plugin["xep_0045"]
            await create_room(
                alice,
                room,
                "Alice",
                **{"muc#roomconfig_membersonly": True, "muc#roomconfig_moderatedroom": True},
            )
            with pytest.raises(PresenceError) as refused:
                await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            assert refused.value.condition == "registration-required"
            asked = await bob.make_iq_get(queryxmlns=register_ns, ito=room).send(timeout=5)
            nick_field = f"{{{register_ns}}}query/{data}x/{data}field[@var='muc#register_roomnick']"
            assert asked.xml.find(nick_field) is not None
            iq = bob.make_iq_set(ito=room)
            iq.xml.append(
                ElementTree.fromstring(
                    f"<query xmlns='{register_ns}'><x xmlns='jabber:x:data' type='submit'>"
                    "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register"
                    "</value></field><field var='muc#register_roomnick'><value>Bob</value>"
                    "</field></x></query>"
                )
            )
            await iq.send(timeout=5)

            request = await next_where(
                alice.inbox, lambda m: m.xml.find(f"{data}x") is not None and m["from"] == room
            )
            approval = request.xml.find(f"{data}x")
            approval.set("type", "submit")
            for field in approval.iter(f"{data}field"):
                if field.get("var") == "muc#register_allow":
                    field.find(f"{data}value").text = "1"
            answer = alice.make_message(mto=room)
            answer.xml.append(approval)
            answer.send()
            invite = await next_where(bob.inbox, lambda m: m["from"] == room)
            assert invite["muc"]["invite"]["from"].bare == "alice@localhost"
            members = await amuc.get_affiliation_list(room, "member", timeout=5)
            assert [str(j) for j in members] == ["bob@localhost"]

            # Both of Bob's sessions join as Bob; Alice sees one occupant.
            pres, _, _, _ = await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            assert pres["muc"]["affiliation"] == "member" and pres["muc"]["role"] == "participant"
            _, _, present, _ = await bob2.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
            assert sorted(p["from"].resource for p in present) == ["Alice", "Bob"]
            bob2.send_presence(pto=f"{room}/Bob", pshow="away")
            away = await next_where(
                alice.room_presences, lambda p: p["from"] == f"{room}/Bob" and p["show"] == "away"
            )
            assert away["muc"]["role"] == "participant"

            # Bob loses his voice and asks for it back; Alice's approval restores it.
            await amuc.set_role(room, "Bob", "visitor", timeout=5)
            await next_where(
                bob.room_presences,
                lambda p: p["from"] == f"{room}/Bob" and p["muc"]["role"] == "visitor",
            )
            bob.plugin["xep_0045"].request_voice(room, "participant")
            asked = await next_where(
                alice.inbox,
                lambda m: m["from"] == room and m.xml.find(f"{data}x") is not None,
            )
            grant = asked.xml.find(f"{data}x")
            grant.set("type", "submit")
            for field in grant.iter(f"{data}field"):
                if field.get("var") == "muc#request_allow":
                    field.find(f"{data}value").text = "true"
            answer = alice.make_message(mto=room)
            answer.xml.append(grant)
            answer.send()
            await next_where(
                bob2.room_presences,
                lambda p: p["from"] == f"{room}/Bob" and p["muc"]["role"] == "participant",
            )

    asyncio.run(run())
