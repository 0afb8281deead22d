"""Property-based robustness of the MUC service (XEP-0045) on its real code path.

The ``switchboard muc`` app (components.muc.app.build) linked through the component client
(core.xmpp.component) to a scripted core over a StringTransport, rooms in the test Redis.
The core side sends generated stanzas from several users (and malformed senders): joins with
passwords and history requests, nick changes, leaving, availability, presence errors,
groupchat and private messages, subjects, invitations, declines, voice requests and
registration approvals, and IQs of muc#admin, muc#owner (configuration forms with random
fields, destroy), jabber:iq:register, disco, ping, version and vCard, to the service, rooms
and occupants. IQs the rooms relay to occupants are answered by the scripted core, or not.
The properties:

* nothing escapes and nothing is logged at ERROR (a room whose stored state cannot be read
  back is logged at ERROR: that would be state lost);
* every IQ get/set is answered exactly once, with its id, to its sender (relayed IQs still
  unanswered when the instance stops are answered ``remote-server-timeout``);
* an error, or an IQ result, is never answered with an error;
* what an instance holds in memory is what it stored: every room it served loads from Redis
  with the same configuration, affiliations, occupants, subject and history; a fresh
  instance (a failover, now and then in the middle of an example) carries on with them and
  serves every stored room;
* random bytes from the core get a stream error or nothing; the instance connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from twisted.internet.testing import MemoryReactorClock

from components.muc.app import build
from components.muc.model import Room
from components.muc.service import MucService
from components.muc.store import RoomStore
from core.runtime.config import load_config
from core.xmpp.component import Backoff, ComponentApp
from core.xmpp.component_link import handshake_digest
from core.xmpp.ns import (
    NS_COMPONENT,
    NS_DATA,
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_MUC,
    NS_PING,
    NS_STREAMS,
    NS_VCARD,
    NS_VERSION,
    qn,
)
from tests.unit.helpers import until
from tests.unit.test_component_client import Server
from tests.unit.test_fuzz_c2s import (
    GARBAGE,
    MALFORMED_JID,
    TEXT,
    VALUE,
    LogTrap,
    T,
    any_element,
    check_answers,
    fuzz_settings,
    mostly,
    parse_sent,
    rarely,
    replies_to,
    short,
    stanza,
    stanzas,
    weighted,
)
from tests.unit.test_fuzz_c2s import (
    build as element,
)

Element = etree._Element
SERVICE = "conference.localhost"
SECRET = "muc-secret"
ROOMS = [f"coven@{SERVICE}", f"darkcave@{SERVICE}"]
USERS = [
    "crone1@shakespeare.lit/desktop",
    "crone1@shakespeare.lit/laptop",
    "hag66@shakespeare.lit/pda",
    "wiccarocks@shakespeare.lit/laptop",
    "alice@localhost/res",
]
OUTSIDER = "outsider@elsewhere.example/x"
NICKS = ["firstwitch", "secondwitch", "thirdwitch", "Firstwitch"]
ODD_NICKS = ["", " ", "\ufb00", "\u212b", "n" * 1100, "a/b", "\u202e"]
USER = "http://jabber.org/protocol/muc#user"
ADMIN = "http://jabber.org/protocol/muc#admin"
OWNER = "http://jabber.org/protocol/muc#owner"
REGISTER = "jabber:iq:register"

# -- Addresses ---------------------------------------------------------------------------

ROOM = mostly(st.sampled_from(ROOMS), st.sampled_from([f"x@{SERVICE}", "ROOM@" + SERVICE.upper()]))
NICK = mostly(st.sampled_from(NICKS), st.sampled_from(ODD_NICKS) | TEXT)
OCCUPANT = st.builds(lambda room, nick: f"{room}/{nick}", ROOM, NICK)
SENDER = weighted(
    (12, st.sampled_from(USERS)),
    (1, st.sampled_from([SERVICE, "shakespeare.lit", f"coven@{SERVICE}/x"])),
    (1, MALFORMED_JID),
)
# 'to' of presence: an occupant JID mostly (a join, a nick change); of the rest: the room.
PRESENCE_TO = weighted((8, OCCUPANT), (2, ROOM), (1, st.just(SERVICE)), (1, MALFORMED_JID))
MESSAGE_TO = weighted((6, ROOM), (3, OCCUPANT), (1, st.just(SERVICE)), (1, MALFORMED_JID))
REAL_JID = mostly(
    st.sampled_from([u.partition("/")[0] for u in USERS] + USERS + ["shakespeare.lit"]),
    VALUE,
)

# -- Payloads ----------------------------------------------------------------------------


@st.composite
def join_x(draw: st.DrawFn) -> Element:
    """<x xmlns='…muc'/> of a join (§7.2): a password, a history request (§7.2.15)."""
    x = element(qn(NS_MUC, "x"))
    if draw(st.integers(0, 3)) == 0:
        x.append(element(qn(NS_MUC, "password"), None, draw(mostly(st.just("cauldron"), TEXT))))
    if draw(st.integers(0, 3)) == 0:
        attrs = {}
        for name in ("maxstanzas", "maxchars", "seconds"):
            if draw(st.booleans()):
                attrs[name] = draw(
                    mostly(st.integers(0, 30).map(str), st.sampled_from(["-1", "x", "1e9", ""]))
                )
        if draw(st.integers(0, 3)) == 0:
            attrs["since"] = draw(
                st.sampled_from(["1970-01-01T00:00:00Z", "2023-11-14T22:13:20Z", "yesterday"])
            )
        x.append(element(qn(NS_MUC, "history"), attrs))
    return x


@st.composite
def user_x(draw: st.DrawFn) -> Element:
    """<x xmlns='…muc#user'/> of a message: invitations (§7.8.2), declines (§7.8.2.1)."""
    x = element(qn(USER, "x"))
    for _ in range(draw(st.sampled_from([1, 1, 2]))):
        local = draw(st.sampled_from(["invite", "invite", "decline", "password", "status"]))
        attrs = {}
        if local in ("invite", "decline") and draw(st.integers(0, 5)):
            attrs[draw(st.sampled_from(["to", "to", "from"]))] = draw(REAL_JID)
        child = element(qn(USER, local), attrs)
        if draw(st.booleans()):
            child.append(element(qn(USER, "reason"), None, draw(TEXT)))
        x.append(child)
    return x


ROOMCONFIG_FIELDS = {
    "muc#roomconfig_roomname": TEXT,
    "muc#roomconfig_roomdesc": TEXT,
    "muc#roomconfig_lang": st.sampled_from(["en", "de", ""]),
    "muc#roomconfig_persistentroom": st.sampled_from(["1", "0", "true", "false", "x"]),
    "muc#roomconfig_publicroom": st.sampled_from(["1", "0", "x"]),
    "muc#roomconfig_membersonly": st.sampled_from(["1", "0"]),
    "muc#roomconfig_moderatedroom": st.sampled_from(["1", "0"]),
    "muc#roomconfig_passwordprotectedroom": st.sampled_from(["1", "0"]),
    "muc#roomconfig_roomsecret": st.sampled_from(["cauldron", ""]),
    "muc#roomconfig_maxusers": st.sampled_from(["1", "2", "10", "0", "none", "-1", "x"]),
    "muc#roomconfig_whois": st.sampled_from(["moderators", "anyone", "x"]),
    "muc#roomconfig_changesubject": st.sampled_from(["1", "0"]),
    "muc#roomconfig_allowinvites": st.sampled_from(["1", "0"]),
    "muc#roomconfig_allowpm": st.sampled_from(
        ["anyone", "participants", "moderators", "none", "x"]
    ),
    "muc#maxhistoryfetch": st.sampled_from(["0", "5", "1000", "-3", "x"]),
    "muc#roomconfig_presencebroadcast": st.sampled_from(["moderator", "participant", "x"]),
    "muc#roomconfig_roomadmins": REAL_JID,
    "muc#roomconfig_roomowners": REAL_JID,
}


@st.composite
def data_form(
    draw: st.DrawFn, form_type: str, fields: dict[str, st.SearchStrategy[str]]
) -> Element:
    """A jabber:x:data form of type submit (mostly) with some of ``fields``, multi-valued
    now and then."""
    ftype = draw(mostly(st.just("submit"), st.sampled_from(["cancel", "form", "result", "x"])))
    x = element(qn(NS_DATA, "x"), {"type": ftype})
    if draw(st.integers(0, 7)):
        f = element(qn(NS_DATA, "field"), {"var": "FORM_TYPE", "type": "hidden"})
        f.append(element(qn(NS_DATA, "value"), None, form_type))
        x.append(f)
    names = draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True))
    for var in names:
        f = element(qn(NS_DATA, "field"), {"var": var})
        for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
            f.append(element(qn(NS_DATA, "value"), None, draw(fields[var])))
        x.append(f)
    return x


@st.composite
def admin_query(draw: st.DrawFn) -> Element:
    """muc#admin items (§8-§10): a role by nick, an affiliation by JID, with a reason."""
    q = element(qn(ADMIN, "query"))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 0]))):
        attrs = {}
        if draw(st.booleans()):
            attrs["nick"] = draw(NICK)
        else:
            attrs["jid"] = draw(REAL_JID)
        key = draw(st.sampled_from(["role", "affiliation"]))
        roles = ["none", "visitor", "participant", "moderator"]
        affs = ["outcast", "none", "member", "admin", "owner"]
        attrs[key] = draw(rarely(st.sampled_from(roles if key == "role" else affs), VALUE))
        item = element(qn(ADMIN, "item"), attrs)
        if draw(st.booleans()):
            item.append(element(qn(ADMIN, "reason"), None, draw(TEXT)))
        q.append(item)
    return q


