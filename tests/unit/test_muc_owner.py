"""XEP-0045 §10 (muc#owner) and §6 (disco) as transcripts: the configuration form, its
changes and their status codes, cancelling, destroying, and discovery of service and rooms;
XEP-0410 self-ping and IQs to occupants."""

from __future__ import annotations

from lxml import etree

from tests.unit.test_muc_transcript import (
    CRONE,
    HAG,
    OCC,
    ROOM,
    SERVICE,
    USER,
    Muc,
    Run,
    by_recipient,
    error_condition,
    expect,
    muc,
    stanza,
    statuses,
)

__all__ = ["muc"]

OWNER = "http://jabber.org/protocol/muc#owner"
DATA = "jabber:x:data"
INFO = "http://jabber.org/protocol/disco#info"
ITEMS = "http://jabber.org/protocol/disco#items"


def fields_of(x: etree._Element) -> dict[str, list[str]]:
    return {
        f.get("var", ""): [v.text or "" for v in f.findall(f"{{{DATA}}}value")]
        for f in x.iter(f"{{{DATA}}}field")
    }


def features_of(q: etree._Element) -> set[str]:
    return {f.get("var", "") for f in q.iter(f"{{{INFO}}}feature")}


def test_configuration_form_has_every_common_field(muc: Muc, run_async: Run) -> None:
    """§10.2: the owner gets the muc#roomconfig form with the room's values."""
    run_async(muc.join(CRONE, "firstwitch"))
    out = run_async(
        muc.send(f"<iq type='get' id='c1' from='{CRONE}' to='{ROOM}'><query xmlns='{OWNER}'/></iq>")
    )
    form = out[-1].find(f"{{{OWNER}}}query/{{{DATA}}}x")
    assert form is not None and form.get("type") == "form"
    fields = fields_of(form)
    assert fields["FORM_TYPE"] == ["http://jabber.org/protocol/muc#roomconfig"]
    for var in (
        "muc#roomconfig_roomname",
        "muc#roomconfig_roomdesc",
        "muc#roomconfig_persistentroom",
        "muc#roomconfig_publicroom",
        "muc#roomconfig_membersonly",
        "muc#roomconfig_passwordprotectedroom",
        "muc#roomconfig_roomsecret",
        "muc#roomconfig_moderatedroom",
        "muc#roomconfig_maxusers",
        "muc#roomconfig_whois",
        "muc#roomconfig_changesubject",
        "muc#maxhistoryfetch",
        "muc#roomconfig_allowpm",
        "muc#roomconfig_allowinvites",
    ):
        assert var in fields, var
    assert fields["muc#roomconfig_whois"] == ["moderators"]
    out = run_async(
        muc.send(f"<iq type='get' id='c2' from='{HAG}' to='{ROOM}'><query xmlns='{OWNER}'/></iq>")
    )
    assert error_condition(out[-1]) == "forbidden"


def test_submitting_the_form_configures_the_room(muc: Muc, run_async: Run) -> None:
    """§10.2: submitted values apply and show in the room's disco#info."""
    run_async(
        muc.create(
            CRONE,
            "firstwitch",
            **{
                "muc#roomconfig_roomname": "A Dark Cave",
                "muc#roomconfig_roomdesc": "The place for all good witches!",
                "muc#roomconfig_persistentroom": "1",
                "muc#roomconfig_publicroom": "0",
                "muc#roomconfig_moderatedroom": "1",
                "muc#roomconfig_whois": "anyone",
            },
        )
    )
    out = run_async(
        muc.send(f"<iq type='get' id='i' from='{HAG}' to='{ROOM}'><query xmlns='{INFO}'/></iq>")
    )
    q = out[-1].find(f"{{{INFO}}}query")
    assert q is not None
    ident = q.find(f"{{{INFO}}}identity")
    assert ident is not None
    assert (ident.get("category"), ident.get("type"), ident.get("name")) == (
        "conference",
        "text",
        "A Dark Cave",
    )
    features = features_of(q)
    assert {
        "http://jabber.org/protocol/muc",
        "muc_persistent",
        "muc_hidden",
        "muc_moderated",
        "muc_nonanonymous",
        "muc_open",
        "muc_unsecured",
        "urn:xmpp:occupant-id:0",
        "http://jabber.org/protocol/muc#self-ping-optimization",
        "http://jabber.org/protocol/muc#stable_id",
    } <= features
    info = fields_of(q.find(f"{{{DATA}}}x"))  # type: ignore[arg-type]
    assert info["FORM_TYPE"] == ["http://jabber.org/protocol/muc#roominfo"]
    assert info["muc#roominfo_description"] == ["The place for all good witches!"]
    assert info["muc#roominfo_occupants"] == ["1"]


