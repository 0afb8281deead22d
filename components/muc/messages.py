"""Messages in a room (XEP-0045): groupchat fan-out (§7.4), subject changes (§8.1), private
messages (§7.5), mediated invitations and declines (§7.8), and voice requests (§8.6)."""

from __future__ import annotations

import copy

from lxml import etree

from components.muc.env import Env, Fanout, Out
from components.muc.errors import Refused
from components.muc.forms import Form, add_field, new_form
from components.muc.model import (
    AFFILIATION_RANK,
    ROLE_RANK,
    HistoryItem,
    Occupant,
    Room,
    Subject,
)
from components.muc.names import NS_MUC_REQUEST, NS_MUC_USER, QN_X_DATA, QN_X_USER
from components.muc.register import NS_MUC_REGISTER, approve
from components.muc.stanzas import (
    QN_BODY,
    QN_SUBJECT,
    add_occupant_id,
    muc_user,
    occupant_jid,
    strip_room_owned,
)
from core.xmpp.jid import JIDError, parse_jid
from core.xmpp.ns import qn
from core.xmpp.stanza import make, new_id

Element = etree._Element
NS_HINTS = "urn:xmpp:hints"
QN_NO_STORE = qn(NS_HINTS, "no-store")
QN_NO_PERMANENT_STORE = qn(NS_HINTS, "no-permanent-store")
QN_INVITE = qn(NS_MUC_USER, "invite")
QN_DECLINE = qn(NS_MUC_USER, "decline")
QN_REASON = qn(NS_MUC_USER, "reason")
QN_CONTINUE = qn(NS_MUC_USER, "continue")


def _check_size(msg: Element, env: Env) -> None:
    limit = env.settings.max_message_chars
    for qname in (QN_BODY, QN_SUBJECT):
        for el in msg.iter(qname):
            if len(el.text or "") > limit:
                raise Refused("too-big", f"Messages are limited to {limit} characters")


def is_subject_change(msg: Element) -> bool:
    """§8.1: a groupchat message with a subject and no body changes the subject."""
    return msg.find(QN_SUBJECT) is not None and msg.find(QN_BODY) is None


def groupchat(room: Room, msg: Element, sender: str, env: Env) -> Out:
    """§7.4: a message from an occupant, reflected to every occupant (the sender included)
    from the sender's occupant JID, keeping its id (muc#stable_id)."""
    occupant = room.occupant_of(sender)
    if occupant is None:
        raise Refused("not-occupant")
    _check_size(msg, env)
    if is_subject_change(msg):
        return change_subject(room, occupant, msg, env)
    if occupant.role not in ("participant", "moderator"):
        raise Refused("no-voice")
    reflected = _reflect(room, occupant, msg)
    # §7.2.15, muc#maxhistoryfetch: the room keeps at most its history length (within
    # the service's maximum); with 0 it keeps nothing, and the message changes nothing stored.
    kept = min(room.config.history_length, env.settings.max_history)
    if kept > 0 and _storable(msg):
        xml = etree.tostring(reflected, encoding="unicode")
        room.add_history(HistoryItem(env.now(), xml), kept)
    return _fan_out(room, reflected)


def _reflect(room: Room, occupant: Occupant, msg: Element) -> Element:
    reflected = strip_room_owned(copy.deepcopy(msg))
    if "to" in reflected.attrib:
        del reflected.attrib["to"]
    reflected.set("from", occupant_jid(room, occupant.nick))
    reflected.set("type", "groupchat")
    if reflected.get("id") is None:
        reflected.set("id", new_id())
    add_occupant_id(reflected, room, occupant.bare)
    return reflected


def _storable(msg: Element) -> bool:
    # XEP-0334: hints that ask archives not to keep the message.
    if msg.find(QN_NO_STORE) is not None or msg.find(QN_NO_PERMANENT_STORE) is not None:
        return False
    return msg.find(QN_BODY) is not None


def _fan_out(room: Room, reflected: Element) -> Out:
    return [Fanout(reflected, [to for _, to in room.sessions()])]