@st.composite
def owner_query(draw: st.DrawFn) -> Element:
    """muc#owner (§10): a configuration form, an empty query, or a destroy."""
    q = element(qn(OWNER, "query"))
    what = draw(st.sampled_from(["form", "form", "form", "empty", "destroy"]))
    if what == "form":
        q.append(draw(data_form(f"{NS_MUC}#roomconfig", ROOMCONFIG_FIELDS)))
    elif what == "destroy":
        attrs = {"jid": draw(ROOM)} if draw(st.booleans()) else {}
        d = element(qn(OWNER, "destroy"), attrs)
        if draw(st.booleans()):
            d.append(element(qn(OWNER, "reason"), None, draw(TEXT)))
        q.append(d)
    return q


@st.composite
def register_query(draw: st.DrawFn) -> Element:
    """jabber:iq:register (§7.10) with a muc#register form."""
    q = element(qn(REGISTER, "query"))
    if draw(st.integers(0, 3)):
        fields = {
            "muc#register_roomnick": NICK,
            "muc#register_first": TEXT,
            "muc#register_url": TEXT,
        }
        q.append(draw(data_form(f"{NS_MUC}#register", fields)))
    return q


@st.composite
def other_query(draw: st.DrawFn) -> Element:
    """disco#info and #items (§6), ping (XEP-0199, XEP-0410), version, vCard (relayed)."""
    ns, local = draw(
        st.sampled_from(
            [
                (NS_DISCO_INFO, "query"),
                (NS_DISCO_ITEMS, "query"),
                (NS_PING, "ping"),
                (NS_VERSION, "query"),
                (NS_VCARD, "vCard"),
            ]
        )
    )
    attrs = {}
    if ns in (NS_DISCO_INFO, NS_DISCO_ITEMS) and draw(st.integers(0, 3)) == 0:
        attrs["node"] = draw(st.sampled_from(["x-roomuser-item", "", "other"]) | TEXT)
    return element(qn(ns, local), attrs)