def test_invalid_form_values_are_not_acceptable(muc: Muc, run_async: Run) -> None:
    """§10.2: a value the service cannot use is refused with not-acceptable, nothing changes."""
    run_async(muc.create(CRONE, "firstwitch"))
    for field in (
        "<field var='muc#roomconfig_whois'><value>everybody</value></field>",
        "<field var='muc#roomconfig_maxusers'><value>999999</value></field>",
        "<field var='muc#roomconfig_persistentroom'><value>maybe</value></field>",
        "<field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field>",
    ):
        out = run_async(muc.configure(CRONE, field))
        assert error_condition(out[-1]) == "not-acceptable", field
    assert muc.service.rooms[ROOM].config.whois == "moderators"


def test_configuration_change_notifies_occupants(muc: Muc, run_async: Run) -> None:
    """§10.2.1: occupants get a message with 104, and 172 when the room becomes
    non-anonymous."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(muc.join(HAG, "thirdwitch"))
    out = run_async(
        muc.configure(CRONE, "<field var='muc#roomconfig_whois'><value>anyone</value></field>")
    )
    msgs = [m for m in out if etree.QName(m).localname == "message"]
    assert sorted(m.get("to") for m in msgs) == sorted([CRONE, HAG])
    expect(
        by_recipient(out)[HAG][0],
        f"""<message from='{ROOM}' to='{HAG}' type='groupchat' id='*'>
          <x xmlns='{USER}'><status code='104'/><status code='172'/></x></message>""",
    )
    out = run_async(
        muc.configure(CRONE, "<field var='muc#roomconfig_roomname'><value>x</value></field>")
    )
    assert statuses(by_recipient(out)[HAG][0]) == {"104"}


def test_cancelling_the_initial_configuration_destroys_the_room(muc: Muc, run_async: Run) -> None:
    """§10.1.3: cancel on a locked room destroys it."""
    run_async(muc.join(CRONE, "firstwitch"))
    out = run_async(
        muc.send(
            f"<iq type='set' id='x' from='{CRONE}' to='{ROOM}'><query xmlns='{OWNER}'>"
            f"<x xmlns='{DATA}' type='cancel'/></query></iq>"
        )
    )
    assert out[0].get("type") == "unavailable" and out[-1].get("type") == "result"
    assert run_async(muc.service.store.version(ROOM)) is None


def test_destroy(muc: Muc, run_async: Run) -> None:
    """§10.9: occupants get unavailable presence with the destroy element, alternate venue
    and reason; the room is gone; only owners may destroy."""
    run_async(muc.create(CRONE, "firstwitch", **{"muc#roomconfig_persistentroom": "1"}))
    run_async(muc.join(HAG, "thirdwitch"))
    destroy = (
        f"<iq type='set' id='d' from='{{frm}}' to='{ROOM}'><query xmlns='{OWNER}'>"
        "<destroy jid='coven@conference.localhost'><reason>Macbeth doth come.</reason>"
        "</destroy></query></iq>"
    )
    out = run_async(muc.send(destroy.format(frm=HAG)))
    assert error_condition(out[-1]) == "forbidden"
    out = run_async(muc.send(destroy.format(frm=CRONE)))
    expect(
        by_recipient(out)[HAG][0],
        f"""<presence from='{ROOM}/thirdwitch' to='{HAG}' type='unavailable' id='*'>
          <x xmlns='{USER}'><item affiliation='none' role='none'/>
          <destroy jid='coven@conference.localhost'><reason>Macbeth doth come.</reason></destroy>
          <status code='110'/></x>{OCC}</presence>""",
    )
    assert out[-1].get("type") == "result"
    assert run_async(muc.service.store.version(ROOM)) is None
    assert run_async(muc.service.store.rooms()) == []
    out = run_async(
        muc.send(f"<iq type='get' id='i' from='{HAG}' to='{ROOM}'><query xmlns='{INFO}'/></iq>")
    )
    assert error_condition(out[-1]) == "item-not-found"


def test_service_discovery(muc: Muc, run_async: Run) -> None:
    """§6.2, §6.3: the service is conference/text with the MUC feature; its items are the
    public, unlocked rooms."""
    out = run_async(
        muc.send(f"<iq type='get' id='s' from='{HAG}' to='{SERVICE}'><query xmlns='{INFO}'/></iq>")
    )
    q = out[-1].find(f"{{{INFO}}}query")
    assert q is not None
    ident = q.find(f"{{{INFO}}}identity")
    assert ident is not None and (ident.get("category"), ident.get("type")) == (
        "conference",
        "text",
    )
    assert "http://jabber.org/protocol/muc" in features_of(q)
    run_async(muc.create(CRONE, "firstwitch", **{"muc#roomconfig_roomname": "A Dark Cave"}))
    run_async(
        muc.create(
            CRONE,
            "firstwitch",
            room="hidden@conference.localhost",
            **{"muc#roomconfig_publicroom": "0"},
        )
    )
    run_async(muc.join(CRONE, "firstwitch", room="locked@conference.localhost"))
    out = run_async(
        muc.send(f"<iq type='get' id='s' from='{HAG}' to='{SERVICE}'><query xmlns='{ITEMS}'/></iq>")
    )
    expect(
        out[-1],
        f"""<iq type='result' id='s' from='{SERVICE}' to='{HAG}'><query xmlns='{ITEMS}'>
          <item jid='{ROOM}' name='A Dark Cave'/></query></iq>""",
    )


def test_room_items_are_for_occupants(muc: Muc, run_async: Run) -> None:
    """§6.5: occupants may list the room's occupants; others get an empty list."""
    run_async(muc.create(CRONE, "firstwitch"))
    query = f"<iq type='get' id='i' from='{{frm}}' to='{ROOM}'><query xmlns='{ITEMS}'/></iq>"
    out = run_async(muc.send(query.format(frm=CRONE)))
    assert [i.get("jid") for i in out[-1].iter(f"{{{ITEMS}}}item")] == [f"{ROOM}/firstwitch"]
    out = run_async(muc.send(query.format(frm=HAG)))
    assert list(out[-1].iter(f"{{{ITEMS}}}item")) == []


