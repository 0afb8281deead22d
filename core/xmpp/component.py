"""The Jabber Component Protocol (XEP-0114): the handshake both sides compute, and the component
client that MUC, the web gateway and PubSub are built on.

A component process builds a :class:`ComponentApp` from its modules (the same Module API as the
core, see ``core.xmpp.module``) and runs it::

    module = Module("echo", features=[NS_PING])

    @module.iq("get", QN_PING, to="entity")
    async def ping(ctx: IqContext) -> None:
        return None

    @module.on("message")
    async def on_message(app: ComponentApp, stanza: Element) -> None:
        app.send(reply_to(stanza))

    app = ComponentApp("echo.example.com", secret, "127.0.0.1", 5347, [module])
    run_component(app)  # core.runtime.component: the process, SIGTERM included

The client connects, opens a ``jabber:component:accept`` stream to its domain, proves the
shared secret with ``<handshake/>`` (XEP-0114 §3), then dispatches what arrives:

* IQ get/set through ``run_iq``: target ``server`` when addressed to the domain itself,
  ``entity`` when addressed to a JID with a localpart (a room, a node); a handler whose
  answer depends on a third party hands it to :meth:`ComponentApp.answer_later` and returns,
  so that the stanzas after it are not held up;
* IQ result/error to the caller of :meth:`ComponentApp.iq`;
* messages and presence to the ``message`` and ``presence`` hooks of the modules (a message
  nobody handles is answered with ``service-unavailable``, RFC 6120 §8.3.3.19).

Stanzas addressed to one bare JID are handled in arrival order, one at a time; stanzas to
different bare JIDs are handled concurrently. Modules are also told ``link-up`` (app) and
``link-down`` (app, reason).

When the link fails the client reconnects forever, with exponential backoff and jitter.
:meth:`ComponentApp.stop` (run on SIGTERM by ``core.runtime.component.run_component``) stops
gracefully: it refuses new work with ``remote-server-timeout`` (the component is expected
back), lets in-flight handlers finish, and closes the stream.

Instance id: the client names itself in the ``from`` of its stream header as
``<domain>/<instance>`` (a valid JID whose resource is the instance id). The core uses it to
tell shard instances apart (``instances = "shard"``); other servers ignore it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

from lxml import etree
from twisted.internet import protocol
from twisted.python.failure import Failure

from core.xmpp.component_link import (
    CLOSED,
    DEFAULT_MAX_STANZA_SIZE,
    LINKED,
    QN_HANDSHAKE,
    Backoff,
    ComponentStream,
    default_instance,
    handshake_digest,
    handshake_valid,
    stream_header,
)
from core.xmpp.errors import StanzaError, StreamError
from core.xmpp.jid import JIDError, parse_jid, prep_domain, prep_resource
from core.xmpp.module import Dispatcher, Identity, IqContext, Module, Target, run_iq
from core.xmpp.ns import (
    NS_CLIENT,
    NS_COMPONENT,
    NS_DISCO_INFO,
    QN_DISCO_INFO,
    QN_IQ,
    QN_MESSAGE,
    default_ns,
    qn,
)
from core.xmpp.stanza import error_reply, iq_result, kind_of, new_id, serialize, to_client_ns

__all__ = [
    "QN_HANDSHAKE",
    "Backoff",
    "ComponentApp",
    "ComponentStream",
    "handshake_digest",
    "handshake_valid",
    "stream_header",
]

log = logging.getLogger(__name__)
Element = etree._Element


class _Factory(protocol.ClientFactory):
    noisy = False

    def __init__(self, app: ComponentApp) -> None:
        self.app = app

    def buildProtocol(self, addr: Any) -> ComponentStream:
        return ComponentStream(self.app)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.app._connect_failed(reason)


# The application ---------------------------------------------------------------------------


class ComponentApp:
    """A component: its modules, its link to the server, and the reconnection policy."""

    reactor: Any

    def __init__(
        self,
        domain: str,
        secret: str,
        host: str = "127.0.0.1",
        port: int = 5347,
        modules: Iterable[Module] = (),
        *,
        instance: str | None = None,
        reactor: Any = None,
        backoff: Backoff | None = None,
        iq_timeout: float = 30.0,
        handshake_timeout: float = 10.0,
        keepalive: float = 60.0,
        stable_after: float = 10.0,
        max_in_flight: int = 1000,
        max_stanza_size: int = DEFAULT_MAX_STANZA_SIZE,
        name: str | None = None,
    ) -> None:
        self.domain = prep_domain(domain)
        self.secret = secret
        self.host = host
        self.port = port
        self.instance = prep_resource(instance or default_instance())
        self.name = name or self.domain
        self.reactor = reactor  # resolved on start() when None
        self.backoff = backoff or Backoff()
        self.iq_timeout = iq_timeout
        self.handshake_timeout = handshake_timeout
        self.keepalive = keepalive
        self.stable_after = stable_after
        self.max_in_flight = max_in_flight
        self.max_stanza_size = max_stanza_size
        self.dispatcher = Dispatcher(modules)
        if not self.dispatcher.serves(QN_DISCO_INFO):
            self.dispatcher.add(_disco_module(self))
        self.links = 0  # handshakes accepted so far
        self.last_error: StreamError | None = None
        self._stream: ComponentStream | None = None
        self._connector: Any = None
        self._retry: Any = None
        self._keepalive: Any = None
        self._attempt = 0
        self._up_since: float | None = None
        self._running = False
        self._stopping = False
        self._pending: dict[str, tuple[asyncio.Future[Element], str | None]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._chains: dict[str, asyncio.Future[Any]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        # IQs (by object identity, while their handler runs) that answer_later took over,
        # and the tasks that will answer them.
        self._later: set[int] = set()
        self._answers: set[asyncio.Future[Any]] = set()

    # State -----------------------------------------------------------------------------

    @property
    def linked(self) -> bool:
        """Whether the handshake succeeded and the link is up."""
        return self._stream is not None and self._stream.state == LINKED

    async def wait_linked(self, timeout: float | None = None) -> None:
        """Return once the link is up (raises TimeoutError after ``timeout`` seconds)."""
        if self.linked:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    # Start and stop --------------------------------------------------------------------

    def start(self) -> None:
        """Connect, and keep reconnecting until :meth:`stop`."""
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        if self._running:
            return
        self._running = True
        self._stopping = False
        self._connect()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully: no reconnection, no new work, let in-flight handlers finish
        (at most ``timeout`` seconds), then close the stream. IQs whose answer is still
        awaited from a third party (:meth:`answer_later`) are answered
        ``remote-server-timeout`` rather than waited for: that party may never answer."""
        self._running = False
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        stream = self._stream
        if stream is None and self._connector is not None:
            self._connector.disconnect()
        busy = [t for t in self._tasks if not t.done()]
        if busy:
            log.info("component %s: finishing %d stanzas before closing", self.domain, len(busy))
            await asyncio.wait(busy, timeout=timeout)
        answers = [t for t in self._answers if not t.done()]
        for task in answers:
            task.cancel()
        if answers:
            await asyncio.wait(answers, timeout=timeout)
        stream = self._stream
        if stream is not None:
            stream.close_reason = "component shutting down"
            stream.close()
            if stream.lost is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stream.lost), 2.0)
            if stream.state != CLOSED:
                stream.transport.abortConnection()
        self._fail_pending(ConnectionError("the component is stopping"))

    # Connection lifecycle --------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        if not self._running:
            return
        log.debug("component %s: connecting to %s:%d", self.domain, self.host, self.port)
        self._connector = self.reactor.connectTCP(
            self.host, self.port, _Factory(self), timeout=self.handshake_timeout
        )

    def _connect_failed(self, reason: Failure) -> None:
        self._connector = None
        log.warning(
            "component %s: cannot connect to %s:%d: %s",
            self.domain,
            self.host,
            self.port,
            reason.getErrorMessage(),
        )
        self._schedule()

    def _schedule(self, delay: float | None = None) -> None:
        if not self._running:
            return
        if delay is None:
            delay = self.backoff.delay(self._attempt)
            self._attempt += 1
        log.info("component %s: reconnecting in %.1fs", self.domain, delay)
        self._retry = self.reactor.callLater(delay, self._connect)

    def _linked(self, stream: ComponentStream) -> None:
        self._stream = stream
        self.links += 1
        self.last_error = None
        self._up_since = self.reactor.seconds()
        log.info(
            "component %s: link up as instance %s to %s:%d",
            self.domain,
            self.instance,
            self.host,
            self.port,
        )
        if self.keepalive > 0:
            from twisted.internet.task import LoopingCall

            # RFC 6120 §4.6.1: whitespace keepalives keep idle NAT and firewall state alive.
            self._keepalive = LoopingCall(stream.write, b" ")
            self._keepalive.clock = self.reactor
            self._keepalive.start(self.keepalive, now=False)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._spawn(self.dispatcher.emit("link-up", self))

    def _stream_lost(self, stream: ComponentStream, was_linked: bool) -> None:
        self._connector = None
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        if stream.error is not None:
            self.last_error = stream.error
        if self._stream is stream:
            self._stream = None
        delay: float | None = None
        if was_linked:
            up = self.reactor.seconds() - (self._up_since or 0.0)
            if up >= self.stable_after:
                self._attempt = 0
            level = logging.INFO if self._stopping else logging.WARNING
            log.log(level, "component %s: link down: %s", self.domain, stream.close_reason)
            self._fail_pending(ConnectionError("the component link was lost"))
            self._spawn(self.dispatcher.emit("link-down", self, stream.close_reason))
        else:
            level = logging.ERROR if stream.error is not None else logging.WARNING
            log.log(level, "component %s: link refused: %s", self.domain, stream.close_reason)
        if stream.error is not None and stream.error.condition == "conflict":
            # Another instance took over this domain (instances = "replace"): coming straight
            # back would take it over in turn, so wait the longest delay.
            delay = self.backoff.maximum
        self._schedule(delay)

    # Output ----------------------------------------------------------------------------

    def send(self, stanza: Element) -> bool:
        """Send a stanza over the link; False (and nothing sent) while the link is down.

        A stanza without 'from' is sent from the component's domain (XEP-0114 §3: every
        stanza from a component carries one)."""
        stream = self._stream
        if stream is None or stream.state != LINKED:
            log.debug("component %s: link down, not sending %s", self.domain, stanza.tag)
            return False
        if stanza.get("from") is None:
            stanza.set("from", self.domain)
        stream.write(serialize(stanza, NS_COMPONENT))
        return True

    async def iq(self, stanza: Element, timeout: float | None = None) -> Element:
        """Send an IQ get/set and return its result.

        Raises StanzaError for an error reply, TimeoutError when no reply comes in time
        (``iq_timeout`` by default), ConnectionError when the link is down or goes down."""
        if stanza.tag != QN_IQ or stanza.get("type") not in ("get", "set"):
            raise ValueError("iq() sends an IQ of type get or set")
        iq_id = stanza.get("id") or new_id()
        stanza.set("id", iq_id)
        fut: asyncio.Future[Element] = asyncio.get_running_loop().create_future()
        self._pending[iq_id] = (fut, _normalised(stanza.get("to")))
        try:
            if not self.send(stanza):
                raise ConnectionError("the component link is down")
            reply = await asyncio.wait_for(fut, self.iq_timeout if timeout is None else timeout)
        finally:
            self._pending.pop(iq_id, None)
        if reply.get("type") == "error":
            err = reply.find(qn(NS_CLIENT, "error"))
            raise (
                StanzaError.from_element(err)
                if err is not None
                else StanzaError("undefined-condition")
            )
        return reply

    def answer_later(self, iq: Element, answer: Awaitable[Element | None]) -> None:
        """Answer the IQ get/set ``iq`` (the one an IQ handler is serving) when ``answer``
        completes, without holding up the stanzas that follow it to the same bare JID.

        For handlers whose answer comes from a third party, e.g. an IQ relayed with
        :meth:`iq`: the handler calls this and returns; what it returns is then ignored.
        ``answer`` gives the result payload (or None) or raises StanzaError, as a handler
        does; anything else it raises is logged and answered ``internal-server-error``.
        On :meth:`stop`, answers still pending are given up and the IQ is answered
        ``remote-server-timeout`` (RFC 6120 §8.3.3.16: the sender may try again later).

        Pending answers do not count as work in flight (a party that never answers must not
        stop the link from being read) but are bounded by ``max_in_flight`` of their own:
        beyond it ``answer`` is dropped unstarted and the IQ gets ``resource-constraint``."""
        self._later.add(id(iq))
        if len(self._answers) >= self.max_in_flight:
            close = getattr(answer, "close", None) or getattr(answer, "cancel", None)
            if close is not None:
                close()
            self._refuse(iq, StanzaError("resource-constraint", "too many answers pending"))
            return
        task = asyncio.ensure_future(self._answer(iq, answer))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _answer(self, iq: Element, answer: Awaitable[Element | None]) -> None:
        reply: Element | None
        try:
            reply = iq_result(iq, await answer)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            reply = error_reply(iq, StanzaError("remote-server-timeout", "the component stopped"))
        except StanzaError as e:
            reply = error_reply(iq, e)
        except Exception:
            log.exception("component %s: answering IQ %s failed", self.domain, iq.get("id"))
            reply = error_reply(iq, StanzaError("internal-server-error"))
        if reply is not None:
            self.send(reply)

    def _fail_pending(self, exc: Exception) -> None:
        for fut, _ in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    # Input -----------------------------------------------------------------------------

    def _incoming(self, el: Element) -> None:
        # The link's parser reads jabber:component:accept as jabber:client
        # (core.xmpp.component_link); this moves only what the server qualified itself.
        el = to_client_ns(el, NS_COMPONENT)
        kind = kind_of(el)
        if kind is None:
            log.debug("component %s: ignoring %s", self.domain, el.tag)
            return
        if kind == "iq" and el.get("type") in ("result", "error"):
            self._iq_response(el)
            return
        if self._stopping:
            # Shutting down: the component is expected back, so the sender may retry.
            self._refuse(el, StanzaError("remote-server-timeout", "the component is restarting"))
            return
        key = _bare_key(el.get("to"), self.domain)
        prev = self._chains.get(key)
        task = self._spawn(self._handle_after(prev, el))
        self._chains[key] = task
        task.add_done_callback(functools.partial(self._chain_done, key))
        if len(self._tasks) >= self.max_in_flight and self._stream is not None:
            # Bounded work: stop reading until handlers catch up (TCP pushes back on the core).
            self._stream.pause_reading(True)

    def _chain_done(self, key: str, task: asyncio.Future[Any]) -> None:
        if self._chains.get(key) is task:
            del self._chains[key]

    def _iq_response(self, el: Element) -> None:
        entry = self._pending.get(el.get("id", ""))
        if entry is None:
            return
        fut, to = entry
        # A reply comes from the entity the IQ went to (RFC 6120 §8.2.3).
        if to is not None and _normalised(el.get("from")) != to:
            log.debug("component %s: IQ reply from an unexpected sender", self.domain)
            return
        if not fut.done():
            fut.set_result(el)

    async def _handle_after(self, prev: asyncio.Future[Any] | None, el: Element) -> None:
        if prev is not None and not prev.done():
            await asyncio.wait([prev])
        try:
            await self._handle(el)
        except StanzaError as e:
            self._refuse(el, e)
        except Exception:
            log.exception("component %s: handling %s failed", self.domain, el.tag)
            self._refuse(el, StanzaError("internal-server-error"))

    async def _handle(self, el: Element) -> None:
        try:
            to = parse_jid(el.get("to") or self.domain)
            sender = parse_jid(el.get("from") or "")
        except JIDError:
            raise StanzaError("jid-malformed") from None
        if el.tag == QN_IQ:
            target: Target = "entity" if to.local is not None else "server"
            try:
                reply = await run_iq(
                    self.dispatcher, el, sender=sender, to=to, target=target, host=self
                )
            finally:
                later = id(el) in self._later
                self._later.discard(id(el))
            if reply is not None and not later:
                self.send(reply)
        elif el.tag == QN_MESSAGE:
            if self.dispatcher.has_hooks("message"):
                await self.dispatcher.emit("message", self, el)
            else:
                self._refuse(el, StanzaError("service-unavailable"))
        elif self.dispatcher.has_hooks("presence"):
            await self.dispatcher.emit("presence", self, el)

    def _refuse(self, el: Element, error: StanzaError) -> None:
        reply = error_reply(el, error)
        if reply is not None:
            self.send(reply)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("component %s: task failed", self.domain, exc_info=task.exception())
        if len(self._tasks) < self.max_in_flight // 2 and self._stream is not None:
            self._stream.pause_reading(False)