MUC_IQ_PAYLOAD = weighted(
    (3, admin_query()),
    (3, owner_query()),
    (2, register_query()),
    (3, other_query()),
    (1, any_element(1)),
)
_NATURAL = {
    qn(ADMIN, "query"): ["get", "set", "set"],
    qn(OWNER, "query"): ["get", "set", "set"],
    qn(REGISTER, "query"): ["get", "set"],
}


@st.composite
def muc_iq(draw: st.DrawFn) -> tuple[str | None, str | None, list[Element]]:
    """The type, 'to' and children of an IQ to the service, a room or an occupant."""
    children = [draw(MUC_IQ_PAYLOAD) for _ in range(draw(st.sampled_from([1, 1, 1, 1, 1, 0, 2])))]
    natural = _NATURAL.get(children[0].tag, ["get"]) if children else ["get"]
    stype = draw(
        mostly(st.sampled_from(natural), st.sampled_from(["get", "set", "result", "error", None]))
    )
    to = draw(weighted((6, ROOM), (3, OCCUPANT), (1, st.just(SERVICE)), (1, MALFORMED_JID)))
    return stype, to, children


@st.composite
def muc_message_child(draw: st.DrawFn) -> Element:
    """A body, a subject (§8.1), an invitation or decline, a voice request (§8.6) or a
    registration approval (§9.9)."""
    kind = draw(st.sampled_from(["body", "body", "subject", "user", "request", "approve"]))
    if kind in ("body", "subject"):
        text = draw(mostly(TEXT, st.sampled_from(["", "x" * 10001])))
        return element(qn(NS_COMPONENT, kind), None, text)
    if kind == "user":
        return draw(user_x())
    if kind == "request":
        fields = {
            "muc#role": st.sampled_from(["participant", "moderator", "x"]),
            "muc#jid": REAL_JID,
            "muc#roomnick": NICK,
            "muc#request_allow": st.sampled_from(["1", "0", "true", "x"]),
        }
        return draw(data_form(f"{NS_MUC}#request", fields))
    fields = {
        "muc#register_allow": st.sampled_from(["1", "0", "x"]),
        "muc#jid": REAL_JID,
        "muc#register_roomnick": NICK,
    }
    return draw(data_form(f"{NS_MUC}#register", fields))


