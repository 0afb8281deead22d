"""XEP-0045 §7.4-§7.9 and §8.1, §8.6 as transcripts: groupchat, private messages, subject,
invitations, declines, voice requests and error bounces; XEP-0421 occupant ids."""

from __future__ import annotations

from lxml import etree

from components.muc.settings import MucSettings
from components.muc.stanzas import occupant_id
from tests.unit.test_muc_transcript import (
    CRONE,
    HAG,
    OCC,
    ROOM,
    USER,
    WITCH,
    Muc,
    Run,
    by_recipient,
    error_condition,
    expect,
    muc,
    statuses,
    witches_room,
)

__all__ = ["muc"]

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def test_groupchat_fans_out_to_every_occupant(muc: Muc, run_async: Run) -> None:
    """§7.4: reflected to all occupants, sender included, from the occupant JID, same id,
    with an occupant id (XEP-0421) that the sender cannot forge."""
    witches_room(muc, run_async)
    out = run_async(
        muc.send(
            f"<message from='{HAG}' to='{ROOM}' type='groupchat' id='lh2bs617'>"
            "<body>Harpier cries: 'tis time, 'tis time.</body>"
            "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='forged'/></message>"
        )
    )
    assert sorted(by_recipient(out)) == sorted([CRONE, WITCH, HAG])
    expect(
        by_recipient(out)[CRONE][0],
        f"""<message from='{ROOM}/thirdwitch' to='{CRONE}' type='groupchat' id='lh2bs617'>
          <body>Harpier cries: 'tis time, 'tis time.</body>
          <occupant-id xmlns='urn:xmpp:occupant-id:0' id='*'/></message>""",
    )
    oid = by_recipient(out)[CRONE][0].find("{urn:xmpp:occupant-id:0}occupant-id").get("id")
    room = muc.service.rooms[ROOM]
    assert oid == occupant_id(room, "hag66@shakespeare.lit") != "forged"
    assert oid != occupant_id(room, "crone1@shakespeare.lit")


def test_groupchat_refusals(muc: Muc, run_async: Run) -> None:
    """§7.4: not an occupant → not-acceptable; a visitor in a moderated room → forbidden;
    a message over the size limit → policy-violation; a room that does not exist →
    item-not-found."""
    witches_room(muc, run_async)
    out = run_async(
        muc.send(
            "<message from='stranger@x.lit/a' to='coven@conference.localhost' type='groupchat'>"
            "<body>hi</body></message>"
        )
    )
    expect(
        out[0],
        f"""<message from='{ROOM}' to='stranger@x.lit/a' type='error'>
          <body>hi</body>
          <error type='modify'><not-acceptable xmlns='{STANZAS}'/>
          <text xmlns='{STANZAS}'>*</text></error></message>""",
    )
    big = "x" * 10001
    out = run_async(
        muc.send(f"<message from='{HAG}' to='{ROOM}' type='groupchat'><body>{big}</body></message>")
    )
    assert error_condition(out[0]) == "policy-violation"
    out = run_async(
        muc.send(
            f"<message from='{HAG}' to='nowhere@conference.localhost' type='groupchat'>"
            "<body>x</body></message>"
        )
    )
    assert error_condition(out[0]) == "item-not-found"
    run_async(
        muc.configure(CRONE, "<field var='muc#roomconfig_moderatedroom'><value>1</value></field>")
    )
    run_async(muc.send(f"<presence from='{HAG}' to='{ROOM}/thirdwitch' type='unavailable'/>"))
    run_async(muc.join(HAG, "thirdwitch"))
    out = run_async(
        muc.send(f"<message from='{HAG}' to='{ROOM}' type='groupchat'><body>x</body></message>")
    )
    assert error_condition(out[0]) == "forbidden"


def test_subject_changes(muc: Muc, run_async: Run) -> None:
    """§8.1: moderators change the subject; participants only where the room allows it."""
    witches_room(muc, run_async)
    out = run_async(
        muc.send(
            f"<message from='{HAG}' to='{ROOM}' type='groupchat'><subject>mine</subject></message>"
        )
    )
    assert error_condition(out[0]) == "forbidden"
    out = run_async(
        muc.send(
            f"<message from='{CRONE}' to='{ROOM}' type='groupchat' id='s1'>"
            "<subject>Fire Burn and Cauldron Bubble!</subject></message>"
        )
    )
    expect(
        by_recipient(out)[HAG][0],
        f"""<message from='{ROOM}/firstwitch' to='{HAG}' type='groupchat' id='s1'>
          <subject>Fire Burn and Cauldron Bubble!</subject>{OCC}</message>""",
    )
    run_async(
        muc.configure(CRONE, "<field var='muc#roomconfig_changesubject'><value>1</value></field>")
    )
    out = run_async(
        muc.send(
            f"<message from='{HAG}' to='{ROOM}' type='groupchat'><subject>mine</subject></message>"
        )
    )
    assert len(out) == 3 and muc.service.rooms[ROOM].subject.text == "mine"  # type: ignore[union-attr]