def may_change_subject(room: Room, occupant: Occupant) -> bool:
    if occupant.role == "moderator":
        return True
    return room.config.change_subject and occupant.role == "participant"


def change_subject(room: Room, occupant: Occupant, msg: Element, env: Env) -> Out:
    """§8.1: moderators, and participants where the room allows it, set the subject; every
    occupant receives the change from the setter's occupant JID."""
    if not may_change_subject(room, occupant):
        raise Refused("subject-denied")
    text = msg.findtext(QN_SUBJECT) or ""
    room.subject = Subject(text, occupant.nick, env.now())
    room.touch()
    return _fan_out(room, _reflect(room, occupant, msg))


def private_message(room: Room, msg: Element, sender: str, nick: str, env: Env) -> Out:
    """§7.5: a message to ``room/nick`` goes to every session of that occupant, from the
    sender's occupant JID, marked with an empty muc#user extension."""
    if msg.get("type") == "groupchat":
        raise Refused("bad-type")
    occupant = room.occupant_of(sender)
    if occupant is None:
        raise Refused("not-occupant")
    _check_size(msg, env)
    policy = room.config.allow_pm
    rank = ROLE_RANK[occupant.role]
    allowed = (
        policy == "anyone"
        or (policy == "participants" and rank >= ROLE_RANK["participant"])
        or (policy == "moderators" and rank >= ROLE_RANK["moderator"])
    )
    if not allowed:
        raise Refused("pm-denied")
    target = room.occupants.get(nick)
    if target is None:
        raise Refused("no-such-occupant")
    out: Out = []
    for to in target.sessions:
        m = strip_room_owned(copy.deepcopy(msg))
        m.set("from", occupant_jid(room, occupant.nick))
        m.set("to", to)
        if m.get("id") is None:
            m.set("id", new_id())
        muc_user(m)
        # XEP-0421 §4: every message the room relays carries the sender's occupant id.
        add_occupant_id(m, room, occupant.bare)
        out.append(m)
    return out


# Invitations (§7.8) -----------------------------------------------------------------------


def may_invite(room: Room, occupant: Occupant) -> bool:
    """§7.8.2: in a members-only room only admins and owners invite, unless the room lets
    occupants invite; elsewhere any occupant may."""
    if not room.config.members_only:
        return True
    if room.config.allow_invites:
        return True
    return AFFILIATION_RANK[room.affiliation(occupant.bare)] >= AFFILIATION_RANK["admin"]


def mediated(room: Room, msg: Element, sender: str, env: Env) -> Out:
    """A message to the room itself that is not groupchat: invitations, declines (§7.8), a
    voice request or its approval (§8.6), or the approval of a registration request (§9.9)."""
    x = msg.find(QN_X_USER)
    if x is not None and x.find(QN_INVITE) is not None:
        return invite(room, x, sender, env)
    if x is not None and x.find(QN_DECLINE) is not None:
        return decline(room, x, sender)
    form = msg.find(QN_X_DATA)
    if form is not None:
        parsed = Form.from_element(form)
        if parsed.form_type == NS_MUC_REQUEST and parsed.type == "submit":
            if "muc#request_allow" in parsed.values:
                return voice_approval(room, parsed, sender, env)
            return voice_request(room, sender, env)
        if parsed.form_type == NS_MUC_REGISTER and parsed.type == "submit":
            return approve(room, parsed, str(parse_jid(sender).bare))
        if parsed.form_type in (NS_MUC_REQUEST, NS_MUC_REGISTER) and parsed.type == "cancel":
            return []  # XEP-0004 §3.1: a request left undecided
    raise Refused("bad-request", "Only groupchat messages may be sent to the room")


