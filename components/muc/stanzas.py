"""Building the stanzas a room sends (XEP-0045): occupant presence with its ``muc#user``
extension, status codes, delayed-delivery stamps (XEP-0203) and occupant ids (XEP-0421)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from datetime import UTC, datetime

from lxml import etree

from components.muc.model import Occupant, Room
from components.muc.names import (
    NS_MUC_USER,
    NS_OCCUPANT_ID,
    QN_OCCUPANT_ID,
    QN_X_MUC,
    QN_X_USER,
)
from core.xmpp.errors import StanzaError
from core.xmpp.ns import NS_CLIENT, NS_DELAY, NS_MUC, QN_DELAY, qn
from core.xmpp.stanza import make, new_id

Element = etree._Element

QN_STATUS = qn(NS_CLIENT, "status")
QN_BODY = qn(NS_CLIENT, "body")
QN_SUBJECT = qn(NS_CLIENT, "subject")

# Occupant ids a room remembers (one per real bare JID seen in it; bounded).
_OCCUPANT_IDS_KEPT = 4096
# Children a client may not set itself on what the room relays: the room adds its own.
_ROOM_OWNED = (QN_X_MUC, QN_X_USER, QN_OCCUPANT_ID, QN_DELAY)


def occupant_jid(room: Room, nick: str) -> str:
    return f"{room.jid}/{nick}"


def occupant_id(room: Room, bare: str) -> str:
    """XEP-0421 §4: an opaque id, stable for one real bare JID in one room and the same on
    every instance of the service (keyed by the room's stored secret)."""
    key = (room.secret, bare)
    cached = room.occupant_ids.get(key)
    if cached is None:
        mac = hmac.new(room.secret.encode(), bare.encode(), hashlib.sha256).digest()
        cached = base64.urlsafe_b64encode(mac[:18]).decode()
        if len(room.occupant_ids) >= _OCCUPANT_IDS_KEPT:
            room.occupant_ids.clear()
        room.occupant_ids[key] = cached
    return cached


def add_occupant_id(stanza: Element, room: Room, bare: str) -> None:
    el = etree.SubElement(stanza, QN_OCCUPANT_ID, nsmap={None: NS_OCCUPANT_ID})
    el.set("id", occupant_id(room, bare))


def strip_room_owned(stanza: Element) -> Element:
    """Remove what only the room may add (XEP-0421 §4: a client's occupant-id is never
    relayed; the muc#user extension and delay stamps are the room's to set)."""
    for child in list(stanza):
        if child.tag in _ROOM_OWNED:
            stanza.remove(child)
    return stanza


def stored_presence(presence: Element) -> Element:
    """The part of a client's presence the room keeps and rebroadcasts: its children
    (show, status, priority, caps, ...) without addresses, id, type or MUC extensions."""
    kept = make("presence")
    for child in presence:
        if isinstance(child.tag, str) and child.tag not in _ROOM_OWNED:
            kept.append(etree.fromstring(etree.tostring(child)))
    return kept


def can_see_jid(room: Room, viewer: Occupant | None) -> bool:
    """§7.2.3/§7.2.4: real JIDs go to everyone in non-anonymous rooms, else to moderators."""
    return room.config.non_anonymous or (viewer is not None and viewer.role == "moderator")


def muc_user(parent: Element) -> Element:
    return etree.SubElement(parent, QN_X_USER, nsmap={None: NS_MUC_USER})


def add_item(
    x: Element,
    *,
    affiliation: str,
    role: str,
    jid: str | None = None,
    nick: str | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> Element:
    item = etree.SubElement(x, qn(NS_MUC_USER, "item"))
    item.set("affiliation", affiliation)
    if jid is not None:
        item.set("jid", jid)
    if nick is not None:
        item.set("nick", nick)
    item.set("role", role)
    if actor is not None:
        etree.SubElement(item, qn(NS_MUC_USER, "actor")).set("nick", actor)
    if reason:
        etree.SubElement(item, qn(NS_MUC_USER, "reason")).text = reason
    return item


def add_statuses(x: Element, codes: Iterable[str]) -> None:
    for code in sorted(set(codes)):
        etree.SubElement(x, qn(NS_MUC_USER, "status")).set("code", code)


def occupant_presence(
    room: Room,
    occupant: Occupant,
    to: str,
    *,
    viewer: Occupant | None,
    codes: Iterable[str] = (),
    unavailable: bool = False,
    base: Element | None = None,
    session: str | None = None,
    new_nick: str | None = None,
    actor: str | None = None,
    reason: str | None = None,
    destroy: Element | None = None,
) -> Element:
    """The presence of ``occupant`` as ``to`` receives it.

    ``viewer`` is the occupant ``to`` is joined as (None for someone outside the room); when
    it is ``occupant`` itself, status 110 is added (§7.2.3). ``base`` replaces the stored
    presence (an unavailable presence carries the leaving stanza's status text)."""
    if base is not None:
        presence = stored_presence(base)
    elif unavailable:
        presence = make("presence")
    else:
        presence = occupant.presence(session)
    presence.attrib.clear()
    presence.set("from", occupant_jid(room, occupant.nick))
    presence.set("to", to)
    presence.set("id", new_id())
    if unavailable:
        presence.set("type", "unavailable")
    codes = set(codes)
    is_self = viewer is occupant
    if is_self:
        codes.add("110")
    x = muc_user(presence)
    see = is_self or can_see_jid(room, viewer)
    real = None
    if see:
        real = to if is_self and to in occupant.sessions else (session or occupant.primary)
    add_item(
        x,
        affiliation=room.affiliation(occupant.bare),
        role="none" if unavailable else occupant.role,
        jid=real,
        nick=new_nick,
        actor=actor,
        reason=reason,
    )
    if destroy is not None:
        x.append(destroy)
    add_statuses(x, codes)
    add_occupant_id(presence, room, occupant.bare)
    return presence


def receives_presence_of(room: Room, occupant: Occupant) -> bool:
    """muc#roomconfig_presencebroadcast: whether others see ``occupant``'s presence."""
    return occupant.role in room.config.presence_broadcast


def delay(stamp: float, frm: str) -> Element:
    """XEP-0203 delayed-delivery stamp, as history carries it (XEP-0045 §7.2.15)."""
    el = etree.Element(QN_DELAY, nsmap={None: NS_DELAY})
    el.set("from", frm)
    el.set("stamp", format_stamp(stamp))
    return el


def format_stamp(stamp: float) -> str:
    """XEP-0082 DateTime in UTC with milliseconds."""
    dt = datetime.fromtimestamp(stamp, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_stamp(text: str) -> float | None:
    """An XEP-0082 DateTime as a POSIX time, or None when it is not one."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def join_error(presence: Element, error: StanzaError) -> Element:
    """A presence error to a join attempt, carrying the ``muc`` extension it answers
    (§7.2.6 example 26 and following)."""
    reply = make(
        "presence",
        to=presence.get("from"),
        frm=presence.get("to"),
        type="error",
        id=presence.get("id"),
    )
    x = presence.find(QN_X_MUC)
    if x is not None:
        # The password, if any, is not echoed back.
        echo = etree.SubElement(reply, QN_X_MUC, nsmap={None: NS_MUC})
        for child in x:
            if isinstance(child.tag, str) and child.tag != qn(NS_MUC, "password"):
                echo.append(etree.fromstring(etree.tostring(child)))
    reply.append(error.to_element(NS_CLIENT))
    return reply