def test_private_messages(muc: Muc, run_async: Run) -> None:
    """§7.5: a private message goes to the occupant from the sender's occupant JID with an
    empty muc#user extension and the sender's occupant id (XEP-0421 §4); groupchat type is
    bad-request; unknown nick item-not-found."""
    witches_room(muc, run_async)
    out = run_async(
        muc.send(
            f"<message from='{WITCH}' to='{ROOM}/firstwitch' type='chat' id='p1'>"
            "<body>I'll give thee a wind.</body></message>"
        )
    )
    expect(
        out[0],
        f"""<message from='{ROOM}/secondwitch' to='{CRONE}' type='chat' id='p1'>
          <body>I'll give thee a wind.</body><x xmlns='{USER}'/>{OCC}</message>""",
    )
    out = run_async(
        muc.send(
            f"<message from='{WITCH}' to='{ROOM}/firstwitch' type='groupchat'><body>x</body>"
            "</message>"
        )
    )
    assert error_condition(out[0]) == "bad-request"
    out = run_async(
        muc.send(f"<message from='{WITCH}' to='{ROOM}/nobody' type='chat'><body>x</body></message>")
    )
    assert error_condition(out[0]) == "item-not-found"
    out = run_async(
        muc.send(
            f"<message from='out@side.lit/x' to='{ROOM}/firstwitch' type='chat'><body>x</body>"
            "</message>"
        )
    )
    assert error_condition(out[0]) == "not-acceptable"


def test_private_message_policy(muc: Muc, run_async: Run) -> None:
    """muc#roomconfig_allowpm: 'moderators' lets only moderators send private messages."""
    witches_room(muc, run_async, **{"muc#roomconfig_allowpm": "moderators"})
    out = run_async(
        muc.send(
            f"<message from='{HAG}' to='{ROOM}/firstwitch' type='chat'><body>x</body></message>"
        )
    )
    assert error_condition(out[0]) == "forbidden"
    out = run_async(
        muc.send(
            f"<message from='{CRONE}' to='{ROOM}/thirdwitch' type='chat'><body>x</body></message>"
        )
    )
    assert out[0].get("to") == HAG and out[0].get("type") == "chat"


def test_mediated_invitation_and_decline(muc: Muc, run_async: Run) -> None:
    """§7.8.2: the room invites on the occupant's behalf, from the room JID with the
    password; the invitee's decline goes back to the inviter."""
    witches_room(
        muc,
        run_async,
        **{
            "muc#roomconfig_passwordprotectedroom": "1",
            "muc#roomconfig_roomsecret": "cauldronburn",
        },
    )
    out = run_async(
        muc.send(
            f"<message from='{CRONE}' to='{ROOM}' id='i1'><x xmlns='{USER}'>"
            "<invite to='hecate@shakespeare.lit'><reason>Hey Hecate</reason></invite>"
            "</x></message>"
        )
    )
    expect(
        out[0],
        f"""<message from='{ROOM}' to='hecate@shakespeare.lit' id='*'>
          <x xmlns='{USER}'><invite from='{CRONE}'><reason>Hey Hecate</reason></invite>
          <password>cauldronburn</password></x><body>*</body></message>""",
    )
    out = run_async(
        muc.send(
            f"<message from='hecate@shakespeare.lit/broom' to='{ROOM}'><x xmlns='{USER}'>"
            f"<decline to='crone1@shakespeare.lit'><reason>Sorry</reason></decline>"
            "</x></message>"
        )
    )
    expect(
        out[0],
        f"""<message from='{ROOM}' to='crone1@shakespeare.lit' id='*'>
          <x xmlns='{USER}'><decline from='hecate@shakespeare.lit/broom'>
          <reason>Sorry</reason></decline></x></message>""",
    )


def test_invitations_in_members_only_rooms(muc: Muc, run_async: Run) -> None:
    """§7.8.2 / §9.3: members may not invite unless allowed; an owner's invitation makes the
    invitee a member, so they can enter."""
    witches_room(muc, run_async)
    run_async(
        muc.send(
            f"<iq type='set' id='m' from='{CRONE}' to='{ROOM}'>"
            "<query xmlns='http://jabber.org/protocol/muc#admin'>"
            "<item affiliation='member' jid='hag66@shakespeare.lit'/>"
            "<item affiliation='member' jid='wiccarocks@shakespeare.lit'/></query></iq>"
        )
    )
    run_async(
        muc.configure(CRONE, "<field var='muc#roomconfig_membersonly'><value>1</value></field>")
    )
    invite = (
        "<message from='{frm}' to='" + ROOM + "'><x xmlns='" + USER + "'>"
        "<invite to='hecate@shakespeare.lit'/></x></message>"
    )
    out = run_async(muc.send(invite.format(frm=HAG)))
    assert error_condition(out[0]) == "forbidden"
    run_async(muc.send(invite.format(frm=CRONE)))
    out = run_async(muc.join("hecate@shakespeare.lit/broom", "hecate"))
    assert "110" in statuses(out[-2])


