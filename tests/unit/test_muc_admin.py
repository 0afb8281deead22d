"""XEP-0045 §8-§10 through muc#admin as transcripts: kick, voice, moderator, ban, member,
admin and owner lists, with the privilege checks and the presence each change sends."""

from __future__ import annotations

from lxml import etree

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

ADMIN = "http://jabber.org/protocol/muc#admin"


def admin_set(muc: Muc, run_async: Run, frm: str, items: str) -> list[etree._Element]:
    return run_async(
        muc.send(
            f"<iq type='set' id='a1' from='{frm}' to='{ROOM}'>"
            f"<query xmlns='{ADMIN}'>{items}</query></iq>"
        )
    )


def admin_get(muc: Muc, run_async: Run, frm: str, item: str) -> etree._Element:
    return run_async(
        muc.send(
            f"<iq type='get' id='g1' from='{frm}' to='{ROOM}'>"
            f"<query xmlns='{ADMIN}'>{item}</query></iq>"
        )
    )[-1]


def test_kick(muc: Muc, run_async: Run) -> None:
    """§8.2: the kicked occupant and the others get unavailable presence with 307, the
    actor and the reason; the moderator gets a result."""
    witches_room(muc, run_async)
    out = admin_set(
        muc,
        run_async,
        CRONE,
        "<item nick='thirdwitch' role='none'><reason>Avaunt, you cullion!</reason></item>",
    )
    expect(
        by_recipient(out)[HAG][0],
        f"""<presence from='{ROOM}/thirdwitch' to='{HAG}' type='unavailable' id='*'>
          <x xmlns='{USER}'><item affiliation='none' jid='{HAG}' role='none'>
          <actor nick='firstwitch'/><reason>Avaunt, you cullion!</reason></item>
          <status code='110'/><status code='307'/></x>{OCC}</presence>""",
    )
    assert statuses(by_recipient(out)[WITCH][0]) == {"307"}
    expect(out[-1], f"<iq type='result' id='a1' from='{ROOM}' to='{CRONE}'/>")
    assert "thirdwitch" not in muc.service.rooms[ROOM].occupants


def test_kick_refusals(muc: Muc, run_async: Run) -> None:
    """§8.2: participants cannot kick (forbidden); nobody kicks an owner (not-allowed); an
    unknown nick is item-not-found; an item with role and affiliation is bad-request."""
    witches_room(muc, run_async)
    out = admin_set(muc, run_async, HAG, "<item nick='secondwitch' role='none'/>")
    assert error_condition(out[-1]) == "forbidden"
    admin_set(muc, run_async, CRONE, "<item nick='secondwitch' role='moderator'/>")
    out = admin_set(muc, run_async, WITCH, "<item nick='firstwitch' role='none'/>")
    assert error_condition(out[-1]) == "not-allowed"
    out = admin_set(muc, run_async, CRONE, "<item nick='nobody' role='none'/>")
    assert error_condition(out[-1]) == "item-not-found"
    out = admin_set(
        muc, run_async, CRONE, "<item nick='thirdwitch' role='none' affiliation='none'/>"
    )
    assert error_condition(out[-1]) == "bad-request"


