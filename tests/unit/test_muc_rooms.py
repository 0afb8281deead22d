"""XEP-0045 §7 and §10.1 as transcripts: creating rooms, entering them (with every refusal),
presence, nickname changes, leaving, history and subject on entry."""

from __future__ import annotations

from lxml import etree

from components.muc.settings import MucSettings
from tests.unit.test_muc_transcript import (
    CRONE,
    HAG,
    MUC,
    OCC,
    ROOM,
    T0,
    USER,
    WITCH,
    Muc,
    Run,
    by_recipient,
    error_condition,
    expect,
    muc,
    statuses,
)

__all__ = ["muc"]
NS = "jabber:client"


def test_joining_a_new_room_creates_it_locked(muc: Muc, run_async: Run) -> None:
    """§10.1.1: the creator is owner and moderator, gets 110 and 201, then an empty subject."""
    out = run_async(muc.join(CRONE, "firstwitch", attrs=" id='j1'"))
    assert len(out) == 2
    expect(
        out[0],
        f"""<presence from='{ROOM}/firstwitch' to='{CRONE}' id='j1'>
          <x xmlns='{USER}'>
            <item affiliation='owner' jid='{CRONE}' role='moderator'/>
            <status code='110'/><status code='201'/>
          </x>{OCC}</presence>""",
    )
    expect(
        out[1], f"<message from='{ROOM}' to='{CRONE}' type='groupchat' id='*'><subject/></message>"
    )


def test_locked_room_refuses_others_until_configured(muc: Muc, run_async: Run) -> None:
    """§10.1.1: a locked room does not exist for others (item-not-found); an instant room
    (§10.1.2, empty submit) opens it."""
    run_async(muc.join(CRONE, "firstwitch"))
    out = run_async(muc.join(HAG, "thirdwitch", attrs=" id='j2'"))
    expect(
        out[0],
        f"""<presence from='{ROOM}/thirdwitch' to='{HAG}' type='error' id='j2'>
          <x xmlns='{MUC}'/>
          <error type='cancel'>
            <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>
            <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>*</text>
          </error></presence>""",
    )
    out = run_async(
        muc.send(
            f"<iq type='set' id='inst' from='{CRONE}' to='{ROOM}'>"
            "<query xmlns='http://jabber.org/protocol/muc#owner'>"
            "<x xmlns='jabber:x:data' type='submit'/></query></iq>"
        )
    )
    expect(out[-1], f"<iq type='result' id='inst' from='{ROOM}' to='{CRONE}'/>")
    out = run_async(muc.join(HAG, "thirdwitch"))
    assert out[-2].get("from") == f"{ROOM}/thirdwitch" and "110" in statuses(out[-2])


