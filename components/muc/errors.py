"""Refusals of the MUC domain logic and the one table that turns them into RFC 6120 stanza
errors, with the conditions XEP-0045 gives each case (§7.2.5-§7.2.10, §8, §9, §10)."""

from __future__ import annotations

from core.xmpp.errors import StanzaError


class Refused(Exception):
    """A request the room refuses; ``reason`` is a key of ``CONDITIONS``."""

    def __init__(self, reason: str, text: str | None = None) -> None:
        if reason not in CONDITIONS:
            raise ValueError(f"unknown refusal {reason!r}")
        super().__init__(reason if text is None else f"{reason}: {text}")
        self.reason = reason
        self.text = text

    def to_stanza_error(self, by: str | None = None) -> StanzaError:
        condition = CONDITIONS[self.reason]
        return StanzaError(condition, self.text or DEFAULT_TEXTS.get(self.reason), by=by)


CONDITIONS: dict[str, str] = {
    # Entering a room (§7.2).
    "password": "not-authorized",  # §7.2.6, 401
    "banned": "forbidden",  # §7.2.7, 403
    "locked": "item-not-found",  # §7.2.5 / §10.1.1, 404
    "creation-denied": "not-allowed",  # §10.1.1, 405
    "reserved-nick": "not-acceptable",  # §7.2.8, 406
    "members-only": "registration-required",  # §7.2.8, 407
    "nick-conflict": "conflict",  # §7.2.9, 409
    "full": "service-unavailable",  # §7.2.10, 503
    "bad-nick": "jid-malformed",  # §7.2.1: no or invalid nick
    # Taking part (§7.4-§7.9).
    "not-occupant": "not-acceptable",
    "no-voice": "forbidden",  # §7.4, visitors in moderated rooms
    "subject-denied": "forbidden",  # §8.1
    "pm-denied": "forbidden",
    "no-such-occupant": "item-not-found",
    "bad-type": "bad-request",  # §7.5: groupchat to an occupant
    "invite-denied": "forbidden",  # §7.8.2
    "too-big": "policy-violation",
    # Administration (§8-§10).
    "forbidden": "forbidden",
    "not-allowed": "not-allowed",
    "last-owner": "conflict",  # §10.6 / §10.9
    "self-ban": "conflict",  # §9.1
    "bad-request": "bad-request",
    "not-acceptable": "not-acceptable",
    "no-such-room": "item-not-found",
    "rooms-limit": "not-allowed",
    "unavailable": "service-unavailable",
}

DEFAULT_TEXTS: dict[str, str] = {
    "password": "A password is required to enter this room",
    "banned": "You are banned from this room",
    "locked": "This room is locked until its owner configures it",
    "creation-denied": "You may not create rooms here",
    "members-only": "This room is for members only",
    "nick-conflict": "That nickname is already in use",
    "reserved-nick": "That nickname is reserved",
    "full": "This room is full",
    "bad-nick": "A nickname is required",
    "not-occupant": "You are not in this room",
    "no-voice": "You have no voice in this room",
    "subject-denied": "You may not change the subject of this room",
    "pm-denied": "Private messages are not allowed in this room",
    "no-such-occupant": "No occupant has that nickname",
    "bad-type": "Private messages cannot be of type groupchat",
    "invite-denied": "You may not invite others to this room",
    "last-owner": "A room needs at least one owner",
    "self-ban": "You cannot ban yourself",
    "rooms-limit": "You have created as many rooms as allowed",
}