def test_voice_in_moderated_room(muc: Muc, run_async: Run) -> None:
    """§8.3, §8.4, §8.5: moderators grant and revoke voice; the voice list names the
    participants; everyone sees the new role."""
    witches_room(muc, run_async)
    run_async(
        muc.configure(CRONE, "<field var='muc#roomconfig_moderatedroom'><value>1</value></field>")
    )
    out = admin_set(muc, run_async, CRONE, "<item nick='thirdwitch' role='visitor'/>")
    expect(
        by_recipient(out)[WITCH][0],
        f"""<presence from='{ROOM}/thirdwitch' to='{WITCH}' id='*'>
          <x xmlns='{USER}'><item affiliation='none' role='visitor'>
          <actor nick='firstwitch'/></item></x>{OCC}</presence>""",
    )
    out = run_async(
        muc.send(f"<message from='{HAG}' to='{ROOM}' type='groupchat'><body>x</body></message>")
    )
    assert error_condition(out[0]) == "forbidden"
    voice = admin_get(muc, run_async, CRONE, "<item role='participant'/>")
    assert [i.get("nick") for i in voice.iter(f"{{{ADMIN}}}item")] == ["secondwitch"]
    admin_set(muc, run_async, CRONE, "<item nick='thirdwitch' role='participant'/>")
    out = run_async(
        muc.send(f"<message from='{HAG}' to='{ROOM}' type='groupchat'><body>x</body></message>")
    )
    assert len(out) == 3
    assert error_condition(admin_get(muc, run_async, HAG, "<item role='participant'/>")) == (
        "forbidden"
    )


def test_ban_and_ban_list(muc: Muc, run_async: Run) -> None:
    """§9.1, §9.2: a ban removes the user with 301 and keeps them out; admins see the list."""
    witches_room(muc, run_async)
    out = admin_set(
        muc,
        run_async,
        CRONE,
        "<item affiliation='outcast' jid='hag66@shakespeare.lit'><reason>Treason</reason></item>",
    )
    expect(
        by_recipient(out)[HAG][0],
        f"""<presence from='{ROOM}/thirdwitch' to='{HAG}' type='unavailable' id='*'>
          <x xmlns='{USER}'><item affiliation='outcast' jid='{HAG}' role='none'>
          <actor nick='firstwitch'/><reason>Treason</reason></item>
          <status code='110'/><status code='301'/></x>{OCC}</presence>""",
    )
    listing = admin_get(muc, run_async, CRONE, "<item affiliation='outcast'/>")
    expect(
        listing,
        f"""<iq type='result' id='g1' from='{ROOM}' to='{CRONE}'><query xmlns='{ADMIN}'>
          <item affiliation='outcast' jid='hag66@shakespeare.lit'><reason>Treason</reason></item>
          </query></iq>""",
    )
    assert error_condition(admin_get(muc, run_async, WITCH, "<item affiliation='outcast'/>")) == (
        "forbidden"
    )
    # Unban.
    admin_set(muc, run_async, CRONE, "<item affiliation='none' jid='hag66@shakespeare.lit'/>")
    out = run_async(muc.join(HAG, "thirdwitch"))
    assert "110" in statuses(out[-2])


def test_member_list_and_reserved_nick(muc: Muc, run_async: Run) -> None:
    """§9.3, §9.5, §7.10: members with reserved nicks; a member's nick is theirs; the
    member's presence shows the new affiliation."""
    witches_room(muc, run_async)
    out = admin_set(
        muc,
        run_async,
        CRONE,
        "<item affiliation='member' jid='hag66@shakespeare.lit' nick='thirdwitch'/>",
    )
    assert (
        by_recipient(out)[WITCH][0].find(f"{{{USER}}}x/{{{USER}}}item").get("affiliation")
        == "member"
    )
    members = admin_get(muc, run_async, CRONE, "<item affiliation='member'/>")
    expect(
        members,
        f"""<iq type='result' id='g1' from='{ROOM}' to='{CRONE}'><query xmlns='{ADMIN}'>
          <item affiliation='member' jid='hag66@shakespeare.lit' nick='thirdwitch'/>
          </query></iq>""",
    )
    run_async(muc.send(f"<presence from='{HAG}' to='{ROOM}/thirdwitch' type='unavailable'/>"))
    out = run_async(muc.join("someone@else.lit/x", "thirdwitch"))
    assert error_condition(out[0]) == "conflict"
    # §7.10: the room tells the member their reserved nick.
    out = run_async(
        muc.send(
            f"<iq type='get' id='d' from='{HAG}' to='{ROOM}'>"
            "<query xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'/></iq>"
        )
    )
    ident = out[-1].find(
        "{http://jabber.org/protocol/disco#info}query/{http://jabber.org/protocol/disco#info}identity"
    )
    assert ident is not None and ident.get("name") == "thirdwitch"