def _normalised(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return str(parse_jid(text))
    except JIDError:
        return text


def _bare_key(to: str | None, domain: str) -> str:
    """The bare JID a stanza is addressed to: the unit of ordering."""
    if not to:
        return domain
    try:
        return str(parse_jid(to).bare)
    except JIDError:
        return to


def _disco_module(app: ComponentApp) -> Module:
    """XEP-0030 disco#info of the component's domain, from its modules' declarations; used
    when no module answers disco#info itself."""
    module = Module("disco-info", spec="XEP-0030", features=[NS_DISCO_INFO])

    @module.iq("get", QN_DISCO_INFO, to="server")
    async def info(ctx: IqContext) -> Element:
        if ctx.payload.get("node"):
            raise StanzaError("item-not-found")
        q = etree.Element(QN_DISCO_INFO, nsmap=default_ns(NS_DISCO_INFO))
        identities = app.dispatcher.identities or [Identity("component", "generic", app.name)]
        for ident in identities:
            i = etree.SubElement(
                q, qn(NS_DISCO_INFO, "identity"), category=ident.category, type=ident.type
            )
            if ident.name:
                i.set("name", ident.name)
        for feature in app.dispatcher.features:
            etree.SubElement(q, qn(NS_DISCO_INFO, "feature"), var=feature)
        return q

    return module
