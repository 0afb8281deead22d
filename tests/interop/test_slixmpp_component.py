"""Interop: slixmpp's ComponentXMPP, a third-party XEP-0114 component, against our core's
component port, with a slixmpp client on the other side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.xmpp.ns import NS_DISCO_INFO
from tests.harness import CoreProcess, separate_db, slix_client

pytestmark = pytest.mark.interop

DOMAIN = "slix.localhost"
SECRET = "slix-secret"
PASSWORD = "interop-pw"


@pytest.fixture(scope="module")
def core(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """A core with the component slix.localhost configured."""
    env = {
        "SWITCHBOARD_COMPONENTS_SLIX_DOMAIN": DOMAIN,
        "SWITCHBOARD_COMPONENTS_SLIX_SECRET": SECRET,
    }
    proc = CoreProcess(
        separate_db(redis_server), Path(tmp_path_factory.mktemp("interop")), env=env
    ).start()
    proc.add_user("alice", PASSWORD)
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def slix_component(port: int, secret: str, *, expect_link: bool = True) -> AsyncIterator[Any]:
    """A slixmpp ComponentXMPP connected to ``port``; ``comp.errors`` collects the stream
    errors it receives, ``comp.linked`` resolves once the handshake is accepted."""
    import slixmpp

    comp = slixmpp.ComponentXMPP(DOMAIN, secret, "127.0.0.1", port)
    comp.register_plugin("xep_0030")
    loop = asyncio.get_running_loop()
    comp.linked = loop.create_future()
    comp.gone = loop.create_future()
    comp.errors = asyncio.Queue()

    def on_start(_: Any) -> None:
        if not comp.linked.done():
            comp.linked.set_result(True)

    def on_message(msg: Any) -> None:
        if msg["type"] in ("chat", "normal") and msg["body"]:
            msg.reply(f"echo: {msg['body']}").send()

    comp.add_event_handler("session_start", on_start)
    comp.add_event_handler("stream_error", lambda e: comp.errors.put_nowait(e["condition"]))
    comp.add_event_handler("message", on_message)
    comp.add_event_handler("disconnected", lambda _: comp.gone.done() or comp.gone.set_result(True))
    comp.connect()
    try:
        if expect_link:
            await asyncio.wait_for(comp.linked, 10)
        yield comp
    finally:
        if not comp.gone.done():
            comp.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(comp.gone, 3)


def test_slixmpp_component_serves_clients(core: CoreProcess) -> None:
    """A client's message to user@component reaches the slixmpp component and its reply
    reaches the client; the component can query the server (disco#info)."""

    async def run() -> None:
        async with (
            slix_component(core.component_port, SECRET) as comp,
            slix_client(core.c2s_port, "alice@localhost", PASSWORD) as alice,
        ):
            alice.send_message(mto=f"bot@{DOMAIN}", mbody="hello", mtype="chat")
            reply = await asyncio.wait_for(alice.inbox.get(), 5)
            assert str(reply["from"]) == f"bot@{DOMAIN}"
            assert reply["body"] == "echo: hello"
            info = await comp.plugin["xep_0030"].get_info(jid="localhost", ifrom=DOMAIN, timeout=5)
            assert NS_DISCO_INFO in info["disco_info"]["features"]

    asyncio.run(run())


def test_slixmpp_component_wrong_secret_refused(core: CoreProcess) -> None:
    """A slixmpp component with a wrong secret gets a not-authorized stream error."""

    async def run() -> None:
        async with slix_component(core.component_port, "not-the-secret", expect_link=False) as comp:
            condition = await asyncio.wait_for(comp.errors.get(), 5)
            assert condition == "not-authorized"
            assert not comp.linked.done()

    asyncio.run(run())