def test_members_only_revocation_removes_with_321(muc: Muc, run_async: Run) -> None:
    """§9.4: in a members-only room, losing membership means leaving with status 321."""
    witches_room(muc, run_async)
    admin_set(
        muc,
        run_async,
        CRONE,
        "<item affiliation='member' jid='hag66@shakespeare.lit'/>"
        "<item affiliation='member' jid='wiccarocks@shakespeare.lit'/>",
    )
    run_async(
        muc.configure(CRONE, "<field var='muc#roomconfig_membersonly'><value>1</value></field>")
    )
    out = admin_set(muc, run_async, CRONE, "<item affiliation='none' jid='hag66@shakespeare.lit'/>")
    assert statuses(by_recipient(out)[HAG][0]) == {"110", "321"}


def test_becoming_members_only_removes_non_members_with_322(muc: Muc, run_async: Run) -> None:
    """§10.2: switching on members-only removes occupants without membership (322)."""
    witches_room(muc, run_async)
    admin_set(
        muc, run_async, CRONE, "<item affiliation='member' jid='wiccarocks@shakespeare.lit'/>"
    )
    out = run_async(
        muc.configure(CRONE, "<field var='muc#roomconfig_membersonly'><value>1</value></field>")
    )
    assert statuses(by_recipient(out)[HAG][0]) == {"110", "322"}
    assert set(muc.service.rooms[ROOM].occupants) == {"firstwitch", "secondwitch"}


def test_moderator_admin_and_owner_lists(muc: Muc, run_async: Run) -> None:
    """§9.6-§9.8, §10.3-§10.8: admins grant moderator; only owners name admins and owners;
    an admin cannot touch an owner; the last owner cannot leave the list."""
    witches_room(muc, run_async)
    out = admin_set(
        muc, run_async, CRONE, "<item affiliation='admin' jid='wiccarocks@shakespeare.lit'/>"
    )
    item = by_recipient(out)[HAG][0].find(f"{{{USER}}}x/{{{USER}}}item")
    assert (item.get("affiliation"), item.get("role")) == ("admin", "moderator")
    out = admin_set(
        muc, run_async, WITCH, "<item affiliation='owner' jid='hag66@shakespeare.lit'/>"
    )
    assert error_condition(out[-1]) == "forbidden"
    out = admin_set(
        muc, run_async, WITCH, "<item affiliation='none' jid='crone1@shakespeare.lit'/>"
    )
    assert error_condition(out[-1]) == "not-allowed"
    out = admin_set(muc, run_async, WITCH, "<item nick='thirdwitch' role='moderator'/>")
    assert out[-1].get("type") == "result"
    mods = admin_get(muc, run_async, WITCH, "<item role='moderator'/>")
    assert sorted(i.get("nick") for i in mods.iter(f"{{{ADMIN}}}item")) == [
        "firstwitch",
        "secondwitch",
        "thirdwitch",
    ]
    out = admin_set(
        muc, run_async, CRONE, "<item affiliation='none' jid='crone1@shakespeare.lit'/>"
    )
    assert error_condition(out[-1]) == "conflict"
    admin_set(muc, run_async, CRONE, "<item affiliation='owner' jid='hag66@shakespeare.lit'/>")
    owners = admin_get(muc, run_async, CRONE, "<item affiliation='owner'/>")
    assert [i.get("jid") for i in owners.iter(f"{{{ADMIN}}}item")] == [
        "crone1@shakespeare.lit",
        "hag66@shakespeare.lit",
    ]
    admins = admin_get(muc, run_async, CRONE, "<item affiliation='admin'/>")
    assert [i.get("jid") for i in admins.iter(f"{{{ADMIN}}}item")] == ["wiccarocks@shakespeare.lit"]
    # Now another owner exists, the first may step down.
    out = admin_set(
        muc, run_async, CRONE, "<item affiliation='none' jid='crone1@shakespeare.lit'/>"
    )
    assert out[-1].get("type") == "result"
    role = muc.service.rooms[ROOM].occupants["firstwitch"].role
    assert role == "participant"


