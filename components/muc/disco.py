"""Service discovery of the MUC service and its rooms (XEP-0045 §6, XEP-0030, XEP-0128)."""

from __future__ import annotations

from lxml import etree

from components.muc.errors import Refused
from components.muc.forms import room_features, roominfo_form
from components.muc.model import Room
from components.muc.names import (
    NS_MUC_REQUEST,
    NS_MUC_SELF_PING,
    NS_MUC_STABLE_ID,
    NS_OCCUPANT_ID,
)
from components.muc.register import NS_REGISTER
from core.xmpp.ns import (
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_MUC,
    NS_PING,
    QN_DISCO_INFO,
    QN_DISCO_ITEMS,
    qn,
)

Element = etree._Element
# §7.10: the node under which a room tells a user the nick reserved for them.
ROOMUSER_NODE = "x-roomuser-item"
SERVICE_FEATURES = (NS_DISCO_INFO, NS_DISCO_ITEMS, NS_MUC, NS_PING)
ROOM_FEATURES = (
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_MUC,
    NS_MUC_REQUEST,
    NS_MUC_SELF_PING,
    NS_MUC_STABLE_ID,
    NS_OCCUPANT_ID,
    NS_PING,
    NS_REGISTER,
)


def _info(identity_name: str | None, features: list[str] | tuple[str, ...]) -> Element:
    q = etree.Element(QN_DISCO_INFO, nsmap={None: NS_DISCO_INFO})
    ident = etree.SubElement(q, qn(NS_DISCO_INFO, "identity"), category="conference", type="text")
    if identity_name:
        ident.set("name", identity_name)
    for feature in sorted(set(features)):
        etree.SubElement(q, qn(NS_DISCO_INFO, "feature"), var=feature)
    return q


def service_info(name: str) -> Element:
    """§6.2: the service's identity (conference/text) and its features."""
    return _info(name, SERVICE_FEATURES)


def service_items(rooms: list[tuple[str, str]]) -> Element:
    """§6.3: the public rooms, as (room JID, name) pairs."""
    q = etree.Element(QN_DISCO_ITEMS, nsmap={None: NS_DISCO_ITEMS})
    for jid, name in rooms:
        etree.SubElement(q, qn(NS_DISCO_ITEMS, "item"), jid=jid, name=name)
    return q


def display_name(room: Room) -> str:
    return room.config.name or room.jid.partition("@")[0]


def room_info(room: Room, sender_bare: str, node: str | None) -> Element:
    """§6.4: the room's identity, its features (``muc_*`` from its configuration) and the
    ``muc#roominfo`` form; §7.10: the nick reserved for the requester under its node."""
    if room.locked and room.affiliation(sender_bare) != "owner":
        raise Refused("no-such-room")
    if node == ROOMUSER_NODE:
        entry = room.affiliations.get(sender_bare)
        q = _info(entry.nick if entry is not None and entry.nick else None, ())
        q.set("node", node)
        for feature in list(q.iter(qn(NS_DISCO_INFO, "feature"))):
            q.remove(feature)
        if entry is None or not entry.nick:
            q.remove(q[0])
        return q
    if node:
        raise Refused("no-such-room")
    q = _info(display_name(room), [*ROOM_FEATURES, *room_features(room.config)])
    q.append(roominfo_form(room))
    return q


def room_items(room: Room, sender: str, node: str | None) -> Element:
    """§6.5: the occupants' room JIDs, to occupants only (others get an empty list)."""
    if node:
        raise Refused("no-such-room")
    q = etree.Element(QN_DISCO_ITEMS, nsmap={None: NS_DISCO_ITEMS})
    if room.occupant_of(sender) is not None:
        for nick in sorted(room.occupants):
            etree.SubElement(q, qn(NS_DISCO_ITEMS, "item"), jid=f"{room.jid}/{nick}")
    return q
