"""Registering with a room (XEP-0045 §7.10, jabber:iq:register with the ``muc#register`` form):
a registered user is a member whose nick is reserved for them.

Open rooms register whoever asks (as Prosody does); a members-only room registers nobody who
is not already a member (approval by admins, §9.9, is not offered) and answers not-allowed.
"""

from __future__ import annotations

from lxml import etree

from components.muc.admin import announce_affiliation
from components.muc.env import Out
from components.muc.errors import Refused
from components.muc.forms import Form, add_field, new_form
from components.muc.join import valid_nick
from components.muc.model import AFFILIATION_RANK, Room
from components.muc.names import QN_X_DATA
from core.xmpp.jid import JIDError, prep_resource
from core.xmpp.ns import qn

Element = etree._Element
NS_REGISTER = "jabber:iq:register"
NS_MUC_REGISTER = "http://jabber.org/protocol/muc#register"
QN_REGISTER_QUERY = qn(NS_REGISTER, "query")
NICK_FIELD = "muc#register_roomnick"


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
    try:
        nick = prep_resource(valid_nick(form.single(NICK_FIELD)))
    except JIDError:
        raise Refused("not-acceptable", "That nickname is not valid") from None
    holder = room.reserved_nick_owner(nick)
    occupant = room.occupants.get(nick)
    if (holder is not None and holder != bare) or (occupant is not None and occupant.bare != bare):
        raise Refused("nick-conflict")
    if room.config.members_only and AFFILIATION_RANK[affiliation] < AFFILIATION_RANK["member"]:
        raise Refused("not-allowed", "This members-only room registers its members itself")
    new = affiliation if AFFILIATION_RANK[affiliation] >= AFFILIATION_RANK["member"] else "member"
    room.set_affiliation(bare, new, nick=nick)
    return announce_affiliation(room, bare) if new != affiliation else []