def test_set_with_several_items_is_all_or_nothing(muc: Muc, run_async: Run) -> None:
    """§9.5: one refused item refuses the whole set and changes nothing."""
    witches_room(muc, run_async)
    out = admin_set(
        muc,
        run_async,
        CRONE,
        "<item affiliation='member' jid='hag66@shakespeare.lit'/>"
        "<item affiliation='bogus' jid='wiccarocks@shakespeare.lit'/>",
    )
    assert error_condition(out[-1]) == "bad-request"
    assert muc.service.rooms[ROOM].affiliation("hag66@shakespeare.lit") == "none"


def test_revoking_moderator_and_admin(muc: Muc, run_async: Run) -> None:
    """§9.7: an admin revokes a granted moderator (back to participant); §10.7: an owner
    revokes an admin, whose role follows (participant) and whom the room announces."""
    witches_room(muc, run_async)
    admin_set(muc, run_async, CRONE, "<item nick='thirdwitch' role='moderator'/>")
    out = admin_set(muc, run_async, CRONE, "<item nick='thirdwitch' role='participant'/>")
    item = by_recipient(out)[WITCH][0].find(f"{{{USER}}}x/{{{USER}}}item")
    assert item is not None and item.get("role") == "participant"
    admin_set(muc, run_async, CRONE, "<item affiliation='admin' jid='wiccarocks@shakespeare.lit'/>")
    # An admin's moderator role cannot be taken while they are admin (not-allowed).
    out = admin_set(muc, run_async, CRONE, "<item nick='secondwitch' role='participant'/>")
    assert error_condition(out[-1]) == "not-allowed"
    out = admin_set(
        muc, run_async, CRONE, "<item affiliation='none' jid='wiccarocks@shakespeare.lit'/>"
    )
    item = by_recipient(out)[HAG][0].find(f"{{{USER}}}x/{{{USER}}}item")
    assert item is not None
    assert (item.get("affiliation"), item.get("role")) == ("none", "participant")


def test_members_see_the_member_list_of_a_members_only_room(muc: Muc, run_async: Run) -> None:
    """§7.11: in a members-only room a member may retrieve the member list."""
    witches_room(muc, run_async)
    admin_set(
        muc,
        run_async,
        CRONE,
        "<item affiliation='member' jid='hag66@shakespeare.lit'/>"
        "<item affiliation='member' jid='wiccarocks@shakespeare.lit'/>",
    )
    assert error_condition(admin_get(muc, run_async, HAG, "<item affiliation='member'/>")) == (
        "forbidden"
    )
    run_async(
        muc.configure(CRONE, "<field var='muc#roomconfig_membersonly'><value>1</value></field>")
    )
    members = admin_get(muc, run_async, HAG, "<item affiliation='member'/>")
    assert [i.get("jid") for i in members.iter(f"{{{ADMIN}}}item")] == [
        "hag66@shakespeare.lit",
        "wiccarocks@shakespeare.lit",
    ]


def test_banning_oneself_is_a_conflict(muc: Muc, run_async: Run) -> None:
    """§9.1: an admin or owner who tries to ban themselves gets conflict, and stays."""
    witches_room(muc, run_async)
    admin_set(muc, run_async, CRONE, "<item affiliation='owner' jid='hag66@shakespeare.lit'/>")
    out = admin_set(
        muc, run_async, CRONE, "<item affiliation='outcast' jid='crone1@shakespeare.lit'/>"
    )
    assert error_condition(out[-1]) == "conflict"
    assert muc.service.rooms[ROOM].affiliation("crone1@shakespeare.lit") == "owner"


