"""What occupants do with presence once in a room (XEP-0045 §7.6 nickname change, §7.7
availability change, §7.14 leaving) and how the room removes them (kick, ban, affiliation
change, error bounces: §8.2, §9.1, §9.4, §18.1 status 333)."""

from __future__ import annotations

from lxml import etree

from components.muc.env import Out
from components.muc.errors import Refused
from components.muc.join import valid_nick
from components.muc.model import Occupant, Room
from components.muc.names import (
    STATUS_ERROR_REMOVED,
    STATUS_KICKED,
    STATUS_NICK_CHANGED,
    STATUS_SELF,
)
from components.muc.stanzas import (
    add_item,
    add_statuses,
    muc_user,
    occupant_presence,
    receives_presence_of,
    stored_presence,
)
from core.xmpp.stanza import make, new_id

Element = etree._Element


def update_presence(room: Room, occupant: Occupant, full: str, presence: Element) -> Out:
    """§7.7: a new availability (show, status, ...) goes to every occupant."""
    occupant.set_presence(full, stored_presence(presence))
    room.touch_occupant(occupant)
    return _broadcast_presence(room, occupant, session=full)


def _broadcast_presence(room: Room, occupant: Occupant, *, session: str | None = None) -> Out:
    out: Out = []
    for viewer, to in room.sessions():
        if viewer is not occupant and not receives_presence_of(room, occupant):
            continue
        out.append(occupant_presence(room, occupant, to, viewer=viewer, session=session))
    return out


def leave(room: Room, occupant: Occupant, full: str, presence: Element) -> Out:
    """§7.14: the session ``full`` leaves. The occupant leaves with its last session; until
    then the others only see its remaining session's presence."""
    out: Out = []
    out.append(
        occupant_presence(
            room, occupant, full, viewer=occupant, unavailable=True, base=presence, session=full
        )
    )
    if len(occupant.sessions) > 1:
        room.drop_session(occupant, full)
        out.extend(_broadcast_presence(room, occupant))
        return out
    room.drop_session(occupant, full)
    for viewer, to in room.sessions():
        if not receives_presence_of(room, occupant):
            continue
        out.append(
            occupant_presence(
                room, occupant, to, viewer=viewer, unavailable=True, base=presence, session=full
            )
        )
    _forget_if_empty(room)
    return out


def _forget_if_empty(room: Room) -> None:
    # §10.1.3 / muc#roomconfig_persistentroom: a temporary room goes with its last occupant,
    # and so does a room left locked by its creator.
    if not room.occupants and (not room.config.persistent or room.locked):
        room.changes.destroyed = True


def change_nick(room: Room, occupant: Occupant, full: str, new_nick: str, presence: Element) -> Out:
    """§7.6: unavailable presence from the old nick with status 303 and the new nick, then
    available presence from the new nick, to every occupant."""
    new_nick = valid_nick(new_nick)
    holder = room.occupants.get(new_nick)
    if holder is not None and holder is not occupant:
        raise Refused("nick-conflict")
    reserved = room.reserved_nick_owner(new_nick)
    if reserved is not None and reserved != occupant.bare:
        raise Refused("nick-conflict", "That nickname is reserved by another user")
    occupant.set_presence(full, stored_presence(presence))
    out: Out = []
    visible = receives_presence_of(room, occupant)
    for viewer, to in room.sessions():
        if viewer is not occupant and not visible:
            continue
        out.append(
            occupant_presence(
                room,
                occupant,
                to,
                viewer=viewer,
                unavailable=True,
                codes=[STATUS_NICK_CHANGED],
                new_nick=new_nick,
            )
        )
    room.rename(occupant, new_nick)
    for viewer, to in room.sessions():
        if viewer is not occupant and not visible:
            continue
        out.append(occupant_presence(room, occupant, to, viewer=viewer, session=full))
    return out


def remove(
    room: Room,
    occupant: Occupant,
    codes: list[str],
    *,
    actor: str | None = None,
    reason: str | None = None,
) -> Out:
    """Take ``occupant`` (every session) out of the room: unavailable presence with the
    status codes of the removal to it and to everyone else (§8.2, §9.1, §9.4, §9.7)."""
    out: Out = []
    for viewer, to in room.sessions():
        if viewer is not occupant and not receives_presence_of(room, occupant):
            continue
        out.append(
            occupant_presence(
                room,
                occupant,
                to,
                viewer=viewer,
                unavailable=True,
                codes=codes,
                actor=actor,
                reason=reason,
            )
        )
    room.remove_occupant(occupant)
    _forget_if_empty(room)
    return out


def remove_session_after_error(room: Room, occupant: Occupant, full: str) -> Out:
    """A session whose server bounced what the room sent it is gone (§18.1: the service
    removes the occupant). Others see status 333, removal for a technical reason, which
    XEP-0045 (since 1.33) sends without 307 so that a lost connection does not read as a
    kick; the bounced session itself cannot be reached."""
    if len(occupant.sessions) > 1:
        room.drop_session(occupant, full)
        return []
    out = remove(room, occupant, [STATUS_ERROR_REMOVED])
    return [p for p in out if p.get("to") != full]


def not_in_room(room_jid: str, presence: Element, nick: str) -> Element:
    """XEP-0045 §7.2.1 (since 1.32): presence without the MUC extension from someone who is
    not an occupant is answered with an explicit removal, so a desynchronised client
    notices that it is not in the room (or that the room is gone)."""
    reply = make(
        "presence",
        to=presence.get("from"),
        frm=f"{room_jid}/{nick}",
        type="unavailable",
        id=new_id(),
    )
    x = muc_user(reply)
    add_item(x, affiliation="none", role="none", reason="You are not in the room.")
    add_statuses(x, [STATUS_SELF, STATUS_KICKED, STATUS_ERROR_REMOVED])
    return reply