def test_voice_request_and_approval(muc: Muc, run_async: Run) -> None:
    """§8.6: a visitor's voice request reaches the moderators as a form; approving it makes
    the visitor a participant."""
    witches_room(muc, run_async, **{"muc#roomconfig_moderatedroom": "1"})
    run_async(muc.send(f"<presence from='{HAG}' to='{ROOM}/thirdwitch' type='unavailable'/>"))
    run_async(muc.join(HAG, "thirdwitch"))
    assert muc.service.rooms[ROOM].occupants["thirdwitch"].role == "visitor"
    out = run_async(
        muc.send(
            f"<message from='{HAG}' to='{ROOM}'><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
            "<field var='muc#role'><value>participant</value></field></x></message>"
        )
    )
    assert [m.get("to") for m in out] == [CRONE]
    form = out[0].find("{jabber:x:data}x")
    assert form is not None
    form.set("type", "submit")
    for f in form.iter("{jabber:x:data}field"):
        if f.get("var") == "muc#request_allow":
            f.find("{jabber:x:data}value").text = "true"  # type: ignore[union-attr]
    approval = etree.fromstring(f"<message xmlns='jabber:client' from='{CRONE}' to='{ROOM}'/>")
    approval.append(form)
    out = run_async(muc.send(approval))
    assert muc.service.rooms[ROOM].occupants["thirdwitch"].role == "participant"
    assert {m.get("to") for m in out} == {CRONE, WITCH, HAG}


def test_error_bounce_removes_the_occupant(muc: Muc, run_async: Run) -> None:
    """§18.1: an error from an occupant's server means its session is gone; the others see
    it leave with status 333 (not 307)."""
    witches_room(muc, run_async)
    out = run_async(
        muc.send(
            f"<message from='{HAG}' to='{ROOM}/firstwitch' type='error'>"
            f"<error type='cancel'><service-unavailable xmlns='{STANZAS}'/></error></message>"
        )
    )
    assert sorted(by_recipient(out)) == sorted([CRONE, WITCH])
    assert statuses(by_recipient(out)[CRONE][0]) == {"333"}
    assert "thirdwitch" not in muc.service.rooms[ROOM].occupants
    # An error that does not say the session is gone changes nothing.
    out = run_async(
        muc.send(
            f"<message from='{WITCH}' to='{ROOM}' type='error'>"
            f"<error type='modify'><not-acceptable xmlns='{STANZAS}'/></error></message>"
        )
    )
    assert out == [] and "secondwitch" in muc.service.rooms[ROOM].occupants


def test_history_keeps_only_stored_kinds(muc: Muc, run_async: Run) -> None:
    """§7.2.15 with XEP-0334: bodiless messages and no-store hints stay out of history."""
    witches_room(muc, run_async)
    for extra in (
        "<body>kept</body>",
        "<body>skip</body><no-store xmlns='urn:xmpp:hints'/>",
        "<active xmlns='http://jabber.org/protocol/chatstates'/>",
    ):
        run_async(
            muc.send(f"<message from='{CRONE}' to='{ROOM}' type='groupchat'>{extra}</message>")
        )
    assert [h.xml.count("kept") for h in muc.service.rooms[ROOM].history] == [1]


def test_message_size_limit_is_a_setting(redis_client: object, run_async: Run) -> None:
    """SWITCHBOARD_MUC_MAX_MESSAGE_CHARS bounds bodies and subjects."""
    small = Muc(redis_client, MucSettings(server_domain="localhost", max_message_chars=5))  # type: ignore[arg-type]
    run_async(small.create(CRONE, "firstwitch"))
    out = run_async(
        small.send(
            f"<message from='{CRONE}' to='{ROOM}' type='groupchat'><body>123456</body></message>"
        )
    )
    assert error_condition(out[0]) == "policy-violation"
    out = run_async(
        small.send(
            f"<message from='{CRONE}' to='{ROOM}' type='groupchat'><body>12345</body></message>"
        )
    )
    assert out[0].get("type") == "groupchat"


def test_invitation_continues_a_one_to_one_chat(muc: Muc, run_async: Run) -> None:
    """§7.9: an invitation with <continue/> keeps its thread for the invitee."""
    witches_room(muc, run_async)
    out = run_async(
        muc.send(
            f"<message from='{CRONE}' to='{ROOM}'><x xmlns='{USER}'>"
            "<invite to='hecate@shakespeare.lit'>"
            "<continue thread='e0ffe42b28561960c6b12b944a092794b9683a38'/>"
            "</invite></x></message>"
        )
    )
    cont = out[0].find(f"{{{USER}}}x/{{{USER}}}invite/{{{USER}}}continue")
    assert cont is not None
    assert cont.get("thread") == "e0ffe42b28561960c6b12b944a092794b9683a38"
