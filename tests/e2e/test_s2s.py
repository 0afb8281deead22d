"""End-to-end federation between Switchboard cores (RFC 6120 §13, XEP-0220, XEP-0178).

Two cores, ``a.test`` and ``b.test``, find each other through ``s2s.hosts``; both have
self-signed certificates, so their links run over TLS and authenticate with dialback. Also
mapped: ``dead.test`` to a loopback port nothing listens on, and ``mute.test`` to a socket that
accepts connections and never says a word. A raw s2s stream checks the refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from lxml import etree

from core.storage import keys
from core.xmpp import dialback
from core.xmpp.dialback import Dialback
from core.xmpp.ns import NS_STREAMS, NS_TLS, qn
from core.xmpp.parser import StreamClose, StreamOpen, StreamParser
from tests.harness import CoreProcess, free_port, separate_db, slix_client, stream_error_condition

A, B, C = "a.test", "b.test", "c.test"
PASSWORD = "s2s-pw"
TIMEOUT = 10.0
CONNECT_TIMEOUT = 4


@dataclass
class Pair:
    a: CoreProcess
    b: CoreProcess
    mute: socket.socket
    c_port: int  # where c.test (a core started by one test) listens, known to a.test


@pytest.fixture(scope="module")
def pair(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Cores for a.test and b.test that federate with each other."""
    work = Path(tmp_path_factory.mktemp("s2s"))
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)  # never accepted: connections complete and then hear nothing
    dead = free_port()
    c_port = free_port()
    a = CoreProcess(separate_db(redis_server), work / "a", domain=A, s2s=True)
    b = CoreProcess(separate_db(redis_server), work / "b", domain=B, s2s=True)
    a.extra_env.update(
        SWITCHBOARD_S2S_HOSTS=(
            f"{B}=127.0.0.1:{b.s2s_port},dead.test=127.0.0.1:{dead},"
            f"mute.test=127.0.0.1:{mute.getsockname()[1]},{C}=127.0.0.1:{c_port}"
        ),
        SWITCHBOARD_S2S_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
    )
    b.extra_env.update(SWITCHBOARD_S2S_HOSTS=f"{A}=127.0.0.1:{a.s2s_port}")
    a.start()
    b.start()
    a.add_user("alice", PASSWORD)
    a.add_user("anna", PASSWORD)
    b.add_user("bob", PASSWORD)
    b.add_user("bert", PASSWORD)
    try:
        yield Pair(a, b, mute, c_port)
    finally:
        a.stop()
        b.stop()
        mute.close()


def client(core: CoreProcess, user: str, **kw: Any) -> Any:
    return slix_client(core.c2s_port, f"{user}@{core.domain}", PASSWORD, timeout=TIMEOUT, **kw)


async def next_message(c: Any) -> Any:
    return await asyncio.wait_for(c.inbox.get(), TIMEOUT)


async def next_presence(c: Any, frm: str, ptype: str) -> Any:
    while True:
        pres = await asyncio.wait_for(c.presences.get(), TIMEOUT)
        if pres["from"].bare == frm and pres["type"] == ptype:
            return pres


def error_condition(stanza: Any) -> tuple[str, str]:
    """(type, condition) of an error stanza received by slixmpp."""
    return stanza["error"]["type"], stanza["error"]["condition"]


def test_messages_and_iq_both_ways(pair: Pair) -> None:
    """Users on two cores chat both ways; each pings and discovers the other server."""

    async def run() -> None:
        plugins = ("xep_0030", "xep_0199")
        async with client(pair.a, "alice", plugins=plugins) as alice:
            async with client(pair.b, "bob", plugins=plugins) as bob:
                alice.send_message(mto=f"bob@{B}", mbody="hello b", mtype="chat")
                msg = await next_message(bob)
                assert (msg["body"], msg["from"]) == ("hello b", alice.boundjid)
                bob.send_message(mto=str(alice.boundjid), mbody="hello a", mtype="chat")
                msg = await next_message(alice)
                assert (msg["body"], msg["from"]) == ("hello a", bob.boundjid)
                await alice.plugin["xep_0199"].ping(B, timeout=TIMEOUT)
                await bob.plugin["xep_0199"].ping(A, timeout=TIMEOUT)
                info = await alice.plugin["xep_0030"].get_info(jid=B, timeout=TIMEOUT)
                assert "urn:xmpp:ping" in info["disco_info"]["features"]

    asyncio.run(run())
    # One link per direction, authenticated by dialback over TLS (self-signed certificates).
    assert "authenticated (dialback)" in pair.a.wait_log(f"s2s out {A} -> {B} authenticated")
    assert "authenticated (dialback)" in pair.b.wait_log(f"s2s out {B} -> {A} authenticated")
    assert pair.a.log().count(f"s2s out {A} -> {B} authenticated") == 1