def test_entering_sends_occupants_then_self_then_history_then_subject(
    muc: Muc, run_async: Run
) -> None:
    """§7.2.3, §7.2.15, §7.2.16: others' presence, self-presence (110), history, subject; the
    others receive the newcomer's presence."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(muc.join(WITCH, "secondwitch"))
    run_async(
        muc.send(
            f"<message from='{CRONE}' to='{ROOM}' type='groupchat' id='m1'>"
            "<body>Thrice the brinded cat hath mew'd.</body></message>"
        )
    )
    muc.now = T0 + 5
    out = run_async(muc.join(HAG, "thirdwitch"))
    to_hag = by_recipient(out)[HAG]
    kinds = [(etree.QName(e).localname, e.get("from")) for e in to_hag]
    assert kinds == [
        ("presence", f"{ROOM}/firstwitch"),
        ("presence", f"{ROOM}/secondwitch"),
        ("presence", f"{ROOM}/thirdwitch"),
        ("message", f"{ROOM}/firstwitch"),
        ("message", ROOM),
    ]
    # Semi-anonymous room (the default): a participant sees no real JIDs of others.
    expect(
        to_hag[0],
        f"""<presence from='{ROOM}/firstwitch' to='{HAG}' id='*'>
          <x xmlns='{USER}'><item affiliation='owner' role='moderator'/></x>{OCC}</presence>""",
    )
    expect(
        to_hag[2],
        f"""<presence from='{ROOM}/thirdwitch' to='{HAG}' id='*'>
          <x xmlns='{USER}'><item affiliation='none' jid='{HAG}' role='participant'/>
          <status code='110'/></x>{OCC}</presence>""",
    )
    expect(
        to_hag[3],
        f"""<message from='{ROOM}/firstwitch' to='{HAG}' type='groupchat' id='m1'>
          <body>Thrice the brinded cat hath mew'd.</body>{OCC}
          <delay xmlns='urn:xmpp:delay' from='{ROOM}' stamp='2023-11-14T22:13:20.000Z'/>
        </message>""",
    )
    # The moderator sees the newcomer's real JID, the participant does not.
    to_crone = by_recipient(out)[CRONE]
    expect(
        to_crone[0],
        f"""<presence from='{ROOM}/thirdwitch' to='{CRONE}' id='*'>
          <x xmlns='{USER}'><item affiliation='none' jid='{HAG}' role='participant'/></x>
          {OCC}</presence>""",
    )
    to_witch = by_recipient(out)[WITCH]
    assert to_witch[0].find(f"{{{USER}}}x/{{{USER}}}item").get("jid") is None


def test_non_anonymous_room_shows_jids_and_status_100(muc: Muc, run_async: Run) -> None:
    """§7.2.4: in a non-anonymous room everyone sees real JIDs and the newcomer gets 100."""
    run_async(muc.create(CRONE, "firstwitch", **{"muc#roomconfig_whois": "anyone"}))
    out = run_async(muc.join(HAG, "thirdwitch"))
    own = by_recipient(out)[HAG]
    assert own[0].find(f"{{{USER}}}x/{{{USER}}}item").get("jid") == CRONE
    assert statuses(own[1]) == {"100", "110"}


def test_entry_refusals(muc: Muc, run_async: Run) -> None:
    """§7.2.6-§7.2.10: wrong password 401, banned 403, members-only 407, nick taken 409,
    room full 503, and no nick at all jid-malformed."""
    run_async(
        muc.create(
            CRONE,
            "firstwitch",
            **{
                "muc#roomconfig_passwordprotectedroom": "1",
                "muc#roomconfig_roomsecret": "cauldronburn",
                "muc#roomconfig_maxusers": "2",
            },
        )
    )
    out = run_async(muc.join(HAG, "thirdwitch"))
    assert error_condition(out[0]) == "not-authorized"
    assert out[0].find(f"{{{NS}}}error").get("type") == "auth"
    pw = "<password>cauldronburn</password>"
    out = run_async(muc.join(HAG, "firstwitch", extra=pw))
    assert error_condition(out[0]) == "conflict"
    run_async(muc.join(HAG, "thirdwitch", extra=pw))
    out = run_async(muc.join(WITCH, "secondwitch", extra=pw))
    assert error_condition(out[0]) == "service-unavailable"
    out = run_async(muc.send(f"<presence from='{WITCH}' to='{ROOM}'><x xmlns='{MUC}'/></presence>"))
    assert error_condition(out[0]) == "jid-malformed"
    # Ban the hag: she is removed, and cannot come back.
    run_async(
        muc.send(
            f"<iq type='set' id='ban' from='{CRONE}' to='{ROOM}'>"
            "<query xmlns='http://jabber.org/protocol/muc#admin'>"
            "<item affiliation='outcast' jid='hag66@shakespeare.lit'/></query></iq>"
        )
    )
    out = run_async(muc.join(HAG, "thirdwitch", extra=pw))
    assert error_condition(out[0]) == "forbidden"
    run_async(
        muc.configure(CRONE, "<field var='muc#roomconfig_membersonly'><value>1</value></field>")
    )
    out = run_async(muc.join(WITCH, "secondwitch", extra=pw))
    assert error_condition(out[0]) == "registration-required"


def test_presence_without_muc_extension_from_a_stranger_is_a_kick(muc: Muc, run_async: Run) -> None:
    """§7.2.1 (1.32+): presence without <x/> from a non-occupant gets 110, 307 and 333."""
    run_async(muc.create(CRONE, "firstwitch"))
    out = run_async(muc.send(f"<presence from='{HAG}' to='{ROOM}/thirdwitch'/>"))
    expect(
        out[0],
        f"""<presence from='{ROOM}/thirdwitch' to='{HAG}' type='unavailable' id='*'>
          <x xmlns='{USER}'><item affiliation='none' role='none'>
          <reason>You are not in the room.</reason></item>
          <status code='110'/><status code='307'/><status code='333'/></x></presence>""",
    )


def test_availability_change_is_broadcast(muc: Muc, run_async: Run) -> None:
    """§7.7: a new show/status goes to every occupant, the sender with 110."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(muc.join(HAG, "thirdwitch"))
    out = run_async(
        muc.send(
            f"<presence from='{HAG}' to='{ROOM}/thirdwitch'><show>xa</show>"
            "<status>gone where the goblins go</status></presence>"
        )
    )
    assert sorted(by_recipient(out)) == sorted([CRONE, HAG])
    expect(
        by_recipient(out)[CRONE][0],
        f"""<presence from='{ROOM}/thirdwitch' to='{CRONE}' id='*'>
          <show>xa</show><status>gone where the goblins go</status>
          <x xmlns='{USER}'><item affiliation='none' jid='{HAG}' role='participant'/></x>
          {OCC}</presence>""",
    )
    assert statuses(by_recipient(out)[HAG][0]) == {"110"}


