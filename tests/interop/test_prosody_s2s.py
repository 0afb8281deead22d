"""Interop: federation with a real Prosody (Debian's package) over TLS, both ways.

Two deployments, each a Switchboard core serving ``sb.test`` and a Prosody serving ``pr.test``
on loopback:

* ``external``: both certificates come from one test CA that both servers trust;
  ``s2s.require_valid_certificates`` is on here and ``s2s_secure_auth`` in Prosody, so each
  side authenticates the other with SASL EXTERNAL (XEP-0178) and nothing else would do.
* ``dialback``: self-signed certificates; TLS is accepted, the domains are authenticated with
  Server Dialback (XEP-0220) in both directions.

In each, users on the two servers exchange messages, subscribe to each other and see each
other's presence (RFC 6121 through s2s), and query the other server (XEP-0199, XEP-0030,
XEP-0092, XEP-0054).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import CoreProcess, separate_db, slix_client
from tests.interop.conftest import CertAuthority, Prosody, self_signed

pytestmark = pytest.mark.interop

SB = "sb.test"
PR = "pr.test"
PASSWORD = "interop-pw"
TIMEOUT = 15.0


@dataclass
class Federation:
    mode: str
    core: CoreProcess
    prosody: Prosody


@pytest.fixture(scope="module", params=["external", "dialback"])
def fed(
    request: pytest.FixtureRequest,
    redis_server: str,
    tmp_path_factory: pytest.TempPathFactory,
    prosody_factory: Callable[..., Prosody],
) -> Iterator[Federation]:
    """A Switchboard core for sb.test and a Prosody for pr.test that federate."""
    mode = request.param
    work = Path(tmp_path_factory.mktemp(f"fed-{mode}"))
    core = CoreProcess(separate_db(redis_server), work / "core", domain=SB, s2s=True)
    env = core.extra_env
    if mode == "external":
        ca = CertAuthority(work / "ca")
        sb_cert, sb_key = ca.issue(SB)
        pr_cert = ca.issue(PR)
        env.update(
            SWITCHBOARD_TLS_CERT=str(sb_cert),
            SWITCHBOARD_TLS_KEY=str(sb_key),
            SWITCHBOARD_S2S_TRUST_STORE=str(ca.path),
            SWITCHBOARD_S2S_REQUIRE_VALID_CERTIFICATES="true",
        )
        prosody = prosody_factory(
            domain=PR,
            cert=pr_cert,
            peer=SB,
            peer_port=core.s2s_port,
            cafile=ca.path,
            secure_auth=True,
        )
    else:
        prosody = prosody_factory(
            domain=PR,
            cert=self_signed(work, PR),
            peer=SB,
            peer_port=core.s2s_port,
        )
    env["SWITCHBOARD_S2S_HOSTS"] = f"{PR}=127.0.0.1:{prosody.s2s_port}"
    env["SWITCHBOARD_S2S_CONNECT_TIMEOUT"] = "10"
    prosody.register("romeo", PASSWORD)
    prosody.register("mercutio", PASSWORD)
    prosody.start()
    core.start()
    for name in ("juliet", "nurse", "tybalt"):
        core.add_user(name, PASSWORD)
    try:
        yield Federation(mode, core, prosody)
    finally:
        core.stop()
        prosody.stop()


def sb_client(fed: Federation, user: str) -> Any:
    return slix_client(fed.core.c2s_port, f"{user}@{SB}", PASSWORD, timeout=TIMEOUT)


def pr_client(fed: Federation, user: str) -> Any:
    return slix_client(fed.prosody.c2s_port, f"{user}@{PR}", PASSWORD, timeout=TIMEOUT)


async def next_message(client: Any, body: str | None = None) -> Any:
    """The next chat message (with ``body`` when given) that ``client`` receives."""
    while True:
        msg = await asyncio.wait_for(client.inbox.get(), TIMEOUT)
        if msg["type"] == "error" or body is None or msg["body"] == body:
            return msg


async def next_presence(client: Any, frm: str, ptype: str) -> Any:
    """The next presence of ``ptype`` from the bare JID ``frm`` ('available' for none)."""
    while True:
        pres = await asyncio.wait_for(client.presences.get(), TIMEOUT)
        if pres["from"].bare == frm and pres["type"] == ptype:
            return pres


def test_messages_both_ways(fed: Federation) -> None:
    """A Switchboard user and a Prosody user chat in both directions."""

    async def run() -> None:
        async with sb_client(fed, "juliet") as juliet, pr_client(fed, "romeo") as romeo:
            juliet.send_message(mto=f"romeo@{PR}", mbody="Romeo, Romeo!", mtype="chat")
            msg = await next_message(romeo, "Romeo, Romeo!")
            assert msg["type"] == "chat"
            assert msg["from"] == juliet.boundjid
            romeo.send_message(mto=str(juliet.boundjid), mbody="I take thee at thy word")
            msg = await next_message(juliet, "I take thee at thy word")
            assert msg["from"] == romeo.boundjid
            # A second round reuses the links that are now up.
            for i in range(3):
                juliet.send_message(mto=f"romeo@{PR}", mbody=f"again {i}", mtype="chat")
            for i in range(3):
                assert (await next_message(romeo))["body"] == f"again {i}"

    asyncio.run(run())


def test_links_use_the_expected_authentication(fed: Federation) -> None:
    """Each direction is authenticated by SASL EXTERNAL with the CA's certificates, and by
    dialback with self-signed ones; both streams run over TLS."""

    async def run() -> None:
        async with sb_client(fed, "nurse") as nurse, pr_client(fed, "mercutio") as mercutio:
            nurse.send_message(mto=f"mercutio@{PR}", mbody="anon", mtype="chat")
            await next_message(mercutio, "anon")
            mercutio.send_message(mto=f"nurse@{SB}", mbody="good den", mtype="chat")
            await next_message(nurse, "good den")

    asyncio.run(run())
    how = "SASL EXTERNAL" if fed.mode == "external" else "dialback"
    out = fed.core.wait_log(f"s2s out {SB} -> {PR} authenticated")
    assert f"({how})" in out
    inbound = fed.core.wait_log(f"authenticated {PR} -> {SB}")
    assert f"({how})" in inbound
    log = fed.core.log()
    assert "s2s in" in log and "TLS started" in log
    if fed.mode == "dialback":
        # Prosody asked us to verify the key we sent it, and we confirmed it.
        assert f"db:verify {SB} -> {PR}" in log
    else:
        assert "db:verify" not in log


def test_subscriptions_and_presence_both_ways(fed: Federation) -> None:
    """Tybalt and Romeo subscribe to each other across servers, see each other's presence
    change and go offline, and each server answers the other's probes (RFC 6121 §3, §4)."""

    async def run() -> None:
        async with sb_client(fed, "tybalt") as tybalt, pr_client(fed, "romeo") as romeo:
            for c in (tybalt, romeo):
                c.auto_authorize = None  # answer subscription requests by hand
                c.auto_subscribe = False
                # RFC 6121 §2.1.6: an interested resource, as subscription traffic needs.
                await c.get_roster()
            tyb, rom = f"tybalt@{SB}", f"romeo@{PR}"
            # Romeo (Prosody) asks Tybalt (Switchboard); Tybalt approves.
            romeo.send_presence(pto=tyb, ptype="subscribe")
            await next_presence(tybalt, rom, "subscribe")
            tybalt.send_presence(pto=rom, ptype="subscribed")
            await next_presence(romeo, tyb, "subscribed")
            # §3.1.5: on approval Romeo receives Tybalt's current presence.
            await next_presence(romeo, tyb, "available")
            # Tybalt (Switchboard) asks Romeo (Prosody); Romeo approves.
            tybalt.send_presence(pto=rom, ptype="subscribe")
            await next_presence(romeo, tyb, "subscribe")
            romeo.send_presence(pto=tyb, ptype="subscribed")
            await next_presence(tybalt, rom, "subscribed")
            await next_presence(tybalt, rom, "available")
            # Broadcast presence now flows both ways.
            tybalt.send_presence(pshow="away", pstatus="fencing")
            pres = await next_presence(romeo, tyb, "away")
            assert pres["status"] == "fencing"
            romeo.send_presence(pshow="dnd", pstatus="in Mantua")
            pres = await next_presence(tybalt, rom, "dnd")
            assert pres["status"] == "in Mantua"
            # Both rosters hold the other with subscription 'both'.
            await tybalt.get_roster()
            assert tybalt.client_roster[rom]["subscription"] == "both"
            await romeo.get_roster()
            assert romeo.client_roster[tyb]["subscription"] == "both"
            # Tybalt goes offline: Romeo is told.
            tybalt.send_presence(ptype="unavailable")
            await next_presence(romeo, tyb, "unavailable")

    async def probes() -> None:
        # RFC 6121 §4.3: a new session's initial presence makes its server probe the contacts
        # over s2s; the other server answers with their current presence.
        tyb, rom = f"tybalt@{SB}", f"romeo@{PR}"
        async with pr_client(fed, "romeo") as romeo:
            async with sb_client(fed, "tybalt") as tybalt:
                # Tybalt's server probed Romeo; Prosody answered.
                await next_presence(tybalt, rom, "available")
                await next_presence(romeo, tyb, "available")
            await next_presence(romeo, tyb, "unavailable")
        async with sb_client(fed, "tybalt") as tybalt:
            async with pr_client(fed, "romeo") as romeo:
                # Prosody probed Tybalt; Switchboard answered.
                await next_presence(romeo, tyb, "available")
                await next_presence(tybalt, rom, "available")

    asyncio.run(run())
    asyncio.run(probes())