def test_subscription_and_presence_both_ways(pair: Pair) -> None:
    """A subscription across servers, approved, and presence then flowing both ways."""

    async def run() -> None:
        async with client(pair.a, "anna") as anna, client(pair.b, "bert") as bert:
            for c in (anna, bert):
                c.auto_authorize = None
                c.auto_subscribe = False
                await c.get_roster()
            anna.send_presence(pto=f"bert@{B}", ptype="subscribe")
            await next_presence(bert, f"anna@{A}", "subscribe")
            bert.send_presence(pto=f"anna@{A}", ptype="subscribed")
            await next_presence(anna, f"bert@{B}", "subscribed")
            await next_presence(anna, f"bert@{B}", "available")
            bert.send_presence(pto=f"anna@{A}", ptype="subscribe")
            await next_presence(anna, f"bert@{B}", "subscribe")
            anna.send_presence(pto=f"bert@{B}", ptype="subscribed")
            await next_presence(bert, f"anna@{A}", "subscribed")
            await next_presence(bert, f"anna@{A}", "available")
            anna.send_presence(pshow="xa")
            await next_presence(bert, f"anna@{A}", "xa")

    asyncio.run(run())


def test_unreachable_domain_bounces_once(pair: Pair) -> None:
    """Stanzas to a domain whose server refuses connections come back, each exactly once,
    with remote-server-not-found."""

    async def run() -> None:
        async with client(pair.a, "alice") as alice:
            for i in range(3):
                alice.send_message(mto="nobody@dead.test", mbody=f"m{i}", mtype="chat")
            bounced = [await next_message(alice) for _ in range(3)]
            assert sorted(m["body"] for m in bounced) == ["m0", "m1", "m2"]
            for m in bounced:
                assert m["type"] == "error"
                assert m["from"] == "nobody@dead.test"
                assert error_condition(m) == ("cancel", "remote-server-not-found")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(alice.inbox.get(), 0.5)

    asyncio.run(run())
    assert "cannot connect to dead.test" in pair.a.wait_log("s2s out a.test -> dead.test failed")


def test_silent_server_times_out(pair: Pair) -> None:
    """A server that accepts the connection but never answers: the stanza comes back with
    remote-server-timeout once s2s.connect_timeout has passed."""

    async def run() -> None:
        async with client(pair.a, "alice") as alice:
            loop = asyncio.get_running_loop()
            started = loop.time()
            alice.send_message(mto="someone@mute.test", mbody="anyone?", mtype="chat")
            msg = await asyncio.wait_for(alice.inbox.get(), CONNECT_TIMEOUT + TIMEOUT)
            assert loop.time() - started >= CONNECT_TIMEOUT - 0.5
            assert msg["body"] == "anyone?"
            assert error_condition(msg) == ("wait", "remote-server-timeout")

    asyncio.run(run())


# A raw server-to-server stream ------------------------------------------------------------


