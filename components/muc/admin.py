"""Roles and affiliations through ``muc#admin`` (XEP-0045 §8 moderator, §9 admin and §10 owner
use cases): kick, voice, moderator, member, admin, owner and ban lists, with the privilege
checks and the presence each change sends.

A set with several items is all or nothing (§9.5): every item is checked first, against the
state the earlier items would leave, and only then applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from components.muc.env import Env, Out
from components.muc.errors import Refused
from components.muc.model import AFFILIATION_RANK, AFFILIATIONS, ROLE_RANK, ROLES, Occupant, Room
from components.muc.names import (
    NS_MUC_ADMIN,
    NS_MUC_USER,
    QN_ADMIN_QUERY,
    STATUS_AFFILIATION_CHANGED_OFFLINE,
    STATUS_AFFILIATION_REMOVED,
    STATUS_BANNED,
    STATUS_KICKED,
    STATUS_MEMBERS_ONLY_REMOVED,
)
from components.muc.occupants import remove
from components.muc.stanzas import (
    QN_BODY,
    add_statuses,
    can_see_jid,
    muc_user,
    occupant_presence,
    receives_presence_of,
)
from core.xmpp.jid import JIDError, parse_jid
from core.xmpp.ns import qn
from core.xmpp.stanza import make, new_id

Element = etree._Element
QN_ITEM = qn(NS_MUC_ADMIN, "item")
QN_REASON = qn(NS_MUC_ADMIN, "reason")


def _rank(affiliation: str) -> int:
    return AFFILIATION_RANK[affiliation]


# Lists (get) ---------------------------------------------------------------------------------


def admin_get(room: Room, sender: str, sender_bare: str, query: Element) -> Element:
    """§8.5, §9.2, §9.5, §9.8, §10.5, §10.8: the occupants with a role, or the bare JIDs with
    an affiliation. Roles are listed to moderators; the member list also to members of a
    members-only room; other affiliation lists to admins and owners."""
    items = [i for i in query.iter(QN_ITEM)]
    if len(items) != 1:
        raise Refused("bad-request", "Ask for one role or one affiliation")
    item = items[0]
    role, affiliation = item.get("role"), item.get("affiliation")
    if (role is None) == (affiliation is None):
        raise Refused("bad-request", "Ask for either a role or an affiliation")
    requester = room.occupant_of(sender)
    own = room.affiliation(sender_bare)
    out = etree.Element(QN_ADMIN_QUERY, nsmap={None: NS_MUC_ADMIN})
    if role is not None:
        if role not in ROLES or role == "none":
            raise Refused("bad-request", f"Unknown role {role!r}")
        if requester is None or requester.role != "moderator":
            raise Refused("forbidden")
        see = can_see_jid(room, requester)
        for occupant in sorted(room.occupants.values(), key=lambda o: o.nick):
            if occupant.role != role:
                continue
            el = etree.SubElement(out, QN_ITEM)
            el.set("affiliation", room.affiliation(occupant.bare))
            if see:
                el.set("jid", occupant.primary)
            el.set("nick", occupant.nick)
            el.set("role", occupant.role)
        return out
    assert affiliation is not None
    if affiliation not in AFFILIATIONS or affiliation == "none":
        raise Refused("bad-request", f"Unknown affiliation {affiliation!r}")
    allowed = _rank(own) >= _rank("admin") or (
        affiliation == "member" and room.config.members_only and own == "member"
    )
    if not allowed:
        raise Refused("forbidden")
    for jid, entry in room.with_affiliation(affiliation):
        el = etree.SubElement(out, QN_ITEM)
        el.set("affiliation", affiliation)
        el.set("jid", jid)
        if entry.nick:
            el.set("nick", entry.nick)
        if entry.reason:
            etree.SubElement(el, QN_REASON).text = entry.reason
    return out


# Changes (set) -------------------------------------------------------------------------------


@dataclass
class _Change:
    kind: str  # "role" or "affiliation"
    value: str
    reason: str | None
    occupant: Occupant | None = None
    jid: str | None = None
    nick: str | None = None


def admin_set(room: Room, sender: str, sender_bare: str, query: Element, env: Env) -> Out:
    """Apply every item of a ``muc#admin`` set, or none of them."""
    actor = room.occupant_of(sender)
    own = room.affiliation(sender_bare)
    items = list(query.iter(QN_ITEM))
    if not items:
        raise Refused("bad-request", "No item to change")
    changes = [_parse(room, item) for item in items]
    # Check every change against the state the previous ones leave.
    affiliations = {jid: a.affiliation for jid, a in room.affiliations.items()}
    for change in changes:
        if change.kind == "role":
            _check_role(room, actor, own, change)
        else:
            _check_affiliation(room, own, sender_bare, change, affiliations)
    out: Out = []
    actor_nick = actor.nick if actor is not None else None
    for change in changes:
        if change.kind == "role":
            assert change.occupant is not None
            if change.occupant.nick in room.occupants:
                out.extend(_apply_role(room, change, actor_nick))
        else:
            out.extend(_apply_affiliation(room, change, actor_nick, sender_bare))
    return out


