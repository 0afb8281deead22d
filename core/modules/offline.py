"""Offline messages (XEP-0160) with delay stamps (XEP-0203).

A message of type normal or chat for an account with no available resource of non-negative
priority (RFC 6121 §8.5.2.2.1) is stored in Redis, stamped with the time it arrived, until the
account next sends available presence with a non-negative priority; that resource gets them
all, oldest first, and they leave storage. Past the per-account cap the sender gets
``service-unavailable``. Chat messages that carry only chat states (XEP-0085) are not stored.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from lxml import etree

from core.modules.presence import delay_element
from core.storage.offline import OfflineStore
from core.xmpp.jid import JID
from core.xmpp.module import Module
from core.xmpp.ns import NS_CLIENT, NS_OFFLINE, qn

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)
Element = etree._Element

NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
QN_BODY = qn(NS_CLIENT, "body")
DEFAULT_MAX_MESSAGES = 1000
# Marks the session that has had its stored messages, so later arrivals go straight to it.
DELIVERED = "offline-delivered"
NEGATIVE = "offline-negative-priority"

module = Module("offline", spec="XEP-0160", features=[NS_OFFLINE])


def max_messages(config: Any) -> int:
    """The ``[offline] max_messages`` setting when the configuration has it, else 1000."""
    section = getattr(config, "offline", None)
    return int(getattr(section, "max_messages", DEFAULT_MAX_MESSAGES))


def only_chat_states(message: Element) -> bool:
    """XEP-0160 §3: a chat message with nothing but XEP-0085 content is not worth keeping."""
    children = [c for c in message if isinstance(c.tag, str)]
    return bool(children) and all(c.tag.startswith(f"{{{NS_CHATSTATES}}}") for c in children)


class OfflineMessages:
    """Store messages for accounts that are away, and hand them out at the next login."""

    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self.store = OfflineStore(server.redis)
        self.cap = max_messages(server.config)

    async def keep(self, message: Element, to: JID) -> bool:
        """Store ``message`` for ``to``'s account; False when it is not accepted (the cap is
        reached), so that the router bounces it with service-unavailable."""
        bare = f"{to.local}@{to.domain}"
        if message.get("type", "normal") == "chat" and only_chat_states(message):
            return True  # handled: not stored, not bounced
        stamped = etree.fromstring(etree.tostring(message))
        stamped.append(delay_element(time.time(), self.server.domain, "Offline Storage"))
        if not await self.store.push(bare, etree.tostring(stamped), self.cap):
            log.info("offline storage of %s is full (%d messages)", bare, self.cap)
            return False
        # A resource may have come online (and had its stored messages) while this one was
        # being stored; it must not wait for the next login.
        for session in self.server.router.available_sessions(bare):
            if session.priority >= 0 and session.data.get(DELIVERED):
                await self.deliver(session)
                break
        return True

    async def deliver(self, session: Any) -> int:
        """Send every stored message of the session's account to the session; their count."""
        if self.server.router.session(session.jid) is not session:
            return 0  # gone in the meantime: the messages stay stored
        stored = await self.store.take(session.bare)
        for raw in stored:
            try:
                session.send(etree.fromstring(raw))
            except etree.XMLSyntaxError:
                log.warning("unreadable offline message for %s dropped", session.bare)
        if stored:
            log.debug("delivered %d offline messages to %s", len(stored), session.full)
        return len(stored)


@module.on("server-started")
async def started(server: CoreServer) -> None:
    offline = OfflineMessages(server)
    server.offline_store = offline.keep
    server.offline = offline


@module.on("initial-presence")
@module.on("presence-updated")
async def available(session: Any) -> None:
    """XEP-0160 §2: the first resource to become available with a non-negative priority
    (at login, or later by raising its priority) gets the stored messages."""
    # While the priority is negative, messages are stored even though the session is
    # available; they are due as soon as it turns non-negative.
    was_negative = session.data.get(NEGATIVE, False)
    session.data[NEGATIVE] = session.priority < 0
    if session.priority < 0 or (session.data.get(DELIVERED) and not was_negative):
        return
    offline: OfflineMessages | None = getattr(session.server, "offline", None)
    if offline is None:
        return
    session.data[DELIVERED] = True
    await offline.deliver(session)