def invite(room: Room, x: Element, sender: str, env: Env) -> Out:
    """§7.8.2: the room sends each invitee a message from the room JID naming the inviter,
    with the reason and the room password; in a members-only room an invitation by an admin
    or owner makes the invitee a member."""
    occupant = room.occupant_of(sender)
    if occupant is None:
        raise Refused("not-occupant")
    if not may_invite(room, occupant):
        raise Refused("invite-denied")
    invites = []
    for inv in x.iter(QN_INVITE):
        to = inv.get("to")
        try:
            parsed = parse_jid(to or "")
        except JIDError:
            raise Refused("bad-request", "An invitation needs a valid 'to' address") from None
        invites.append((str(parsed), inv.findtext(QN_REASON), inv.find(QN_CONTINUE)))
    inviter_rank = AFFILIATION_RANK[room.affiliation(occupant.bare)]
    out: Out = []
    for invitee, reason, continued in invites:
        bare = str(parse_jid(invitee).bare)
        if (
            room.config.members_only
            and inviter_rank >= AFFILIATION_RANK["admin"]
            and room.affiliation(bare) == "none"
        ):
            room.set_affiliation(bare, "member")
        m = make("message", to=invitee, frm=room.jid, id=new_id())
        ux = muc_user(m)
        el = etree.SubElement(ux, QN_INVITE)
        el.set("from", sender)
        if reason:
            etree.SubElement(el, QN_REASON).text = reason
        if continued is not None:
            # §7.9: a one-to-one chat continued in the room keeps its thread.
            el.append(copy.deepcopy(continued))
        if room.config.password_protected:
            etree.SubElement(ux, qn(NS_MUC_USER, "password")).text = room.config.password
        body = f"{sender} invites you to the room {room.jid}"
        etree.SubElement(m, QN_BODY).text = body + (f": {reason}" if reason else "")
        out.append(m)
    return out


def decline(room: Room, x: Element, sender: str) -> Out:
    """§7.8.2: a declined invitation goes back to the inviter from the room JID."""
    el = x.find(QN_DECLINE)
    assert el is not None
    try:
        inviter = parse_jid(el.get("to") or "")
    except JIDError:
        raise Refused("bad-request", "A decline needs a valid 'to' address") from None
    m = make("message", to=str(inviter), frm=room.jid, id=new_id())
    out_el = etree.SubElement(muc_user(m), QN_DECLINE)
    out_el.set("from", sender)
    reason = el.findtext(QN_REASON)
    if reason:
        etree.SubElement(out_el, QN_REASON).text = reason
    return [m]


def voice_request(room: Room, sender: str, env: Env) -> Out:
    """§8.6: a visitor's request for voice goes to every moderator as an approval form."""
    occupant = room.occupant_of(sender)
    if occupant is None:
        raise Refused("not-occupant")
    if occupant.role != "visitor":
        return []
    out: Out = []
    for viewer, to in room.sessions():
        if viewer.role != "moderator":
            continue
        m = make("message", to=to, frm=room.jid, id=new_id())
        form = new_form(NS_MUC_REQUEST, title="Voice request")
        add_field(form, "muc#role", "list-single", ["participant"], label="Requested role")
        add_field(form, "muc#jid", "jid-single", [sender], label="User ID")
        add_field(form, "muc#roomnick", "text-single", [occupant.nick], label="Room nickname")
        add_field(form, "muc#request_allow", "boolean", ["0"], label="Grant voice to this person?")
        m.append(form)
        # A body as well: clients that show no forms, or ignore bodiless messages, still
        # tell the moderator.
        etree.SubElement(m, QN_BODY).text = f"{occupant.nick} asks for voice in {room.jid}"
        out.append(m)
    return out


def voice_approval(room: Room, form: Form, sender: str, env: Env) -> Out:
    """§8.6: a moderator returns the request form; when it allows, the visitor gets voice
    exactly as through the voice list of §8.3."""
    from components.muc.admin import set_roles

    moderator = room.occupant_of(sender)
    if moderator is None:
        raise Refused("not-occupant")
    if moderator.role != "moderator":
        raise Refused("forbidden")
    allow = (form.single("muc#request_allow") or "").strip().lower() in ("1", "true")
    nick = form.single("muc#roomnick")
    if not allow or not nick or nick not in room.occupants:
        return []
    if room.occupants[nick].role != "visitor":
        return []
    return set_roles(room, moderator, [(nick, "participant", None)], env)