@st.composite
def muc_presence_child(draw: st.DrawFn) -> Element:
    kind = draw(st.sampled_from(["join", "join", "join", "show", "status", "priority", "other"]))
    if kind == "join":
        return draw(join_x())
    if kind == "other":
        return draw(any_element(1))
    text = draw(mostly(st.sampled_from(["away", "dnd", "5", "hi"]), VALUE))
    return element(qn(NS_COMPONENT, kind), None, text)


@st.composite
def muc_stanza(draw: st.DrawFn) -> Element:
    """A stanza the core hands the MUC service, from one of its users (or someone else)."""
    kind = draw(st.sampled_from(["presence", "presence", "message", "message", "iq", "iq"]))
    if kind == "iq":
        el = draw(stanza(ns=NS_COMPONENT, frm=SENDER, iq=muc_iq()))
        return el
    el = element(qn(NS_COMPONENT, kind))
    if kind == "presence":
        ptype = draw(
            mostly(
                st.sampled_from([None, None, None, "unavailable"]),
                st.sampled_from(["error", "subscribe", "probe", "x"]),
            )
        )
        to = draw(PRESENCE_TO)
        children = draw(st.lists(muc_presence_child(), max_size=2))
    else:
        ptype = draw(
            mostly(
                st.sampled_from(["groupchat", "groupchat", "chat", None, "normal"]),
                st.sampled_from(["error", "headline", "x"]),
            )
        )
        to = draw(MESSAGE_TO)
        children = draw(st.lists(muc_message_child(), max_size=2))
    for name, value in (("type", ptype), ("to", to), ("from", draw(SENDER))):
        if value is not None:
            el.set(name, value)
    for c in children:
        el.append(c)
    if ptype == "error":
        condition = draw(
            st.sampled_from(["service-unavailable", "recipient-unavailable", "bad-request"])
        )
        err = element(qn(NS_COMPONENT, "error"), {"type": "cancel"})
        err.append(element(qn("urn:ietf:params:xml:ns:xmpp-stanzas", condition)))
        el.append(err)
    return el