def test_iq_to_the_remote_server(fed: Federation) -> None:
    """Ping, disco#info and software version of the other server, from each side."""

    async def run() -> None:
        plugins = ("xep_0030", "xep_0092", "xep_0199")
        async with (
            slix_client(
                fed.core.c2s_port, f"nurse@{SB}", PASSWORD, plugins=plugins, timeout=TIMEOUT
            ) as nurse,
            slix_client(
                fed.prosody.c2s_port, f"mercutio@{PR}", PASSWORD, plugins=plugins, timeout=TIMEOUT
            ) as mercutio,
        ):
            await nurse.plugin["xep_0199"].ping(PR, timeout=TIMEOUT)
            await mercutio.plugin["xep_0199"].ping(SB, timeout=TIMEOUT)
            info = await nurse.plugin["xep_0030"].get_info(jid=PR, timeout=TIMEOUT)
            assert "urn:xmpp:ping" in info["disco_info"]["features"]
            info = await mercutio.plugin["xep_0030"].get_info(jid=SB, timeout=TIMEOUT)
            identities = info["disco_info"]["identities"]
            assert any(i[0] == "server" for i in identities)
            version = await nurse.plugin["xep_0092"].get_version(PR, timeout=TIMEOUT)
            assert version["software_version"]["name"].lower().startswith("prosody")
            version = await mercutio.plugin["xep_0092"].get_version(SB, timeout=TIMEOUT)
            assert version["software_version"]["name"] == "Switchboard"

    asyncio.run(run())