class RawServerStream:
    """A hand-driven s2s stream to a core, for the refusals a real server never provokes."""

    def __init__(self, port: int, *, frm: str, to: str) -> None:
        self.port, self.frm, self.to = port, frm, to
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.parser = StreamParser()
        self.events: list[Any] = []
        self.stream_id = ""

    async def send(self, data: str) -> None:
        assert self.writer is not None
        self.writer.write(data.encode())
        await self.writer.drain()

    async def next_event(self) -> Any:
        assert self.reader is not None
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not data:
                return None
            self.events.extend(self.parser.feed(data))
        return self.events.pop(0)

    async def element(self) -> etree._Element:
        while True:
            ev = await self.next_event()
            if isinstance(ev, StreamOpen):
                self.stream_id = ev.attrs.get("id", "")
                continue
            assert isinstance(ev, etree._Element), ev
            return ev

    async def header(self, to: str | None = None) -> etree._Element:
        """Send a stream header; returns the features."""
        await self.send(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
            f"xmlns:db='jabber:server:dialback' xmlns:stream='{NS_STREAMS}' "
            f"from='{self.frm}' to='{to or self.to}' version='1.0'>"
        )
        return await self.element()

    async def open(self, *, tls: bool = True) -> etree._Element:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        features = await self.header()
        if not tls:
            return features
        assert features.find(qn(NS_TLS, "starttls")) is not None
        await self.send(f"<starttls xmlns='{NS_TLS}'/>")
        assert (await self.element()).tag == qn(NS_TLS, "proceed")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await self.writer.start_tls(ctx, server_hostname=self.to)
        self.parser.reset()
        return await self.header()

    async def stream_error(self) -> str | None:
        while True:
            ev = await self.next_event()
            if ev is None or isinstance(ev, StreamClose):
                return None
            if isinstance(ev, etree._Element) and stream_error_condition(ev):
                return stream_error_condition(ev)

    async def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()


def raw(pair: Pair, frm: str = A) -> RawServerStream:
    return RawServerStream(pair.b.s2s_port, frm=frm, to=B)


def secret_of(core: CoreProcess) -> str:
    client = redis.Redis.from_url(core.redis_url)
    try:
        value = client.get(keys.dialback_secret())
    finally:
        client.close()
    assert value is not None
    return value.decode()


def test_tls_is_required_first(pair: Pair) -> None:
    """Before STARTTLS only STARTTLS is offered; dialback gets policy-violation and a stanza
    the not-authorized stream error."""

    async def run() -> None:
        s = raw(pair)
        try:
            features = await s.open(tls=False)
            starttls = features.find(qn(NS_TLS, "starttls"))
            assert starttls is not None and starttls.find(qn(NS_TLS, "required")) is not None
            assert len(features) == 1
            await s.send(f"<db:result from='{A}' to='{B}'>abc</db:result>")
            answer = Dialback.from_element(await s.element())
            assert (answer.type, answer.condition) == ("error", "policy-violation")
            await s.send(f"<message from='alice@{A}' to='bob@{B}'><body>x</body></message>")
            assert await s.stream_error() == "not-authorized"
        finally:
            await s.close()

    asyncio.run(run())


def test_stanza_before_authentication_is_refused(pair: Pair) -> None:
    """After TLS but before any domain is authenticated: not-authorized."""

    async def run() -> None:
        s = raw(pair)
        try:
            features = await s.open()
            assert features.find(dialback.QN_DIALBACK_FEATURE) is not None
            await s.send(f"<message from='alice@{A}' to='bob@{B}'><body>x</body></message>")
            assert await s.stream_error() == "not-authorized"
        finally:
            await s.close()

    asyncio.run(run())


def test_spoofed_dialback_key_is_invalid(pair: Pair) -> None:
    """A stream claiming a.test with a key a.test did not make: b.test asks a.test (the
    authoritative server), answers invalid and closes the stream (XEP-0220 §2.2.1)."""

    async def run() -> None:
        s = raw(pair)
        try:
            await s.open()
            await s.send(f"<db:result from='{A}' to='{B}'>{'0' * 64}</db:result>")
            answer = Dialback.from_element(await s.element())
            assert (answer.frm, answer.to, answer.type) == (B, A, "invalid")
            assert await s.stream_error() == "not-authorized"
        finally:
            await s.close()

    asyncio.run(run())
    assert "dialback key for a.test is invalid" in pair.b.wait_log("is invalid")


def test_valid_key_then_foreign_from_is_invalid_from(pair: Pair) -> None:
    """A key made with a.test's secret authenticates a.test (confirmed by a.test itself);
    a stanza from another domain on that stream is then invalid-from."""

    async def run() -> None:
        s = raw(pair)
        try:
            await s.open()
            key = dialback.generate_key(secret_of(pair.a), B, A, s.stream_id)
            await s.send(f"<db:result from='{A}' to='{B}'>{key}</db:result>")
            answer = Dialback.from_element(await s.element())
            assert (answer.frm, answer.to, answer.type) == (B, A, "valid")
            await s.send(
                f"<message from='ghost@{A}' to='bob@{B}' id='m1'><body>hi</body></message>"
            )
            # That one was accepted (the stream stays open); one from a domain that is not
            # authenticated on this stream ends it.
            await s.send(f"<message from='eve@{C}' to='bob@{B}'><body>x</body></message>")
            assert await s.stream_error() == "invalid-from"
        finally:
            await s.close()

    asyncio.run(run())