# A prelude that makes a configured room with a few occupants, so that most examples start
# where the interesting rules are (roles, affiliations, moderation).
PRELUDE = [
    f"<presence xmlns='{NS_COMPONENT}' from='{USERS[0]}' to='{ROOMS[0]}/firstwitch'>"
    f"<x xmlns='{NS_MUC}'/></presence>",
    f"<iq xmlns='{NS_COMPONENT}' type='set' id='cfg' from='{USERS[0]}' to='{ROOMS[0]}'>"
    f"<query xmlns='{OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query></iq>",
    f"<presence xmlns='{NS_COMPONENT}' from='{USERS[2]}' to='{ROOMS[0]}/thirdwitch'>"
    f"<x xmlns='{NS_MUC}'/></presence>",
    f"<presence xmlns='{NS_COMPONENT}' from='{USERS[3]}' to='{ROOMS[0]}/secondwitch'>"
    f"<x xmlns='{NS_MUC}'/></presence>",
]

# -- The harness -------------------------------------------------------------------------


def _config() -> Any:
    return load_config(
        None,
        env={
            "SWITCHBOARD_COMPONENTS_MUC_DOMAIN": SERVICE,
            "SWITCHBOARD_COMPONENTS_MUC_SECRET": SECRET,
        },
    )


class MucFuzz:
    """One event loop and Redis client for the examples of one test; a MUC instance per
    example, linked to a scripted core, and its rooms wiped before the next."""

    def __init__(self, redis_url: str) -> None:
        self.runner = asyncio.Runner()
        self.redis_url = redis_url
        self.trap = LogTrap()
        self.redis: Any = None
        self.config = _config()
        self.apps: list[tuple[ComponentApp, Server]] = []

    def __enter__(self) -> MucFuzz:
        self.runner.__enter__()
        self.redis = redis.asyncio.Redis.from_url(self.redis_url, decode_responses=False)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.runner.run(self.redis.aclose())
        finally:
            self.runner.__exit__(None, None, None)

    def run(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` with the log trap installed; fail on what it caught. The instances
        the example started are stopped afterwards, pass or fail."""

        async def wrapper() -> T:
            try:
                return await coro
            finally:
                await self.cleanup()

        with self.trap.installed(self.runner.get_loop()):
            result = self.runner.run(wrapper())
        caught = self.trap.take()
        assert not caught, "\n".join(caught)
        return result

    async def reset(self) -> None:
        keys = await self.redis.keys("muc:*")
        if keys:
            await self.redis.delete(*keys)

    def instance(self, name: str = "m1") -> tuple[ComponentApp, MucService, Server]:
        """A MUC instance linked to a scripted core."""
        app, service = build(
            self.config,
            self.redis,
            reactor=MemoryReactorClock(),
            instance=name,
            keepalive=0,
            backoff=Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.0),
        )
        assert isinstance(app, ComponentApp)
        app.start()
        server = Server(app)
        server.send(
            f"<stream:stream xmlns='{NS_COMPONENT}' xmlns:stream='{NS_STREAMS}' "
            f"from='{SERVICE}' id='sid'>"
        )
        (handshake,) = server.read()
        assert handshake.text == handshake_digest("sid", SECRET)
        server.send("<handshake/>")
        assert app.linked
        self.apps.append((app, server))
        return app, service, server

    async def stop(self, app: ComponentApp, server: Server) -> list[Element]:
        """Stop ``app`` gracefully (as on SIGTERM); what it sent on the way."""
        self.apps.remove((app, server))
        stopping = asyncio.ensure_future(app.stop(timeout=5))
        if app.linked:
            # In-flight stanzas finish, pending relays are answered, then the stream closes.
            await until(lambda: b"</stream:stream>" in server.transport.value(), timeout=5)
        out = server.read()
        server.lose()
        await asyncio.wait_for(stopping, 5)
        return out + server.read()

    async def cleanup(self) -> None:
        """Stop the instances an example left running (a failing one, mostly)."""
        for app, server in list(self.apps):
            with contextlib.suppress(Exception):
                await self.stop(app, server)


async def quiet(app: ComponentApp) -> None:
    """Wait until the app handled everything it was given (bounded)."""
    for _ in range(200):
        await asyncio.sleep(0)
        busy = [t for t in app._tasks if not t.done()]
        if not busy:
            return
        done, _ = await asyncio.wait(busy, timeout=5)
        assert done, "the MUC service is stuck"
    raise AssertionError("the MUC service kept working")


@pytest.fixture
def fuzz(redis_url: str) -> Iterator[MucFuzz]:
    with MucFuzz(redis_url) as harness:
        yield harness


def answer_relays(server: Server, got: list[Element], answer: str | None) -> None:
    """The scripted core answers the IQs a room relayed to occupants' real JIDs."""
    if answer is None:
        return
    for el in got:
        if etree.QName(el).localname == "iq" and el.get("type") in ("get", "set"):
            reply = etree.Element(
                qn(NS_COMPONENT, "iq"),
                {
                    "type": answer,
                    "id": el.get("id", ""),
                    "from": el.get("to", ""),
                    "to": el.get("from", ""),
                },
            )
            if answer == "error":
                err = etree.SubElement(reply, qn(NS_COMPONENT, "error"), type="cancel")
                etree.SubElement(err, qn("urn:ietf:params:xml:ns:xmpp-stanzas", "item-not-found"))
            server.send(etree.tostring(reply, encoding="unicode"))


def error_condition(el: Element) -> str | None:
    """The condition of an error stanza, None for any other."""
    for err in el.iter(qn(NS_COMPONENT, "error")):
        for c in err:
            if etree.QName(c).localname != "text":
                return etree.QName(c).localname
    return None


def snapshot(room: Room) -> dict[str, Any]:
    """What must survive a failover: everything but the sessions' parsed caches."""
    return {
        "config": room.config.to_dict(),
        "affiliations": {j: a.to_dict() for j, a in room.affiliations.items()},
        "occupants": {n: o.to_dict() for n, o in room.occupants.items()},
        "subject": room.subject.to_dict() if room.subject is not None else None,
        "history": [h.to_dict() for h in room.history],
        "locked": room.locked,
    }


async def check_stored(fuzz: MucFuzz, service: MucService) -> None:
    """What an instance holds in memory is what Redis holds."""
    store = RoomStore(fuzz.redis, SERVICE)
    for jid, room in list(service.rooms.items()):
        loaded = await store.load(jid, service.env.settings.max_history)
        assert loaded is not None, f"{jid} is served but not stored"
        assert snapshot(loaded) == snapshot(room), f"{jid} differs from what is stored"


async def stanzas_to_muc(
    fuzz: MucFuzz, texts: list[str], relays: str | None, failover: int | None
) -> None:
    """Send ``texts`` to a MUC instance (replaced by a fresh one, as after a failover, before
    text number ``failover``); check each answer, then the stored rooms."""
    await fuzz.reset()
    app, service, server = fuzz.instance()
    sent: list[Element] = []
    got: list[Element] = []
    for n, text in enumerate(texts):
        if n == failover:
            await check_stored(fuzz, service)
            got.extend(await fuzz.stop(app, server))
            app, service, server = fuzz.instance(f"m{n}")
        server.send(text)
        await quiet(app)
        out = server.read()
        answer_relays(server, out, relays)
        await quiet(app)
        out += server.read()
        el = parse_sent(text, NS_COMPONENT)
        sent.append(el)
        got.extend(out)
        # Errors, and IQ results, are never answered (RFC 6120 §8.3.1); one answer at most.
        check_answers(el, [o for o in out if o.get("to") == el.get("from")], closed=True)
    await check_stored(fuzz, service)
    # A graceful stop answers what is still pending; then every IQ get/set had one answer.
    got.extend(await fuzz.stop(app, server))
    for el in sent:
        if etree.QName(el).localname == "iq" and el.get("type") in ("get", "set") and el.get("id"):
            mine = [o for o in replies_to(el, got) if o.get("to") == el.get("from")]
            assert len(mine) == 1, f"{len(mine)} answers to {short(el)}: {[short(o) for o in mine]}"
    # A fresh instance serves every stored room (a locked one is not there for others yet,
    # §10.1.1).
    app, service, server = fuzz.instance("last")
    store = RoomStore(fuzz.redis, SERVICE)
    for jid in await store.rooms():
        room = await store.load(jid, service.env.settings.max_history)
        assert room is not None
        server.send(
            f"<iq xmlns='{NS_COMPONENT}' type='get' id='after' from='{OUTSIDER}' to='{jid}'>"
            f"<query xmlns='{NS_DISCO_INFO}'/></iq>"
        )
        await quiet(app)
        (answer,) = [o for o in server.read() if o.get("id") == "after"]
        expected = "item-not-found" if room.locked else None
        assert error_condition(answer) == expected, short(answer)


def test_random_stanzas_to_rooms(fuzz: MucFuzz) -> None:
    """Random presence, messages and IQs to the service, rooms and occupants, with a failover
    to a fresh instance now and then: one answer per IQ, no error answered, nothing logged as
    a failure, and what is served is stored."""

    @fuzz_settings(120)
    @given(
        stanzas(muc_stanza(), max_size=12, prelude=False),
        st.booleans(),
        st.sampled_from([None, "result", "error"]),
        st.none() | st.integers(1, 12),
    )
    def check(texts: list[str], prelude: bool, relays: str | None, failover: int | None) -> None:
        texts = (PRELUDE if prelude else []) + texts
        fuzz.run(stanzas_to_muc(fuzz, texts, relays, failover))

    check()


def test_random_bytes_from_the_core(fuzz: MucFuzz) -> None:
    """Random bytes on the component link: a stream error or nothing, never a failure; the
    instance reconnects (its link is lost, it schedules a new connection)."""

    async def body(chunks: list[bytes]) -> None:
        await fuzz.reset()
        app, _service, server = fuzz.instance()
        for chunk in chunks:
            server.proto.dataReceived(chunk)
            await quiet(app)
            server.read()
        server.lose()
        await quiet(app)
        assert not app.linked
        # It connects again after its backoff (XEP-0114 components reconnect forever).
        reactor = app.reactor
        attempts = len(reactor.tcpClients)
        reactor.advance(app.backoff.maximum)
        assert len(reactor.tcpClients) == attempts + 1

    @fuzz_settings(40)
    @given(st.lists(GARBAGE, min_size=1, max_size=3))
    def check(chunks: list[bytes]) -> None:
        fuzz.run(body(chunks))

    check()


# -- Regressions found by the properties above ------------------------------------------


def test_refused_first_join_leaves_no_room_behind(
    redis_client: redis.asyncio.Redis, run_async: Any
) -> None:
    """A first join refused after the room was made (a blank nick, §7.2.1) leaves neither a
    stored room nor one cached in memory that Redis does not have."""
    from tests.unit.test_muc_transcript import Muc

    async def go() -> None:
        muc = Muc(redis_client)
        out = await muc.send(
            f"<presence from='{USERS[0]}' to='{ROOMS[0]}/ '><x xmlns='{NS_MUC}'/></presence>"
        )
        assert [o.get("type") for o in out] == ["error"]
        assert await muc.service.store.rooms() == []
        assert ROOMS[0] not in muc.service.rooms

    run_async(go())