def test_nickname_change(muc: Muc, run_async: Run) -> None:
    """§7.6: unavailable from the old nick with 303 and the new nick, then available from
    the new one; a taken nick is a conflict from the new occupant JID."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(muc.join(HAG, "thirdwitch"))
    out = run_async(muc.send(f"<presence from='{HAG}' to='{ROOM}/firstwitch' id='n1'/>"))
    expect(
        out[0],
        f"""<presence from='{ROOM}/firstwitch' to='{HAG}' type='error' id='n1'>
          <error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>
          <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>*</text></error></presence>""",
    )
    out = run_async(muc.send(f"<presence from='{HAG}' to='{ROOM}/oldhag'/>"))
    to_crone = by_recipient(out)[CRONE]
    expect(
        to_crone[0],
        f"""<presence from='{ROOM}/thirdwitch' to='{CRONE}' type='unavailable' id='*'>
          <x xmlns='{USER}'><item affiliation='none' jid='{HAG}' nick='oldhag' role='none'/>
          <status code='303'/></x>{OCC}</presence>""",
    )
    expect(
        to_crone[1],
        f"""<presence from='{ROOM}/oldhag' to='{CRONE}' id='*'>
          <x xmlns='{USER}'><item affiliation='none' jid='{HAG}' role='participant'/></x>
          {OCC}</presence>""",
    )
    to_hag = by_recipient(out)[HAG]
    assert statuses(to_hag[0]) == {"110", "303"}
    assert statuses(to_hag[1]) == {"110"}
    # The old nick is free, the new one is held.
    out = run_async(muc.join(WITCH, "thirdwitch"))
    assert out[-2].get("type") is None and "110" in statuses(out[-2])


def test_leaving(muc: Muc, run_async: Run) -> None:
    """§7.14: unavailable presence with the leaving status to everyone, 110 to the leaver."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(muc.join(HAG, "thirdwitch"))
    out = run_async(
        muc.send(
            f"<presence from='{HAG}' to='{ROOM}/thirdwitch' type='unavailable'>"
            "<status>gone where the goblins go</status></presence>"
        )
    )
    expect(
        by_recipient(out)[HAG][0],
        f"""<presence from='{ROOM}/thirdwitch' to='{HAG}' type='unavailable' id='*'>
          <status>gone where the goblins go</status>
          <x xmlns='{USER}'><item affiliation='none' jid='{HAG}' role='none'/>
          <status code='110'/></x>{OCC}</presence>""",
    )
    expect(
        by_recipient(out)[CRONE][0],
        f"""<presence from='{ROOM}/thirdwitch' to='{CRONE}' type='unavailable' id='*'>
          <status>gone where the goblins go</status>
          <x xmlns='{USER}'><item affiliation='none' jid='{HAG}' role='none'/></x>
          {OCC}</presence>""",
    )
    # Leaving again, or leaving a room one is not in, sends nothing.
    assert run_async(muc.send(f"<presence from='{HAG}' to='{ROOM}/x' type='unavailable'/>")) == []


