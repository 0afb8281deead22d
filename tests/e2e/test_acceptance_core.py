"""Acceptance checks of the core foundation (RFC 6120 c2s) and of external components
(XEP-0114) that the feature test modules leave open, against real processes:

* our component client stops gracefully on SIGTERM: work in flight finishes and its answer
  is delivered, new stanzas meanwhile get ``remote-server-timeout``, then the stream closes;
* the core logs every component link up and down with its domain and instance;
* a core killed outright (SIGKILL, no clean shutdown) comes back and the component relinks
  by itself;
* a listening port already in use stops the core with one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from lxml import etree

from core.storage import keys
from core.xmpp.ns import NS_CLIENT, NS_STANZAS, qn
from tests.harness import ROOT, CoreProcess, RawClient, separate_db

PASSWORD = "acceptance-pw"
DOMAIN = "echo.localhost"
COMPONENT_ENV = {
    "SWITCHBOARD_COMPONENTS_ECHO_DOMAIN": DOMAIN,
    "SWITCHBOARD_COMPONENTS_ECHO_SECRET": "acceptance-echo-secret",
}


class Echo:
    """The echo component of tests/e2e/echo_component.py (built on our component client and
    run_component) as a process of its own."""

    def __init__(self, core: CoreProcess, instance: str) -> None:
        self.core = core
        self.instance = instance
        self.log_path = core.workdir / f"acceptance-echo-{instance}.log"
        env = core.env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.e2e.echo_component",
                    "--name",
                    "echo",
                    "--instance",
                    instance,
                    "--port",
                    str(core.component_port),
                ],
                cwd=core.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def count_lines(text: str, needle: str) -> int:
    return sum(needle in line for line in text.splitlines())


@pytest.fixture(scope="module")
def echo_core(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """One core with the echo component configured, shared by this module's tests."""
    workdir = Path(tmp_path_factory.mktemp("acceptance"))
    proc = CoreProcess(separate_db(redis_server), workdir, env=COMPONENT_ENV).start()
    proc.add_user("bob", PASSWORD)
    try:
        yield proc
    finally:
        proc.stop()


async def next_stanza(client: RawClient, local: str) -> etree._Element:
    """The next stanza named ``local``; others (presence) are skipped."""
    async with asyncio.timeout(5):
        while True:
            el = await client.next_element()
            if el.tag == qn(NS_CLIENT, local):
                return el


def error_of(el: etree._Element) -> tuple[str | None, str | None]:
    """(type, condition) of an error stanza."""
    err = el.find(qn(NS_CLIENT, "error"))
    if err is None:
        return None, None
    cond = next(
        (etree.QName(c).localname for c in err if c.tag.startswith(f"{{{NS_STANZAS}}}")), None
    )
    return err.get("type"), cond


def test_sigterm_finishes_in_flight_work_then_closes(echo_core: CoreProcess) -> None:
    """SIGTERM to a component with a handler in flight: the handler finishes and its answer
    reaches the client, a stanza arriving meanwhile is refused with remote-server-timeout
    (type wait), the stream is closed by the component, the process exits 0; the core logs
    the link up and down with domain and instance and then answers for the absent component."""
    core = echo_core
    comp = Echo(core, "graceful")
    try:
        up = f"component link up: {DOMAIN} instance graceful"
        core.wait_log(up, timeout=10)

        async def scenario() -> None:
            bob = RawClient(core.c2s_port)
            await bob.login("bob", PASSWORD, resource="term")
            # The echo component answers "ping-me" only after pinging the sender back, so
            # its handler stays in flight until bob answers that ping.
            await bob.send(f"<message to='x@{DOMAIN}' type='chat'><body>ping-me</body></message>")
            ping = await next_stanza(bob, "iq")
            assert (ping.get("type"), ping.get("from")) == ("get", f"x@{DOMAIN}")

            comp.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(
                wait_until, lambda: "finishing 1 stanzas before closing" in comp.log(), "stop"
            )
            await bob.send(
                f"<message to='y@{DOMAIN}' type='chat' id='late'><body>x</body></message>"
            )
            refused = await next_stanza(bob, "message")
            assert refused.get("type") == "error" and refused.get("id") == "late"
            assert error_of(refused) == ("wait", "remote-server-timeout")

            await bob.send(f"<iq type='result' id='{ping.get('id')}' to='x@{DOMAIN}'/>")
            answer = await next_stanza(bob, "message")
            assert answer.findtext(qn(NS_CLIENT, "body")) == "graceful|pong result"

            assert await asyncio.to_thread(comp.proc.wait, 15) == 0
            await asyncio.to_thread(
                core.wait_log, f"component link down: {DOMAIN} instance graceful", 5
            )
            # Gone now: the core itself answers, within the grace period.
            await bob.send(
                f"<message to='y@{DOMAIN}' type='chat' id='gone'><body>x</body></message>"
            )
            gone = await next_stanza(bob, "message")
            assert gone.get("id") == "gone"
            assert error_of(gone) == ("wait", "remote-server-timeout")
            await bob.close()

        asyncio.run(scenario())
        line = core.wait_log(f"component link down: {DOMAIN} instance graceful")
        assert "closed by the component" in line, line
        assert "Traceback" not in comp.log(), comp.log()
    finally:
        comp.kill()


def test_component_relinks_after_core_is_killed(
    make_core: Callable[..., CoreProcess],
) -> None:
    """SIGKILL the core (no stream close, no Redis clean-up): the component notices, keeps
    retrying, links to the restarted core by itself, and a client's message reaches it; the
    link record in Redis names the new node."""
    core = make_core(env=COMPONENT_ENV)
    core.add_user("bob", PASSWORD)
    comp = Echo(core, "k")
    try:
        up = f"component link up: {DOMAIN} instance k"
        core.wait_log(up, timeout=10)
        core.stop(signal.SIGKILL)
        core.start()
        wait_until(lambda: count_lines(core.log(), up) == 2, "the component to relink")
        nodes = [
            line.split("switchboard core ")[-1].split()[0]
            for line in core.log().splitlines()
            if " switchboard core " in line and " serving " in line
        ]
        node = nodes[-1]
        assert len(set(nodes)) == 2, nodes  # a new process is a new node

        async def scenario() -> None:
            bob = RawClient(core.c2s_port)
            await bob.login("bob", PASSWORD, resource="k")
            await bob.send(f"<message to='z@{DOMAIN}' type='chat'><body>back</body></message>")
            reply = await next_stanza(bob, "message")
            assert reply.findtext(qn(NS_CLIENT, "body")) == "k|back"
            await bob.close()

        asyncio.run(scenario())
        client = redis.Redis.from_url(core.redis_url)
        try:
            wait_until(
                lambda: client.hget(keys.component_links(DOMAIN), "k") == node.encode(),
                "the link record of the new node",
                timeout=5,
            )
        finally:
            client.close()
        assert comp.proc.poll() is None, comp.log()
        assert "link down" in comp.log()
    finally:
        comp.kill()


def test_port_in_use_is_one_line(tmp_path: Path, redis_server: str) -> None:
    """A listener port that is already taken stops `switchboard core` at once with exit 1 and
    one line naming the address and the configuration key, never a traceback."""
    core = CoreProcess(separate_db(redis_server), tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = core.env()
        env["SWITCHBOARD_C2S_INTERFACE"] = "127.0.0.1"
        env["SWITCHBOARD_C2S_PORT"] = str(port)
        tmp_path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "core.cli", "core"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "c2s.port" in done.stderr, done.stderr