def test_affiliation_changes_of_absent_users_are_told_with_101(muc: Muc, run_async: Run) -> None:
    """§9.3 and the status code registry: a user who is not in the room learns of a new
    affiliation by a message from the room to their bare JID with status 101; a new member
    of a members-only room gets an invitation instead (§9.5); a banned server gets nothing."""
    witches_room(muc, run_async)
    out = admin_set(
        muc,
        run_async,
        CRONE,
        "<item affiliation='member' jid='hecate@shakespeare.lit'><reason>welcome</reason></item>",
    )
    expect(
        out[0],
        f"""<message from='{ROOM}' to='hecate@shakespeare.lit' type='headline' id='*'>
          <x xmlns='{USER}'><item affiliation='member' jid='hecate@shakespeare.lit'>
          <reason>welcome</reason></item><status code='101'/></x><body>*</body></message>""",
    )
    assert out[-1].get("type") == "result" and len(out) == 2
    out = admin_set(
        muc, run_async, CRONE, "<item affiliation='outcast' jid='macbeth@shakespeare.lit'/>"
    )
    assert out[0].get("to") == "macbeth@shakespeare.lit" and statuses(out[0]) == {"101"}
    out = admin_set(muc, run_async, CRONE, "<item affiliation='outcast' jid='evil.lit'/>")
    assert [e.get("type") for e in out] == ["result"]
    # An occupant's change is announced by presence, not by 101.
    out = admin_set(
        muc, run_async, CRONE, "<item affiliation='member' jid='hag66@shakespeare.lit'/>"
    )
    assert all("101" not in statuses(e) for e in out)
    assert {e.get("to") for e in out if e.tag.endswith("presence")} == {CRONE, WITCH, HAG}
    # Members-only: the new member is invited (with the password) by the admin who added them.
    run_async(
        muc.configure(
            CRONE,
            "<field var='muc#roomconfig_membersonly'><value>1</value></field>"
            "<field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field>"
            "<field var='muc#roomconfig_roomsecret'><value>cauldronburn</value></field>",
        )
    )
    out = admin_set(muc, run_async, CRONE, "<item affiliation='member' jid='duncan@scotland.lit'/>")
    expect(
        out[0],
        f"""<message from='{ROOM}' to='duncan@scotland.lit' id='*'>
          <x xmlns='{USER}'><invite from='crone1@shakespeare.lit'/>
          <password>cauldronburn</password></x><body>*</body></message>""",
    )


def test_ban_list_and_moderator_list_change_by_jid(muc: Muc, run_async: Run) -> None:
    """§9.2 and §9.8: admins send list deltas by JID; every banned occupant leaves with 301
    and a moderator granted by JID is announced."""
    witches_room(muc, run_async)
    out = admin_set(
        muc,
        run_async,
        CRONE,
        "<item affiliation='outcast' jid='hag66@shakespeare.lit'><reason>Treason</reason></item>"
        "<item affiliation='outcast' jid='lordscroop@shakespeare.lit'/>",
    )
    assert statuses(by_recipient(out)[HAG][0]) == {"110", "301"}
    assert statuses(by_recipient(out)[WITCH][0]) == {"301"}
    bans = admin_get(muc, run_async, CRONE, "<item affiliation='outcast'/>")
    assert [i.get("jid") for i in bans.iter(f"{{{ADMIN}}}item")] == [
        "hag66@shakespeare.lit",
        "lordscroop@shakespeare.lit",
    ]
    out = admin_set(muc, run_async, CRONE, f"<item jid='{WITCH}' role='moderator'/>")
    item = by_recipient(out)[CRONE][0].find(f"{{{USER}}}x/{{{USER}}}item")
    assert item is not None and item.get("role") == "moderator"
    mods = admin_get(muc, run_async, CRONE, "<item role='moderator'/>")
    assert sorted(i.get("jid") for i in mods.iter(f"{{{ADMIN}}}item")) == sorted([CRONE, WITCH])