def test_temporary_room_goes_with_its_last_occupant(muc: Muc, run_async: Run) -> None:
    """§10.1.3 / muc#roomconfig_persistentroom: a temporary room is destroyed when empty, a
    persistent one stays."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(muc.send(f"<presence from='{CRONE}' to='{ROOM}/firstwitch' type='unavailable'/>"))
    assert run_async(muc.service.store.version(ROOM)) is None
    run_async(muc.create(CRONE, "firstwitch", **{"muc#roomconfig_persistentroom": "1"}))
    run_async(muc.send(f"<presence from='{CRONE}' to='{ROOM}/firstwitch' type='unavailable'/>"))
    assert run_async(muc.service.store.version(ROOM)) is not None
    out = run_async(muc.join(HAG, "thirdwitch"))
    assert "110" in statuses(out[0]) and "201" not in statuses(out[0])


def test_several_sessions_share_one_nick(muc: Muc, run_async: Run) -> None:
    """Two resources of one user under one nick: one occupant for the others; each session
    gets the room; the nick leaves with its last session."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(muc.join(HAG, "thirdwitch"))
    other = "hag66@shakespeare.lit/phone"
    out = run_async(muc.join(other, "thirdwitch"))
    assert [e.get("from") for e in by_recipient(out)[other]][:2] == [
        f"{ROOM}/firstwitch",
        f"{ROOM}/thirdwitch",
    ]
    assert len(muc.service.rooms[ROOM].occupants) == 2
    # A groupchat message reaches both sessions.
    out = run_async(
        muc.send(f"<message from='{CRONE}' to='{ROOM}' type='groupchat'><body>hi</body></message>")
    )
    assert sorted(by_recipient(out)) == sorted([CRONE, HAG, other])
    # One session leaves: the others see no unavailable presence.
    out = run_async(muc.send(f"<presence from='{HAG}' to='{ROOM}/thirdwitch' type='unavailable'/>"))
    assert all(e.get("type") != "unavailable" for e in by_recipient(out).get(CRONE, []))
    out = run_async(
        muc.send(f"<presence from='{other}' to='{ROOM}/thirdwitch' type='unavailable'/>")
    )
    assert by_recipient(out)[CRONE][0].get("type") == "unavailable"


def test_another_user_cannot_share_a_nick(muc: Muc, run_async: Run) -> None:
    """§7.2.9: a nick in use by another user is a conflict (409)."""
    run_async(muc.create(CRONE, "firstwitch"))
    out = run_async(muc.join(HAG, "firstwitch"))
    assert error_condition(out[0]) == "conflict"


def test_history_limits_on_entry(muc: Muc, run_async: Run) -> None:
    """§7.2.15: maxstanzas, maxchars, seconds and since each limit the history sent."""
    run_async(muc.create(CRONE, "firstwitch"))
    for i in range(5):
        muc.now = T0 + 10 * i
        run_async(
            muc.send(
                f"<message from='{CRONE}' to='{ROOM}' type='groupchat' id='h{i}'>"
                f"<body>line {i}</body></message>"
            )
        )
    muc.now = T0 + 45

    def history(extra: str) -> list[str]:
        out = run_async(muc.join(HAG, "thirdwitch", extra=extra))
        run_async(muc.send(f"<presence from='{HAG}' to='{ROOM}/thirdwitch' type='unavailable'/>"))
        return [
            e.get("id", "")
            for e in out
            if etree.QName(e).localname == "message" and e.get("from") != ROOM
        ]

    assert history("") == ["h0", "h1", "h2", "h3", "h4"]
    assert history("<history maxstanzas='2'/>") == ["h3", "h4"]
    assert history("<history maxstanzas='0'/>") == []
    assert history("<history maxchars='0'/>") == []
    assert history("<history seconds='20'/>") == ["h3", "h4"]
    assert history("<history since='2023-11-14T22:13:40Z'/>") == ["h2", "h3", "h4"]
    one = len(etree.tostring(run_async(muc.join(HAG, "thirdwitch"))[-2], encoding="unicode"))
    run_async(muc.send(f"<presence from='{HAG}' to='{ROOM}/thirdwitch' type='unavailable'/>"))
    assert history(f"<history maxchars='{one * 2 + 1}'/>") == ["h3", "h4"]


def test_history_length_is_capped_by_the_room(muc: Muc, run_async: Run) -> None:
    """muc#maxhistoryfetch: a room keeps and sends at most its history length."""
    run_async(muc.create(CRONE, "firstwitch", **{"muc#maxhistoryfetch": "2"}))
    for i in range(4):
        run_async(
            muc.send(
                f"<message from='{CRONE}' to='{ROOM}' type='groupchat' id='h{i}'>"
                f"<body>{i}</body></message>"
            )
        )
    out = run_async(muc.join(HAG, "thirdwitch"))
    ids = [e.get("id") for e in out if e.find("{urn:xmpp:delay}delay") is not None]
    assert ids == ["h2", "h3"]


