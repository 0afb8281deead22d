"""Discussion history sent to a new occupant (XEP-0045 §7.2.15): the room's last messages,
limited by the room's history length and by the ``<history/>`` element of the join
(``maxchars``, ``maxstanzas``, ``seconds``, ``since``), each with an XEP-0203 delay stamp."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from components.muc.model import HistoryItem, Room
from components.muc.stanzas import delay, parse_stamp
from core.xmpp.ns import NS_MUC, qn

Element = etree._Element
QN_HISTORY = qn(NS_MUC, "history")


@dataclass
class HistoryRequest:
    """What a joining client asked for; None means no limit of that kind."""

    maxchars: int | None = None
    maxstanzas: int | None = None
    seconds: int | None = None
    since: float | None = None

    @classmethod
    def from_join(cls, x: Element | None) -> HistoryRequest:
        """The request in the ``<x xmlns='http://jabber.org/protocol/muc'/>`` of a join.
        Values that are not numbers or dates are ignored (the room's defaults apply)."""
        if x is None:
            return cls()
        h = x.find(QN_HISTORY)
        if h is None:
            return cls()

        def count(name: str) -> int | None:
            raw = h.get(name)
            if raw is None:
                return None
            try:
                return max(int(raw.strip()), 0)
            except ValueError:
                return None

        since = h.get("since")
        return cls(
            maxchars=count("maxchars"),
            maxstanzas=count("maxstanzas"),
            seconds=count("seconds"),
            since=parse_stamp(since) if since else None,
        )


def render(room: Room, item: HistoryItem, to: str) -> Element:
    """A stored message as sent to ``to``, stamped with when the room received it."""
    msg = etree.fromstring(item.xml)
    msg.set("to", to)
    msg.append(delay(item.stamp, room.jid))
    return msg


def select(room: Room, request: HistoryRequest, to: str, now: float) -> list[Element]:
    """The history messages for a new occupant, oldest first (§7.2.15: every limit given
    applies; ``maxchars`` counts the characters of the complete stanzas)."""
    limit = room.config.history_length
    if request.maxstanzas is not None:
        limit = min(limit, request.maxstanzas)
    if limit <= 0 or request.maxchars == 0:
        return []
    cutoff = None
    if request.seconds is not None:
        cutoff = now - request.seconds
    if request.since is not None:
        cutoff = request.since if cutoff is None else max(cutoff, request.since)
    out: list[Element] = []
    chars = 0
    for item in reversed(room.history):
        if len(out) >= limit:
            break
        if cutoff is not None and item.stamp < cutoff:
            break
        msg = render(room, item, to)
        if request.maxchars is not None:
            chars += len(etree.tostring(msg, encoding="unicode"))
            if chars > request.maxchars:
                break
        out.append(msg)
    out.reverse()
    return out
