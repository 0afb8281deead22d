"""Creating and entering rooms (XEP-0045 §7.2, §10.1).

A join is a presence to ``room@service/nick`` carrying ``<x xmlns='http://jabber.org/protocol/
muc'/>``. The new occupant receives, in this order (§7.2.3, §7.2.15, §7.2.16): the presence of
every other occupant, its own presence with status 110 (and 100, 201 or 210 as they apply), the
discussion history, then the subject (always, empty when none is set).
"""

from __future__ import annotations

from lxml import etree

from components.muc.env import Env, Out
from components.muc.errors import Refused
from components.muc.history import HistoryRequest, select
from components.muc.model import AFFILIATION_RANK, Occupant, Room, RoomConfig
from components.muc.names import (
    QN_X_MUC,
    STATUS_CREATED,
    STATUS_NICK_MODIFIED,
    STATUS_NON_ANONYMOUS,
)
from components.muc.stanzas import (
    occupant_jid,
    occupant_presence,
    receives_presence_of,
    stored_presence,
)
from core.xmpp.ns import NS_CLIENT, NS_MUC, qn
from core.xmpp.stanza import make, new_id

Element = etree._Element
QN_PASSWORD = qn(NS_MUC, "password")


def new_room(jid: str, creator: str, env: Env) -> Room:
    """A room created by ``creator`` (a bare JID), who becomes its owner (§10.1.1). It stays
    locked until the owner submits the configuration form (or an empty one, §10.1.2)."""
    settings = env.settings
    config = RoomConfig(
        persistent=settings.persistent_by_default,
        max_users=settings.default_max_occupants,
        history_length=settings.default_history,
    )
    room = Room(
        jid=jid,
        config=config,
        locked=True,
        created=env.now(),
        creator=creator,
        secret=env.new_secret(),
    )
    room.set_affiliation(creator, "owner")
    room.changes.created = True
    room.touch()
    return room


def valid_nick(nick: str | None) -> str:
    """§7.2.1: a nick is required and must not be only spaces (it is already prepared as a
    resourcepart, RFC 7622 §3.4)."""
    if not nick or not nick.strip():
        raise Refused("bad-nick")
    return nick


def initial_role(room: Room, affiliation: str) -> str:
    """§5.1.2: owners and admins are moderators; in a moderated room those without an
    affiliation enter as visitors."""
    if affiliation in ("owner", "admin"):
        return "moderator"
    if room.config.moderated and affiliation == "none":
        return "visitor"
    return "participant"


def max_users(room: Room, env: Env) -> int:
    limit = env.settings.max_occupants
    if room.config.max_users:
        limit = min(limit, room.config.max_users)
    return limit


def check_entry(room: Room, bare: str, nick: str, presence: Element, env: Env) -> str:
    """Refuse an entry the room does not allow (§7.2.5-§7.2.10); returns the affiliation."""
    affiliation = room.affiliation(bare)
    if room.locked and affiliation != "owner":
        raise Refused("locked")
    if affiliation == "outcast":
        raise Refused("banned")
    holder = room.occupants.get(nick)
    if holder is not None and holder.bare != bare:
        raise Refused("nick-conflict")
    reserved = room.reserved_nick_owner(nick)
    if reserved is not None and reserved != bare:
        raise Refused("nick-conflict", "That nickname is reserved by another user")
    if room.config.members_only and AFFILIATION_RANK[affiliation] < AFFILIATION_RANK["member"]:
        raise Refused("members-only")
    if room.config.password_protected:
        x = presence.find(QN_X_MUC)
        given = x.findtext(QN_PASSWORD) if x is not None else None
        if given != room.config.password:
            raise Refused("password")
    if (
        holder is None
        and len(room.occupants) >= max_users(room, env)
        and AFFILIATION_RANK[affiliation] < AFFILIATION_RANK["admin"]
    ):
        raise Refused("full")
    return affiliation


def enter(
    room: Room,
    presence: Element,
    full: str,
    bare: str,
    nick: str,
    env: Env,
    *,
    created: bool = False,
    nick_modified: bool = False,
) -> Out:
    """Admit the session ``full`` (of ``bare``) as ``nick``; returns what the room sends.
    ``nick_modified``: the nick asked for was not in its normalised form (RFC 7622 §3.4),
    so the occupant's nick differs from it (status 210)."""
    nick = valid_nick(nick)
    check_entry(room, bare, nick, presence, env)
    occupant = room.occupants.get(nick)
    if occupant is None:
        occupant = Occupant(
            nick=nick,
            bare=bare,
            role=initial_role(room, room.affiliation(bare)),
            joined=env.now(),
        )
    occupant.set_presence(full, stored_presence(presence))
    room.put_occupant(occupant)
    return _welcome(
        room,
        occupant,
        full,
        presence,
        env,
        created=created,
        broadcast=True,
        nick_modified=nick_modified,
    )


def rejoin(room: Room, occupant: Occupant, full: str, presence: Element, env: Env) -> Out:
    """A joined session joins again (a client that lost track of the room, §7.2.3 note on
    desynchronised clients): it gets the whole room state again, the others only its presence."""
    occupant.set_presence(full, stored_presence(presence))
    room.touch_occupant(occupant)
    return _welcome(room, occupant, full, presence, env, created=False, broadcast=True)


def _welcome(
    room: Room,
    occupant: Occupant,
    full: str,
    presence: Element,
    env: Env,
    *,
    created: bool,
    broadcast: bool,
    nick_modified: bool = False,
) -> Out:
    out: Out = []
    # 1. §7.2.3: the presence of every other occupant, to the new session.
    for other in room.occupants.values():
        if other is occupant or not receives_presence_of(room, other):
            continue
        out.append(occupant_presence(room, other, full, viewer=occupant))
    # 2. The new presence to everyone else (and to the occupant's other sessions).
    if broadcast:
        for viewer, to in room.sessions():
            if to == full:
                continue
            if viewer is not occupant and not receives_presence_of(room, occupant):
                continue
            out.append(occupant_presence(room, occupant, to, viewer=viewer, session=full))
    # 3. Self-presence, last of the presences (§7.2.3), with its status codes.
    codes = []
    if room.config.non_anonymous:
        codes.append(STATUS_NON_ANONYMOUS)  # §7.2.4
    if created:
        codes.append(STATUS_CREATED)  # §10.1.1
    if nick_modified:
        codes.append(STATUS_NICK_MODIFIED)  # §7.2: the room JID is not the one asked for
    self_presence = occupant_presence(
        room, occupant, full, viewer=occupant, codes=codes, session=full
    )
    if presence.get("id"):
        # Lets the client match the self-presence to its join (XEP-0045 §7.2.3).
        self_presence.set("id", presence.get("id", ""))
    out.append(self_presence)
    # 4. §7.2.15: discussion history.
    request = HistoryRequest.from_join(presence.find(QN_X_MUC))
    out.extend(select(room, request, full, env.now()))
    # 5. §7.2.16: the subject, always, empty when none is set.
    out.append(subject_message(room, full))
    return out


def subject_message(room: Room, to: str) -> Element:
    """The current subject as sent on entry, from whoever set it (§7.2.16, §8.1)."""
    subject = room.subject
    frm = room.jid
    if subject is not None and subject.nick:
        frm = occupant_jid(room, subject.nick)
    msg = make("message", to=to, frm=frm, type="groupchat", id=new_id())
    el = etree.SubElement(msg, qn(NS_CLIENT, "subject"))
    if subject is not None and subject.text:
        el.text = subject.text
    return msg
