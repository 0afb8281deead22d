"""The Module API shared by the core and the component processes.

A module declares what it serves; the process dispatches to it and advertises its features in
service discovery (XEP-0030) from these declarations::

    module = Module("ping", spec="XEP-0199", features=[NS_PING])

    @module.iq("get", QN_PING, to="server")
    async def ping(ctx: IqContext) -> None:
        return None

A handler returns the payload of the result (or None for an empty result) or raises
StanzaError; it never builds the reply itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from lxml import etree

from core.xmpp.jid import JID

log = logging.getLogger(__name__)

Element = etree._Element
# Who an IQ is addressed to, from the point of view of the process that receives it:
#   server  - the process's own domain (the server, or the component's domain);
#   self    - the sender's own account (no 'to', or 'to' = the sender's bare JID);
#   account - any local bare JID, the sender's own included;
#   entity  - any bare JID at a component's domain (a room, a node); components only.
Target = Literal["server", "self", "account", "entity"]
TARGETS = ("server", "self", "account", "entity")


@dataclass(slots=True)
class IqContext:
    """What an IQ handler is given."""

    iq: Element
    payload: Element
    sender: JID
    to: JID
    host: Any
    session: Any = None

    @property
    def type(self) -> str:
        return self.iq.get("type", "")


IqHandler = Callable[[IqContext], Awaitable[Element | None]]
Hook = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Identity:
    """A disco identity (XEP-0030 §3.1)."""

    category: str
    type: str
    name: str | None = None


@dataclass(slots=True)
class IqRoute:
    type: str
    qname: str
    target: Target
    handler: IqHandler
    # Also called for bare JIDs of the domain that have no account (see Module.iq).
    any_account: bool = False


@dataclass
class Module:
    """One feature: its IQ handlers, event hooks, disco features and stream features."""

    name: str
    spec: str | None = None
    features: list[str] = field(default_factory=list)
    identities: list[Identity] = field(default_factory=list)
    # Features and identities advertised on an account's bare JID (XEP-0030 queries to
    # user@domain, answered by the server), e.g. Identity("pubsub", "pep") for XEP-0163.
    account_features: list[str] = field(default_factory=list)
    account_identities: list[Identity] = field(default_factory=list)
    iq_routes: list[IqRoute] = field(default_factory=list)
    hooks: dict[str, list[Hook]] = field(default_factory=dict)
    # Callables (session) -> Element | None, called when stream features are offered to a
    # bound-ready (authenticated) client stream.
    stream_features: list[Callable[[Any], Element | None]] = field(default_factory=list)

    def iq(
        self, type: str, qname: str, *, to: Target = "server", any_account: bool = False
    ) -> Callable[[IqHandler], IqHandler]:
        """Register an IQ handler for ``type`` ('get' or 'set') and the payload ``qname``.

        An IQ to a bare JID of the domain with no account behind it is answered
        ``service-unavailable`` by the router (RFC 6121 §8.5.1) unless its handler for
        'account' says ``any_account=True``: then the handler answers it too, as it answers
        anyone who may not see the account, so that the answer does not reveal whether the
        account exists (XEP-0030 §8: disco#items of an unknown account is an empty result)."""
        if type not in ("get", "set"):
            raise ValueError("IQ handlers serve 'get' or 'set'")
        if to not in TARGETS:
            raise ValueError(f"unknown IQ target {to!r}")
        if any_account and to != "account":
            raise ValueError("any_account applies to handlers for 'account'")

        def register(fn: IqHandler) -> IqHandler:
            self.iq_routes.append(IqRoute(type, qname, to, fn, any_account))
            return fn

        return register

    def on(self, event: str) -> Callable[[Hook], Hook]:
        """Register a coroutine for an event the process emits (e.g. 'session-bound')."""

        def register(fn: Hook) -> Hook:
            self.hooks.setdefault(event, []).append(fn)
            return fn

        return register

    def stream_feature(
        self, fn: Callable[[Any], Element | None]
    ) -> Callable[[Any], Element | None]:
        """Register a stream feature offered after authentication."""
        self.stream_features.append(fn)
        return fn


class Dispatcher:
    """Finds the handler for an IQ and runs event hooks across the loaded modules."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        self.modules: list[Module] = []
        self._iq: dict[tuple[str, str], dict[str, IqHandler]] = {}
        self._any_account: set[tuple[str, str]] = set()
        self._hooks: dict[str, list[Hook]] = {}
        for m in modules:
            self.add(m)

    def add(self, module: Module) -> None:
        if any(m.name == module.name for m in self.modules):
            raise ValueError(f"module {module.name!r} loaded twice")
        self.modules.append(module)
        for r in module.iq_routes:
            targets = self._iq.setdefault((r.type, r.qname), {})
            if r.target in targets:
                raise ValueError(f"two handlers for {r.type} {r.qname} to {r.target}")
            targets[r.target] = r.handler
            if r.any_account:
                self._any_account.add((r.type, r.qname))
        for event, fns in module.hooks.items():
            self._hooks.setdefault(event, []).extend(fns)

    @property
    def features(self) -> list[str]:
        """Every feature of every loaded module, sorted, without duplicates."""
        return sorted({f for m in self.modules for f in m.features})

    @property
    def account_features(self) -> list[str]:
        return sorted({f for m in self.modules for f in m.account_features})

    @property
    def identities(self) -> list[Identity]:
        return [i for m in self.modules for i in m.identities]

    @property
    def account_identities(self) -> list[Identity]:
        """The identities the modules add on an account's bare JID, without duplicates."""
        return list(dict.fromkeys(i for m in self.modules for i in m.account_identities))

    def stream_features(self, session: Any) -> list[Element]:
        out = []
        for m in self.modules:
            for fn in m.stream_features:
                el = fn(session)
                if el is not None:
                    out.append(el)
        return out

    def find_iq(self, type: str, qname: str, target: Target) -> IqHandler | None:
        """The handler for an IQ of ``type`` with payload ``qname`` sent to ``target``.

        A handler registered for 'account' also serves 'self' (one's own account is an
        account); one for 'self' does not serve other accounts."""
        targets = self._iq.get((type, qname))
        if not targets:
            return None
        handler = targets.get(target)
        if handler is None and target == "self":
            handler = targets.get("account")
        return handler

    def serves_any_account(self, type: str, qname: str) -> bool:
        """Whether the 'account' handler of ``type`` and ``qname`` also answers for bare JIDs
        that have no account (``Module.iq(..., any_account=True)``)."""
        return (type, qname) in self._any_account

    def serves(self, qname: str) -> bool:
        """Whether any module handles IQs with payload ``qname`` (for any type or target)."""
        return any(q == qname for (_, q) in self._iq)

    async def emit(self, event: str, *args: Any, **kwargs: Any) -> None:
        """Run every hook for ``event`` in load order; a failing hook is logged, not fatal."""
        for fn in self._hooks.get(event, ()):
            try:
                await fn(*args, **kwargs)
            except Exception:
                log.exception("hook %s for %s failed", fn.__qualname__, event)

    def has_hooks(self, event: str) -> bool:
        return bool(self._hooks.get(event))


async def run_iq(
    dispatcher: Dispatcher,
    iq: Element,
    *,
    sender: JID,
    to: JID,
    target: Target,
    host: Any,
    session: Any = None,
) -> Element | None:
    """Serve an IQ get/set addressed to this process and return the reply stanza.

    RFC 6120 §8.2.3: a get/set has exactly one payload child, else ``bad-request``; an
    unknown payload is ``service-unavailable``; an unexpected failure is logged and answered
    with ``internal-server-error``. Returns None for IQs that are not answered (result, error).
    """
    from core.xmpp.errors import StanzaError
    from core.xmpp.stanza import error_reply, iq_result, payload_of

    itype = iq.get("type")
    if itype not in ("get", "set"):
        return None
    payload = payload_of(iq)
    try:
        if payload is None:
            raise StanzaError("bad-request", "an IQ get or set carries exactly one payload")
        handler = dispatcher.find_iq(itype, payload.tag, target)
        if handler is None:
            raise StanzaError("service-unavailable")
        ctx = IqContext(iq=iq, payload=payload, sender=sender, to=to, host=host, session=session)
        result = await handler(ctx)
        return iq_result(iq, result)
    except StanzaError as e:
        return error_reply(iq, e)
    except Exception:
        log.exception("IQ handler failed for %s", payload.tag if payload is not None else "?")
        return error_reply(iq, StanzaError("internal-server-error"))
