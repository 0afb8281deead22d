"""Owner use cases through ``muc#owner`` (XEP-0045 §10): the configuration form, instant
rooms (§10.1.2), cancelling the initial configuration (§10.1.3), configuration changes with
their status codes (§10.2.1) and destroying a room (§10.9)."""

from __future__ import annotations

from lxml import etree

from components.muc.admin import apply_changes, members_only_sweep, set_affiliation_lists
from components.muc.env import Env, Out
from components.muc.errors import Refused
from components.muc.forms import (
    ADMINS_FIELD,
    OWNERS_FIELD,
    Form,
    FormError,
    apply_config,
    config_form,
)
from components.muc.model import Room
from components.muc.names import (
    NS_MUC_OWNER,
    NS_MUC_USER,
    QN_OWNER_QUERY,
    QN_X_DATA,
    STATUS_CONFIG_CHANGED,
    STATUS_NOW_NON_ANONYMOUS,
    STATUS_NOW_SEMI_ANONYMOUS,
    STATUS_SELF,
)
from components.muc.stanzas import (
    add_item,
    add_occupant_id,
    add_statuses,
    muc_user,
    occupant_jid,
)
from core.xmpp.jid import JIDError, parse_jid
from core.xmpp.ns import qn
from core.xmpp.stanza import make, new_id

Element = etree._Element
QN_DESTROY = qn(NS_MUC_OWNER, "destroy")


def _require_owner(room: Room, sender_bare: str) -> None:
    if room.affiliation(sender_bare) != "owner":
        raise Refused("forbidden")  # §10: owners only


def owner_get(room: Room, sender_bare: str) -> Element:
    """§10.2: the configuration form, to owners."""
    _require_owner(room, sender_bare)
    query = etree.Element(QN_OWNER_QUERY, nsmap={None: NS_MUC_OWNER})
    query.append(config_form(room))
    return query


def owner_set(room: Room, sender_bare: str, query: Element, env: Env) -> Out:
    """A submitted or cancelled configuration form, or a destroy request."""
    _require_owner(room, sender_bare)
    destroy = query.find(QN_DESTROY)
    if destroy is not None:
        return destroy_room(room, destroy)
    x = query.find(QN_X_DATA)
    if x is None:
        raise Refused("bad-request", "Expected a data form or a destroy request")
    form = Form.from_element(x)
    if form.type == "cancel":
        # §10.1.3: cancelling the initial configuration destroys the new room.
        return destroy_room(room, None) if room.locked else []
    if form.type != "submit":
        raise Refused("bad-request", "Expected a form of type submit or cancel")
    try:
        new = apply_config(room.config, form, env.settings)
    except FormError as exc:
        raise Refused("not-acceptable", str(exc)) from None
    # Checked before anything changes: the submission applies whole or not at all.
    lists = set_affiliation_lists(
        room,
        sender_bare,
        owners=form.values.get(OWNERS_FIELD),
        admins=form.values.get(ADMINS_FIELD),
    )
    old = room.config
    was_locked = room.locked
    room.config = new
    room.locked = False
    # §10.2 muc#maxhistoryfetch: a shorter history forgets the oldest messages
    # (the store trims its copy with the configuration).
    room.trim_history(min(new.history_length, env.settings.max_history))
    room.touch()
    out: Out = apply_changes(room, lists, None, sender_bare)
    if new.members_only and not old.members_only:
        out.extend(members_only_sweep(room))
    if not was_locked and new != old:
        out.extend(_announce_change(room, old.whois != new.whois))
    if not room.occupants and not new.persistent:
        room.changes.destroyed = True
    return out


def _announce_change(room: Room, whois_changed: bool) -> Out:
    """§10.2.1: occupants learn of a configuration change by a message from the room with
    status 104, and 172 or 173 when the room's anonymity changed."""
    codes = [STATUS_CONFIG_CHANGED]
    if whois_changed:
        codes.append(
            STATUS_NOW_NON_ANONYMOUS if room.config.non_anonymous else STATUS_NOW_SEMI_ANONYMOUS
        )
    out: Out = []
    for _, to in room.sessions():
        m = make("message", to=to, frm=room.jid, type="groupchat", id=new_id())
        add_statuses(muc_user(m), codes)
        out.append(m)
    return out


def destroy_room(room: Room, destroy: Element | None) -> Out:
    """§10.9: every occupant gets unavailable presence carrying the destroy element, with the
    alternate venue and reason if given; the room and all it stored are then removed."""
    alternate = None
    reason = None
    password = None
    if destroy is not None:
        if destroy.get("jid"):
            try:
                alternate = str(parse_jid(destroy.get("jid", "")))
            except JIDError:
                raise Refused("bad-request", "Invalid alternate venue") from None
        reason = destroy.findtext(qn(NS_MUC_OWNER, "reason"))
        password = destroy.findtext(qn(NS_MUC_OWNER, "password"))
    out: Out = []
    for occupant, to in room.sessions():
        p = make(
            "presence",
            to=to,
            frm=occupant_jid(room, occupant.nick),
            type="unavailable",
            id=new_id(),
        )
        x = muc_user(p)
        add_item(x, affiliation="none", role="none")
        d = etree.SubElement(x, qn(NS_MUC_USER, "destroy"))
        if alternate:
            d.set("jid", alternate)
        if reason:
            etree.SubElement(d, qn(NS_MUC_USER, "reason")).text = reason
        if password:
            etree.SubElement(d, qn(NS_MUC_USER, "password")).text = password
        add_statuses(x, [STATUS_SELF])
        add_occupant_id(p, room, occupant.bare)  # XEP-0421 §4: on every presence
        out.append(p)
    for occupant in list(room.occupants.values()):
        room.remove_occupant(occupant)
    room.changes.destroyed = True
    return out