def set_affiliation_lists(
    room: Room,
    sender_bare: str,
    *,
    owners: list[str] | None,
    admins: list[str] | None,
) -> list[_Change]:
    """The affiliation changes that make the owner and admin lists the given ones (the
    ``muc#roomconfig_roomowners`` and ``muc#roomconfig_roomadmins`` fields of §10.2, full
    lists; None: that list stays). Someone dropped from a list keeps no affiliation, unless
    the other list names them. Checked as a ``muc#admin`` set by the owner would be, and
    raises Refused without changing anything; apply the result with ``apply_changes``."""
    wanted: dict[str, str] = {}
    for affiliation, jids in (("owner", owners), ("admin", admins)):
        for text in jids or ():
            if not text.strip():
                continue
            try:
                jid = str(parse_jid(text.strip()).bare)
            except JIDError:
                raise Refused("not-acceptable", f"Invalid JID {text!r}") from None
            if wanted.get(jid, affiliation) != affiliation:
                raise Refused("not-acceptable", f"{jid} cannot be both owner and admin")
            wanted[jid] = affiliation
    changes = []
    for affiliation, jids in (("owner", owners), ("admin", admins)):
        if jids is None:
            continue
        for jid, _ in room.with_affiliation(affiliation):
            if jid not in wanted:
                changes.append(_Change("affiliation", "none", None, jid=jid))
    # Additions first: replacing the only owner must not pass through a room without one.
    additions = [
        _Change("affiliation", value, None, jid=jid)
        for jid, value in sorted(wanted.items())
        if room.affiliation(jid) != value
    ]
    changes = additions + changes
    affiliations = {jid: a.affiliation for jid, a in room.affiliations.items()}
    for change in changes:
        _check_affiliation(room, "owner", sender_bare, change, affiliations)
    return changes


def apply_changes(
    room: Room, changes: list[_Change], actor: Occupant | None, actor_bare: str
) -> Out:
    """Apply affiliation changes checked beforehand (``set_affiliation_lists``)."""
    out: Out = []
    for change in changes:
        out.extend(_apply_affiliation(room, change, actor.nick if actor else None, actor_bare))
    return out


def set_roles(
    room: Room, actor: Occupant, changes: list[tuple[str, str, str | None]], env: Env
) -> Out:
    """Role changes by nick on behalf of ``actor`` (used by voice approval, §8.6)."""
    out: Out = []
    own = room.affiliation(actor.bare)
    for nick, role, reason in changes:
        change = _Change("role", role, reason, occupant=room.occupants.get(nick), nick=nick)
        _check_role(room, actor, own, change)
        out.extend(_apply_role(room, change, actor.nick))
    return out