def test_subject_on_entry_comes_from_its_setter(muc: Muc, run_async: Run) -> None:
    """§7.2.16: the subject is the last thing sent on entry, from who set it."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(
        muc.send(
            f"<message from='{CRONE}' to='{ROOM}' type='groupchat'>"
            "<subject>Fire Burn and Cauldron Bubble!</subject></message>"
        )
    )
    out = run_async(muc.join(HAG, "thirdwitch"))
    expect(
        out[-1],
        f"""<message from='{ROOM}/firstwitch' to='{HAG}' type='groupchat' id='*'>
          <subject>Fire Burn and Cauldron Bubble!</subject></message>""",
    )


def test_room_creation_limits(redis_client: object, run_async: Run) -> None:
    """Service limits: rooms per user (not-allowed) and who may create rooms at all."""
    muc = Muc(redis_client, MucSettings(server_domain="shakespeare.lit", max_rooms_per_user=1))  # type: ignore[arg-type]
    run_async(muc.create(CRONE, "firstwitch"))
    out = run_async(muc.join(CRONE, "firstwitch", room="other@conference.localhost"))
    assert error_condition(out[0]) == "not-allowed"
    local = Muc(redis_client, MucSettings(server_domain="localhost", creators="local"))  # type: ignore[arg-type]
    out = run_async(local.join(HAG, "thirdwitch", room="third@conference.localhost"))
    assert error_condition(out[0]) == "not-allowed"


def test_rejoin_resends_the_room_state(muc: Muc, run_async: Run) -> None:
    """A joined session that joins again gets the room state again, without a new occupant."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(muc.join(HAG, "thirdwitch"))
    out = run_async(muc.join(HAG, "thirdwitch"))
    to_hag = by_recipient(out)[HAG]
    assert [e.get("from") for e in to_hag] == [
        f"{ROOM}/firstwitch",
        f"{ROOM}/thirdwitch",
        ROOM,
    ]
    assert len(muc.service.rooms[ROOM].occupants) == 2


REGISTER = "jabber:iq:register"


def test_registering_reserves_a_nick(muc: Muc, run_async: Run) -> None:
    """§7.10: the room offers the muc#register form; submitting it makes the user a member
    with that nick reserved; asking again shows the registration; a taken nick conflicts."""
    run_async(muc.create(CRONE, "firstwitch"))
    run_async(muc.join(HAG, "thirdwitch"))
    get = f"<iq type='get' id='r1' from='{HAG}' to='{ROOM}'><query xmlns='{REGISTER}'/></iq>"
    out = run_async(muc.send(get))
    field = out[-1].find(
        f"{{{REGISTER}}}query/{{jabber:x:data}}x/{{jabber:x:data}}field[@var='muc#register_roomnick']"
    )
    assert field is not None

    def submit(frm: str, nick: str) -> etree._Element:
        return run_async(
            muc.send(
                f"<iq type='set' id='r2' from='{frm}' to='{ROOM}'><query xmlns='{REGISTER}'>"
                "<x xmlns='jabber:x:data' type='submit'>"
                "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value>"
                f"</field><field var='muc#register_roomnick'><value>{nick}</value></field>"
                "</x></query></iq>"
            )
        )

    out = submit(HAG, "thirdwitch")
    assert out[-1].get("type") == "result"
    # The occupant's presence now shows the membership.
    item = by_recipient(out)[CRONE][0].find(f"{{{USER}}}x/{{{USER}}}item")
    assert item is not None and item.get("affiliation") == "member"
    out = run_async(muc.send(get))
    expect(
        out[-1],
        f"""<iq type='result' id='r1' from='{ROOM}' to='{HAG}'><query xmlns='{REGISTER}'>
          <registered/><username>thirdwitch</username></query></iq>""",
    )
    assert error_condition(submit(WITCH, "thirdwitch")[-1]) == "conflict"