def test_vcards_across_servers(fed: Federation) -> None:
    """Each side reads the vCard a user of the other server published (XEP-0054)."""

    async def run() -> None:
        plugins = ("xep_0030", "xep_0054")
        async with (
            slix_client(
                fed.prosody.c2s_port, f"mercutio@{PR}", PASSWORD, plugins=plugins, timeout=TIMEOUT
            ) as mercutio,
            slix_client(
                fed.core.c2s_port, f"juliet@{SB}", PASSWORD, plugins=plugins, timeout=TIMEOUT
            ) as juliet,
        ):
            card = mercutio.plugin["xep_0054"].make_vcard()
            card["FN"] = "Mercutio"
            card["NICKNAME"] = "Queen Mab"
            await mercutio.plugin["xep_0054"].publish_vcard(card, timeout=TIMEOUT)
            got = await juliet.plugin["xep_0054"].get_vcard(
                f"mercutio@{PR}", local=False, cached=False, timeout=TIMEOUT
            )
            assert got["vcard_temp"]["FN"] == "Mercutio"
            assert "Queen Mab" in got["vcard_temp"]["NICKNAME"]
            card = juliet.plugin["xep_0054"].make_vcard()
            card["FN"] = "Juliet Capulet"
            await juliet.plugin["xep_0054"].publish_vcard(card, timeout=TIMEOUT)
            got = await mercutio.plugin["xep_0054"].get_vcard(
                f"juliet@{SB}", local=False, cached=False, timeout=TIMEOUT
            )
            assert got["vcard_temp"]["FN"] == "Juliet Capulet"

    asyncio.run(run())