def _parse(room: Room, item: Element) -> _Change:
    role, affiliation = item.get("role"), item.get("affiliation")
    if (role is None) == (affiliation is None):
        # §9 / schema: an item changes a role or an affiliation, not both.
        raise Refused("bad-request", "Change either a role or an affiliation")
    reason = item.findtext(QN_REASON)
    nick = item.get("nick")
    jid_text = item.get("jid")
    jid: str | None = None
    if jid_text is not None:
        try:
            parsed = parse_jid(jid_text)
        except JIDError:
            raise Refused("bad-request", f"Invalid JID {jid_text!r}") from None
        jid = str(parsed.bare)
    if role is not None:
        if role not in ROLES:
            raise Refused("bad-request", f"Unknown role {role!r}")
        occupant = room.occupants.get(nick) if nick is not None else None
        if occupant is None and jid is not None:
            found = room.occupants_of_bare(jid)
            occupant = found[0] if found else None
        if occupant is None:
            raise Refused("no-such-occupant")
        return _Change("role", role, reason, occupant=occupant, nick=occupant.nick)
    assert affiliation is not None
    if affiliation not in AFFILIATIONS:
        raise Refused("bad-request", f"Unknown affiliation {affiliation!r}")
    if jid is None:
        # §9: by nick, for someone in the room.
        occupant = room.occupants.get(nick) if nick is not None else None
        if occupant is None:
            raise Refused("bad-request", "An affiliation change needs a JID")
        jid = occupant.bare
        nick = None
    return _Change("affiliation", affiliation, reason, jid=jid, nick=nick)


def _check_role(room: Room, actor: Occupant | None, own: str, change: _Change) -> None:
    target = change.occupant
    assert target is not None
    if actor is None or actor.role != "moderator":
        raise Refused("forbidden")  # §8: only moderators change roles
    target_affiliation = room.affiliation(target.bare)
    if ROLE_RANK[change.value] < ROLE_RANK[target.role] or change.value == "none":
        # §8.2, §8.5, §9.7: admins and owners keep their role; nobody acts on someone with
        # a higher affiliation than their own.
        if _rank(target_affiliation) >= _rank("admin") or _rank(target_affiliation) > _rank(own):
            raise Refused("not-allowed")
    if change.value == "moderator" or target.role == "moderator":
        # §9.6, §9.7: granting and revoking moderator belongs to admins and owners.
        if _rank(own) < _rank("admin"):
            raise Refused("forbidden")


def _check_affiliation(
    room: Room, own: str, own_bare: str, change: _Change, affiliations: dict[str, str]
) -> None:
    assert change.jid is not None
    if _rank(own) < _rank("admin"):
        raise Refused("forbidden")  # §9: admins and owners change affiliations
    if change.value == "outcast" and change.jid == own_bare:
        raise Refused("self-ban")  # §9.1: nobody bans themselves
    current = affiliations.get(change.jid, "none")
    if change.value in ("admin", "owner") and own != "owner":
        raise Refused("forbidden")  # §10.3, §10.6: only owners name admins and owners
    if current in ("admin", "owner") and own != "owner":
        raise Refused("not-allowed")  # §9.1, §9.4: admins cannot demote admins or owners
    if current == "owner" and change.value != "owner":
        owners = [j for j, a in affiliations.items() if a == "owner"]
        if owners == [change.jid]:
            raise Refused("last-owner")  # §10.9: a room keeps at least one owner
    if change.value == "none":
        affiliations.pop(change.jid, None)
    else:
        affiliations[change.jid] = change.value


def _apply_role(room: Room, change: _Change, actor_nick: str | None) -> Out:
    occupant = change.occupant
    assert occupant is not None
    if change.value == "none":
        # §8.2: kick, status 307.
        return remove(room, occupant, [STATUS_KICKED], actor=actor_nick, reason=change.reason)
    if occupant.role == change.value:
        return []
    occupant.role = change.value
    room.touch_occupant(occupant)
    return _announce(room, occupant, actor_nick, change.reason)


def _announce(room: Room, occupant: Occupant, actor: str | None, reason: str | None) -> Out:
    out: Out = []
    for viewer, to in room.sessions():
        if viewer is not occupant and not receives_presence_of(room, occupant):
            continue
        out.append(occupant_presence(room, occupant, to, viewer=viewer, actor=actor, reason=reason))
    return out


