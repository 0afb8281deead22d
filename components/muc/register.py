"""Registering with a room (XEP-0045 §7.10, jabber:iq:register with the ``muc#register`` form):
a registered user is a member whose nick is reserved for them.

Open rooms register whoever asks (as Prosody does). In a members-only room a request is put
to the room's admins and owners (§9.9): each gets a message from the room with the
``muc#register`` approval form, and the first to return it with ``muc#register_allow`` set
makes the requester a member (who is then invited, §9.5). Requests are not stored: an
approval is an admin's grant of membership, which admins may make at any time anyway.
"""

from __future__ import annotations

from lxml import etree

from components.muc.admin import announce_affiliation, grant_membership
from components.muc.env import Out
from components.muc.errors import Refused
from components.muc.forms import Form, add_field, new_form
from components.muc.join import valid_nick
from components.muc.model import AFFILIATION_RANK, Room
from components.muc.names import QN_X_DATA
from core.xmpp.jid import JIDError, parse_jid, prep_resource
from core.xmpp.ns import NS_CLIENT, qn
from core.xmpp.stanza import make, new_id

Element = etree._Element
NS_REGISTER = "jabber:iq:register"
NS_MUC_REGISTER = "http://jabber.org/protocol/muc#register"
QN_REGISTER_QUERY = qn(NS_REGISTER, "query")
NICK_FIELD = "muc#register_roomnick"
ALLOW_FIELD = "muc#register_allow"
# Who asks, in the approval form (§9.9 lets a service add fields to its recommended form).
JID_FIELD = "muc#jid"


def register_get(room: Room, bare: str) -> Element:
    """The registration form, or the registered nick when ``bare`` has one."""
    affiliation = room.affiliation(bare)
    if affiliation == "outcast":
        raise Refused("banned")
    q = etree.Element(QN_REGISTER_QUERY, nsmap={None: NS_REGISTER})
    entry = room.affiliations.get(bare)
    if entry is not None and entry.nick:
        etree.SubElement(q, qn(NS_REGISTER, "registered"))
        etree.SubElement(q, qn(NS_REGISTER, "username")).text = entry.nick
        return q
    etree.SubElement(
        q, qn(NS_REGISTER, "instructions")
    ).text = "Choose the nickname to reserve in this room."
    x = new_form(NS_MUC_REGISTER, title=f"Registration with {room.jid}")
    f = add_field(x, NICK_FIELD, "text-single", [], label="Desired nickname")
    etree.SubElement(f, qn(x.nsmap[None], "required"))
    q.append(x)
    return q


def register_set(room: Room, bare: str, query: Element) -> Out:
    """Register (or re-register) ``bare`` with the submitted nick, or cancel with <remove/>;
    occupants see the new affiliation (§9.3)."""
    affiliation = room.affiliation(bare)
    if affiliation == "outcast":
        raise Refused("banned")
    if query.find(qn(NS_REGISTER, "remove")) is not None:
        entry = room.affiliations.get(bare)
        if entry is None:
            raise Refused("no-such-occupant", "You are not registered with this room")
        if entry.affiliation == "member":
            room.set_affiliation(bare, "none")
            return announce_affiliation(room, bare)
        # Admins and owners keep their affiliation and only give up the nick.
        room.set_affiliation(bare, entry.affiliation, reason=entry.reason)
        return []
    x = query.find(QN_X_DATA)
    if x is None:
        raise Refused("bad-request", "Submit the muc#register form")
    form = Form.from_element(x)
    if form.type == "cancel":
        return []
    if form.form_type not in (None, NS_MUC_REGISTER) or form.type != "submit":
        raise Refused("bad-request", "Submit the muc#register form")
    nick = _nick_of(form)
    holder = room.reserved_nick_owner(nick)
    occupant = room.occupants.get(nick)
    if (holder is not None and holder != bare) or (occupant is not None and occupant.bare != bare):
        raise Refused("nick-conflict")
    if room.config.members_only and AFFILIATION_RANK[affiliation] < AFFILIATION_RANK["member"]:
        # §7.10: the request is received; §9.9: the admins decide.
        return approval_requests(room, bare, nick)
    new = affiliation if AFFILIATION_RANK[affiliation] >= AFFILIATION_RANK["member"] else "member"
    room.set_affiliation(bare, new, nick=nick)
    return announce_affiliation(room, bare) if new != affiliation else []


def _nick_of(form: Form) -> str:
    try:
        return prep_resource(valid_nick(form.single(NICK_FIELD)))
    except JIDError:
        raise Refused("not-acceptable", "That nickname is not valid") from None


def approval_requests(room: Room, bare: str, nick: str) -> Out:
    """§9.9: the registration request of ``bare`` as a message with the approval form to
    each admin and owner of the room (their bare JIDs: they need not be in the room)."""
    out: Out = []
    for jid, entry in sorted(room.affiliations.items()):
        if entry.affiliation not in ("admin", "owner") or "@" not in jid:
            continue
        m = make("message", to=jid, frm=room.jid, id=new_id())
        x = new_form(NS_MUC_REGISTER, title="Registration request")
        etree.SubElement(
            x, qn(x.nsmap[None], "instructions")
        ).text = "To approve this registration request, check the box and submit the form."
        add_field(x, JID_FIELD, "jid-single", [bare], label="User ID")
        add_field(x, NICK_FIELD, "text-single", [nick], label="Desired nickname")
        add_field(
            x, ALLOW_FIELD, "boolean", ["0"], label="Allow this person to register with the room?"
        )
        etree.SubElement(
            m, qn(NS_CLIENT, "body")
        ).text = f"{bare} asks to become a member of {room.jid} as {nick}"
        m.append(x)
        out.append(m)
    return out


def approve(room: Room, form: Form, approver_bare: str) -> Out:
    """§9.9: an admin or owner returns the approval form; when it allows the request, the
    requester becomes a member with the nick asked for (unless an affiliation of theirs
    was set meanwhile: a ban or a membership stays as it is)."""
    if AFFILIATION_RANK[room.affiliation(approver_bare)] < AFFILIATION_RANK["admin"]:
        raise Refused("forbidden")
    allow = (form.single(ALLOW_FIELD) or "").strip().lower() in ("1", "true")
    if not allow:
        return []
    try:
        bare = str(parse_jid((form.single(JID_FIELD) or "").strip()).bare)
    except JIDError:
        raise Refused("bad-request", "The form names no valid requester") from None
    nick = _nick_of(form)
    if room.affiliation(bare) != "none":
        return []
    holder = room.reserved_nick_owner(nick)
    occupant = room.occupants.get(nick)
    if (holder is not None and holder != bare) or (occupant is not None and occupant.bare != bare):
        raise Refused("nick-conflict")
    return grant_membership(room, bare, nick, approver_bare)