def test_self_ping(muc: Muc, run_async: Run) -> None:
    """XEP-0410: a self-ping is answered by the room while joined, not-acceptable after."""
    run_async(muc.create(CRONE, "firstwitch"))
    ping = (
        f"<iq type='get' id='p' from='{CRONE}' to='{ROOM}/firstwitch'>"
        "<ping xmlns='urn:xmpp:ping'/></iq>"
    )
    out = run_async(muc.send(ping))
    expect(out[-1], f"<iq type='result' id='p' from='{ROOM}/firstwitch' to='{CRONE}'/>")
    assert muc.forwarded == []
    run_async(muc.join(HAG, "thirdwitch"))
    run_async(muc.send(f"<presence from='{CRONE}' to='{ROOM}/firstwitch' type='unavailable'/>"))
    out = run_async(muc.send(ping))
    assert error_condition(out[-1]) == "not-acceptable"


def test_iq_to_another_occupant_is_forwarded(muc: Muc, run_async: Run) -> None:
    """IQs between occupants go through the room, from the sender's occupant JID to the
    target's real JID, and the answer comes back."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(muc.join(HAG, "thirdwitch"))

    def answer(iq: etree._Element) -> etree._Element:
        return stanza(
            f"<iq type='result' id='{iq.get('id')}' from='{iq.get('to')}' to='{iq.get('from')}'>"
            "<query xmlns='jabber:iq:version'><name>broom</name></query></iq>"
        )

    muc.answer = answer
    out = run_async(
        muc.send(
            f"<iq type='get' id='v' from='{HAG}' to='{ROOM}/firstwitch'>"
            "<query xmlns='jabber:iq:version'/></iq>"
        )
    )
    assert muc.forwarded[0].get("to") == CRONE
    assert muc.forwarded[0].get("from") == f"{ROOM}/thirdwitch"
    expect(
        out[-1],
        f"""<iq type='result' id='v' from='{ROOM}/firstwitch' to='{HAG}'>
          <query xmlns='jabber:iq:version'><name>broom</name></query></iq>""",
    )
    out = run_async(
        muc.send(
            f"<iq type='get' id='v' from='out@side.lit/x' to='{ROOM}/firstwitch'>"
            "<query xmlns='jabber:iq:version'/></iq>"
        )
    )
    assert error_condition(out[-1]) == "not-acceptable"


def test_admin_and_owner_lists_in_the_configuration_form(muc: Muc, run_async: Run) -> None:
    """§10.2: the form carries the full admin and owner lists (roomadmins, roomowners);
    submitting them changes the affiliations as muc#admin would, with the presence each
    change sends; a bad list changes nothing at all."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(muc.join(HAG, "thirdwitch"))
    out = run_async(
        muc.configure(
            CRONE,
            "<field var='muc#roomconfig_roomadmins'><value>hag66@shakespeare.lit</value>"
            "<value>hecate@shakespeare.lit</value></field>",
        )
    )
    hag_seen = by_recipient(out)[CRONE][0].find(f"{{{USER}}}x/{{{USER}}}item")
    assert hag_seen is not None
    assert (hag_seen.get("affiliation"), hag_seen.get("role")) == ("admin", "moderator")
    notice = by_recipient(out)["hecate@shakespeare.lit"][0]
    assert statuses(notice) == {"101"}
    out = run_async(
        muc.send(f"<iq type='get' id='c' from='{CRONE}' to='{ROOM}'><query xmlns='{OWNER}'/></iq>")
    )
    fields = fields_of(out[-1].find(f"{{{OWNER}}}query/{{{DATA}}}x"))  # type: ignore[arg-type]
    assert fields["muc#roomconfig_roomadmins"] == [
        "hag66@shakespeare.lit",
        "hecate@shakespeare.lit",
    ]
    assert fields["muc#roomconfig_roomowners"] == ["crone1@shakespeare.lit"]
    # Refused, and nothing changes: no owner left, someone on both lists, a bad JID.
    for lists in (
        "<field var='muc#roomconfig_roomowners'/>",
        "<field var='muc#roomconfig_roomowners'><value>hag66@shakespeare.lit</value>"
        "<value>crone1@shakespeare.lit</value></field>"
        "<field var='muc#roomconfig_roomadmins'><value>hag66@shakespeare.lit</value></field>",
        "<field var='muc#roomconfig_roomadmins'><value>@@</value></field>",
    ):
        out = run_async(
            muc.configure(
                CRONE, "<field var='muc#roomconfig_roomname'><value>x</value></field>" + lists
            )
        )
        assert error_condition(out[-1]) in ("conflict", "not-acceptable"), lists
        stored = run_async(muc.service.store.load(ROOM, 10))
        assert stored.config.name == "" and stored.owners() == ["crone1@shakespeare.lit"]
        assert stored.affiliation("hag66@shakespeare.lit") == "admin"
    # The owner hands the room over: the hag owns it, the crone is no longer affiliated.
    out = run_async(
        muc.configure(
            CRONE,
            "<field var='muc#roomconfig_roomowners'><value>hag66@shakespeare.lit</value></field>"
            "<field var='muc#roomconfig_roomadmins'/>",
        )
    )
    assert out[-1].get("type") == "result"
    room = run_async(muc.service.store.load(ROOM, 10))
    assert room.owners() == ["hag66@shakespeare.lit"]
    assert room.affiliation("crone1@shakespeare.lit") == "none"
    assert room.affiliation("hecate@shakespeare.lit") == "none"
    assert room.occupants["firstwitch"].role == "participant"
    assert room.occupants["thirdwitch"].role == "moderator"