def test_db_verify_is_answered_for_our_keys(pair: Pair) -> None:
    """As the authoritative server, b.test confirms its own keys and denies others."""

    async def run() -> None:
        s = raw(pair)
        try:
            await s.open()
            good = dialback.generate_key(secret_of(pair.b), A, B, "stream-1")
            await s.send(f"<db:verify from='{A}' to='{B}' id='stream-1'>{good}</db:verify>")
            answer = Dialback.from_element(await s.element())
            assert (answer.kind, answer.frm, answer.to, answer.id) == ("verify", B, A, "stream-1")
            assert answer.type == "valid"
            await s.send(f"<db:verify from='{A}' to='{B}' id='stream-2'>{good}</db:verify>")
            answer = Dialback.from_element(await s.element())
            assert (answer.id, answer.type) == ("stream-2", "invalid")
            await s.send(f"<db:verify from='{A}' to='other.test' id='x'>{good}</db:verify>")
            answer = Dialback.from_element(await s.element())
            assert (answer.type, answer.condition) == ("error", "item-not-found")
        finally:
            await s.close()

    asyncio.run(run())


def test_unknown_host_in_header(pair: Pair) -> None:
    """A stream to a domain b.test does not serve: host-unknown."""

    async def run() -> None:
        s = raw(pair)
        try:
            s.reader, s.writer = await asyncio.open_connection("127.0.0.1", pair.b.s2s_port)
            await s.send(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
                f"xmlns:stream='{NS_STREAMS}' from='{A}' to='elsewhere.test' version='1.0'>"
            )
            assert await s.stream_error() == "host-unknown"
        finally:
            await s.close()

    asyncio.run(run())


def test_require_valid_certificates_refuses_self_signed(
    pair: Pair, redis_server: str, tmp_path: Path
) -> None:
    """With s2s.require_valid_certificates, a peer with a self-signed certificate gets no
    link: the stanza bounces and the log says why; its dialback attempt is refused too."""
    c = CoreProcess(
        separate_db(redis_server),
        tmp_path / "c",
        domain=C,
        s2s=True,
        env={
            "SWITCHBOARD_S2S_HOSTS": f"{A}=127.0.0.1:{pair.a.s2s_port}",
            "SWITCHBOARD_S2S_REQUIRE_VALID_CERTIFICATES": "true",
        },
    )
    c.s2s_port = pair.c_port
    c.start()
    try:
        c.add_user("carl", PASSWORD)

        async def run() -> None:
            async with client(c, "carl") as carl:
                carl.send_message(mto=f"alice@{A}", mbody="trust me", mtype="chat")
                msg = await next_message(carl)
                assert error_condition(msg) == ("cancel", "remote-server-not-found")
                assert "certificate" in (msg["error"]["text"] or "")

        async def inbound() -> None:
            async with client(pair.a, "alice") as alice:
                alice.send_message(mto=f"carl@{C}", mbody="trust me too", mtype="chat")
                msg = await next_message(alice)
                # XEP-0220 §2.1.1: a dialback error bounces with remote-server-timeout.
                assert error_condition(msg) == ("wait", "remote-server-timeout")

        asyncio.run(run())
        line = c.wait_log(f"s2s out {C} -> {A} failed")
        assert "self-signed certificate" in line
        assert "require_valid_certificates" in line
        asyncio.run(inbound())
        line = c.wait_log(f"refused dialback for {A}")
        assert "self-signed certificate" in line
    finally:
        c.stop()


def test_error_reply_condition_is_kept(pair: Pair) -> None:
    """An IQ to a user of the other server that does not exist comes back as an error from
    that server, carried over s2s unchanged."""

    async def run() -> None:
        async with client(pair.a, "alice", plugins=("xep_0030",)) as alice:
            with pytest.raises(Exception) as info:
                await alice.plugin["xep_0030"].get_info(jid=f"nosuchuser@{B}", timeout=TIMEOUT)
            stanza = getattr(info.value, "iq", None)
            assert stanza is not None, info.value
            assert stanza["error"]["condition"] == "service-unavailable"

    asyncio.run(run())