def test_members_only_registration_is_approved_by_admins(muc: Muc, run_async: Run) -> None:
    """§7.10 and §9.9: in a members-only room a registration request is received (result)
    and put to each admin and owner as the muc#register approval form; a mere member cannot
    approve; the owner's approval makes the requester a member, invited to the room."""
    run_async(muc.create(CRONE, "firstwitch", **{"muc#roomconfig_membersonly": "1"}))
    run_async(
        muc.send(
            f"<iq type='set' id='a' from='{CRONE}' to='{ROOM}'>"
            "<query xmlns='http://jabber.org/protocol/muc#admin'>"
            "<item affiliation='admin' jid='wiccarocks@shakespeare.lit'/>"
            "<item affiliation='member' jid='macbeth@shakespeare.lit'/></query></iq>"
        )
    )
    out = run_async(
        muc.send(
            f"<iq type='set' id='r2' from='{HAG}' to='{ROOM}'><query xmlns='{REGISTER}'>"
            "<x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value>"
            "</field><field var='muc#register_roomnick'><value>thirdwitch</value></field>"
            "</x></query></iq>"
        )
    )
    assert out[-1].get("type") == "result"
    requests = out[:-1]
    assert sorted(m.get("to") for m in requests) == [
        "crone1@shakespeare.lit",
        "wiccarocks@shakespeare.lit",
    ]
    form = requests[0].find("{jabber:x:data}x")
    assert form is not None
    values = {
        f.get("var"): f.findtext("{jabber:x:data}value") for f in form.iter("{jabber:x:data}field")
    }
    assert values == {
        "FORM_TYPE": "http://jabber.org/protocol/muc#register",
        "muc#jid": "hag66@shakespeare.lit",
        "muc#register_roomnick": "thirdwitch",
        "muc#register_allow": "0",
    }
    assert muc.service.rooms[ROOM].affiliation("hag66@shakespeare.lit") == "none"

    def answer(frm: str, allow: str) -> list[etree._Element]:
        reply = etree.fromstring(etree.tostring(form))
        reply.set("type", "submit")
        for f in reply.iter("{jabber:x:data}field"):
            if f.get("var") == "muc#register_allow":
                f.find("{jabber:x:data}value").text = allow  # type: ignore[union-attr]
        msg = etree.fromstring(f"<message xmlns='{NS}' from='{frm}' to='{ROOM}'/>")
        msg.append(reply)
        return run_async(muc.send(msg))

    assert error_condition(answer("macbeth@shakespeare.lit/castle", "1")[0]) == "forbidden"
    assert answer(CRONE, "0") == []
    out = answer(CRONE, "1")
    assert [m.get("to") for m in out] == ["hag66@shakespeare.lit"]
    assert out[0].find(f"{{{USER}}}x/{{{USER}}}invite") is not None
    assert muc.service.rooms[ROOM].affiliations["hag66@shakespeare.lit"].nick == "thirdwitch"
    # A second approval changes nothing; the new member enters under the reserved nick.
    assert answer("wiccarocks@shakespeare.lit/laptop", "1") == []
    out = run_async(muc.join(HAG, "thirdwitch"))
    assert "110" in statuses(out[-2])


def test_presence_without_muc_extension_to_a_missing_room(muc: Muc, run_async: Run) -> None:
    """§7.2.1: such presence to a room that does not exist creates nothing and tells the
    sender it is not in a room there (a temporary room may have gone meanwhile)."""
    out = run_async(muc.send(f"<presence from='{HAG}' to='{ROOM}/thirdwitch'/>"))
    assert [(p.get("from"), p.get("type")) for p in out] == [(f"{ROOM}/thirdwitch", "unavailable")]
    assert statuses(out[0]) == {"110", "307", "333"}
    assert run_async(muc.service.store.version(ROOM)) is None


def test_a_nick_normalised_by_the_room_comes_with_status_210(muc: Muc, run_async: Run) -> None:
    """§7.2 and status 210: a nick not in its normalised form (here a decomposed accent,
    RFC 7622 §3.4 applies NFC) enters under the normalised one, and the self-presence says
    so; a nick sent as it is stored gets no 210."""
    run_async(muc.create(CRONE, "firstwitch"))
    out = run_async(muc.join(HAG, "Re\u0301mi"))
    own = by_recipient(out)[HAG][-2]
    assert own.get("from") == f"{ROOM}/R\u00e9mi"
    assert statuses(own) == {"110", "210"}
    out = run_async(muc.join(WITCH, "R\u00e9my"))
    assert statuses(by_recipient(out)[WITCH][-2]) == {"110"}