def _apply_affiliation(
    room: Room, change: _Change, actor_nick: str | None, actor_bare: str | None
) -> Out:
    assert change.jid is not None
    new = change.value
    nick = change.nick
    if nick is None and new not in ("none", "outcast"):
        existing = room.affiliations.get(change.jid)
        nick = existing.nick if existing is not None else None
    old = room.affiliation(change.jid)
    room.set_affiliation(change.jid, new, nick=nick, reason=change.reason)
    present = room.occupants_of_bare(change.jid)
    if not present and old != new:
        return affiliation_notice(room, change.jid, old, new, actor_bare, change.reason)
    out: Out = []
    for occupant in present:
        if new == "outcast":
            # §9.1: ban, status 301.
            out.extend(
                remove(room, occupant, [STATUS_BANNED], actor=actor_nick, reason=change.reason)
            )
        elif new == "none" and room.config.members_only:
            # §9.4: leaving the member list of a members-only room means leaving the room.
            out.extend(
                remove(
                    room,
                    occupant,
                    [STATUS_AFFILIATION_REMOVED],
                    actor=actor_nick,
                    reason=change.reason,
                )
            )
        else:
            # §9.3, §10.3: the role follows the new affiliation.
            occupant.role = _role_for(room, new)
            room.touch_occupant(occupant)
            out.extend(_announce(room, occupant, actor_nick, change.reason))
    return out


def _role_for(room: Room, affiliation: str) -> str:
    """§9.3, §9.4, §10.3: admins and owners moderate, members have voice, and the others
    are visitors in a moderated room."""
    if affiliation in ("owner", "admin"):
        return "moderator"
    if affiliation == "member":
        return "participant"
    return "visitor" if room.config.moderated else "participant"


def grant_membership(room: Room, bare: str, nick: str | None, actor_bare: str) -> Out:
    """Make ``bare`` a member with ``nick`` reserved, on behalf of the admin ``actor_bare``
    (§9.9 approval of a registration request), as a muc#admin grant would (§9.3)."""
    change = _Change("affiliation", "member", None, jid=bare, nick=nick)
    return _apply_affiliation(room, change, None, actor_bare)


def affiliation_notice(
    room: Room,
    bare: str,
    previous: str,
    affiliation: str,
    actor_bare: str | None,
    reason: str | None,
) -> Out:
    """Tell a user who is not in the room that their affiliation changed from ``previous``:
    a message from the room to their bare JID with status 101 (XEP-0045 §15.6; sent out of
    courtesy, as a headline like Prosody's, so that no offline store keeps it). Someone who
    becomes a member of a members-only room gets the invitation of §9.5 instead, which
    tells them they may now enter."""
    if "@" not in bare:
        return []  # a banned server: nobody to tell
    if affiliation == "member" and room.config.members_only and previous in ("none", "outcast"):
        m = make("message", to=bare, frm=room.jid, id=new_id())
        x = muc_user(m)
        invite = etree.SubElement(x, qn(NS_MUC_USER, "invite"))
        if actor_bare:
            invite.set("from", actor_bare)
        if reason:
            etree.SubElement(invite, qn(NS_MUC_USER, "reason")).text = reason
        if room.config.password_protected:
            etree.SubElement(x, qn(NS_MUC_USER, "password")).text = room.config.password
        etree.SubElement(m, QN_BODY).text = f"You are now a member of the room {room.jid}"
        return [m]
    m = make("message", to=bare, frm=room.jid, type="headline", id=new_id())
    x = muc_user(m)
    item = etree.SubElement(x, qn(NS_MUC_USER, "item"), affiliation=affiliation, jid=bare)
    if reason:
        etree.SubElement(item, qn(NS_MUC_USER, "reason")).text = reason
    add_statuses(x, [STATUS_AFFILIATION_CHANGED_OFFLINE])
    text = f"Your affiliation with the room {room.jid} is now: {affiliation}"
    etree.SubElement(m, QN_BODY).text = text + (f" ({reason})" if reason else "")
    return [m]


def announce_affiliation(room: Room, bare: str) -> Out:
    """The presence of ``bare``'s occupants after their affiliation changed, with the role
    that follows from it (§9.3, §9.4)."""
    out: Out = []
    for occupant in room.occupants_of_bare(bare):
        occupant.role = _role_for(room, room.affiliation(bare))
        room.touch_occupant(occupant)
        out.extend(_announce(room, occupant, None, None))
    return out


def members_only_sweep(room: Room) -> Out:
    """§10.2: when a room becomes members-only, occupants without membership are removed
    with status 322."""
    out: Out = []
    for occupant in list(room.occupants.values()):
        if _rank(room.affiliation(occupant.bare)) < _rank("member"):
            out.extend(remove(room, occupant, [STATUS_MEMBERS_ONLY_REMOVED]))
    return out
