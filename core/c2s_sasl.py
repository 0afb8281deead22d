"""SASL negotiation of a client stream (RFC 6120 §6; XEP-0440 channel-binding types).

``SaslNegotiation`` holds one client stream's authentication state: the mechanisms it offers,
the exchange in progress, and the failures so far. It answers ``<auth/>``, ``<response/>``
and ``<abort/>``; credentials come from the account store, and failed attempts are counted
per stream (``auth.max_failures``, then ``<policy-violation/>``) and, through the server,
per account and per remote address (``auth.max_failures_per_minute``). On success it hands
the authenticated username back to the stream, which restarts (§6.4.6).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from lxml import etree

from core.xmpp import sasl
from core.xmpp.errors import StreamError
from core.xmpp.jid import JID, JIDError, parse_jid, prep_local
from core.xmpp.sasl_xml import add_mechanisms, decode, failure, sasl_element
from core.xmpp.tls import channel_bindings

if TYPE_CHECKING:
    from core.c2s import C2SStream

log = logging.getLogger(__name__)
Element = etree._Element

# RFC 6120 §6.5: the failures that count against the limits; the others (a malformed
# request, an unknown mechanism, a problem of ours) say nothing about the credentials.
_COUNTED = frozenset({"not-authorized", "invalid-authzid"})


class SaslNegotiation:
    """The authentication of one client stream, from <mechanisms/> to <success/>."""

    def __init__(self, stream: C2SStream) -> None:
        self.stream = stream
        self.server = stream.server
        self.mechanism: sasl.ServerMechanism | None = None
        self.mechanism_name = ""
        self.failures = 0
        # The prepared username of the current attempt, once a mechanism has named it; the
        # per-account failure count is kept under it.
        self.attempted_user: str | None = None
        # Channel-binding data of the stream's TLS layer, by type (RFC 9266, RFC 5929).
        self.channel_bindings: dict[str, bytes] = {}

    # Stream features (§6.4.1) -----------------------------------------------------------

    def offer(self, features: Element) -> None:
        """Append the mechanisms this stream may use, and its channel-binding types."""
        stream = self.stream
        tls = self.server.tls
        self.channel_bindings = (
            channel_bindings(stream.transport, tls.end_point)
            if stream.tls_active and tls is not None
            else {}
        )
        names = sasl.server_mechanism_names(
            tls=stream.tls_active,
            channel_bindings=self.channel_bindings,
            allow_plain_without_tls=self.server.config.c2s.allow_plain_without_tls,
        )
        add_mechanisms(features, names, self.channel_bindings)

    # The exchange (§6.4.2 - §6.4.6) -------------------------------------------------------

    async def auth(self, el: Element) -> None:
        """<auth/>: start an exchange. A second <auth/> during an exchange aborts the first."""
        self.mechanism = None
        name = el.get("mechanism", "")
        try:
            # The failure counts of the address and of the account are read with the
            # credentials (``_lookup``): one round trip for both.
            data = decode(el)
            self.mechanism = sasl.create_server_mechanism(
                name,
                lookup=self._lookup,
                check=self._check,
                channel_bindings=self.channel_bindings,
                tls=self.stream.tls_active,
                allow_plain_without_tls=self.server.config.c2s.allow_plain_without_tls,
            )
            self.mechanism_name = name
            await self._step(data)
        except sasl.SaslFailure as f:
            await self._failed(f)

    async def response(self, el: Element) -> None:
        """<response/>: the client's next step of the exchange in progress."""
        if self.mechanism is None:
            await self._failed(
                sasl.SaslFailure("malformed-request", "no authentication in progress")
            )
            return
        try:
            await self._step(decode(el) or b"")
        except sasl.SaslFailure as f:
            await self._failed(f)

    def abort(self) -> None:
        """<abort/> (§6.4.4): the exchange ends, answered with <aborted/>."""
        self.mechanism = None
        self.stream.write(failure("aborted"))

    def internal_failure(self) -> None:
        """RFC 6120 §6.5.11: the exchange cannot go on through a problem on our side."""
        self.mechanism = None
        self.stream.write(failure("temporary-auth-failure"))

    async def _step(self, data: bytes | None) -> None:
        assert self.mechanism is not None
        result = await self.mechanism.step(data)
        if isinstance(result, sasl.Challenge):
            self.stream.write(etree.tostring(sasl_element("challenge", result.data)))
            return
        username = prep_local(result.username)
        if result.authzid and not self._is_own_authzid(result.authzid, username):
            raise sasl.SaslFailure("invalid-authzid", "you may only act as yourself")
        self.mechanism = None
        if self.stream.closed:
            return  # the connection went away while the credentials were checked
        success = sasl_element("success", result.data, empty_as_equals=False)
        self.stream.authenticated(username, etree.tostring(success), self.mechanism_name)

    async def _failed(self, f: sasl.SaslFailure) -> None:
        self.mechanism = None
        stream = self.stream
        if f.condition in _COUNTED:
            self.failures += 1
            await self.server.auth_failed(stream.peer_host, self.attempted_user)
            # A delay after each failure slows password guessing (RFC 6120 §6.4.5).
            delay = self.server.config.auth.failure_delay
            if delay > 0:
                await self._pause(delay)
        if stream.closed:
            return
        log.info("c2s %s SASL failure %s", stream.peer, f.condition)
        stream.write(failure(f.condition, f.text))
        if self.failures >= self.server.config.auth.max_failures:
            stream.close_with(
                StreamError("policy-violation", "too many failed authentication attempts")
            )

    def _is_own_authzid(self, authzid: str, username: str) -> bool:
        """RFC 6120 §6.3.8: the authorization identity may only be the user's own bare JID,
        compared once prepared (COMPAT: or the bare username, as some clients send it)."""
        if authzid == username:
            return True
        try:
            return parse_jid(authzid) == JID(username, self.server.domain, None)
        except JIDError:
            return False

    async def _pause(self, seconds: float) -> None:
        """Wait on the server's reactor clock (a task.Clock in tests)."""
        waiter = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self.server.reactor.callLater(seconds, wake)
        await waiter

    # Credentials ------------------------------------------------------------------------

    async def _lookup(self, username: str, hash_name: str) -> sasl.ScramCredentials | None:
        try:
            user = prep_local(username)
        except JIDError:
            return None
        self.attempted_user = user
        limited, creds = await self.server.credentials(self.stream.peer_host, user, hash_name)
        if limited:
            raise sasl.SaslFailure("temporary-auth-failure", "too many failed attempts, try later")
        return creds

    async def _check(self, username: str, password: str) -> bool:
        creds = await self._lookup(username, "sha256")
        if creds is None:
            return False
        # PBKDF2 is slow by design: off the reactor thread.
        return await asyncio.to_thread(sasl.verify_password, password, "sha256", creds)
