"""IQs relayed to an occupant (XEP-0045 §7.5 applied to IQs, as Prosody and ejabberd do) do
not hold up the room: the component client's ``answer_later`` (core.xmpp.component) sends the
answer when it comes, while the stanzas after the IQ to the same bare JID go on.

First the client alone (a scripted server over StringTransport, as in
test_component_client.py), then the MUC service linked through it, on the session's Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio
from lxml import etree
from twisted.internet.testing import MemoryReactorClock

from components.muc.app import build
from core.runtime.config import load_config
from core.xmpp.component import Backoff, ComponentApp
from core.xmpp.component_link import handshake_digest
from core.xmpp.errors import StanzaError
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_COMPONENT, NS_STANZAS, NS_STREAMS, qn
from tests.unit.test_component_client import C, Server, idle, linked_app
from tests.unit.test_muc_transcript import Run

SLOW = "urn:example:slow"
QN_SLOW = qn(SLOW, "query")
SERVICE = "conference.localhost"
ROOM = f"coven@{SERVICE}"
CRONE = "crone1@shakespeare.lit/desktop"
HAG = "hag66@shakespeare.lit/pda"
MUC = "http://jabber.org/protocol/muc"
VERSION = "jabber:iq:version"


async def until(server: Server, pred: Callable[[list[etree._Element]], bool]) -> list[Any]:
    """Everything the app sends until ``pred`` holds for it (bounded: two seconds of event
    loop turns, no sleeping; Redis answers over loopback meanwhile)."""
    got: list[etree._Element] = []
    deadline = time.monotonic() + 2.0
    while not pred(got):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; got {[etree.tostring(e) for e in got]}")
        await asyncio.sleep(0)
        got.extend(server.read())
    return got


def _slow_module(answers: dict[str, asyncio.Future[etree._Element | None]]) -> Module:
    module = Module("slow")

    @module.iq("get", QN_SLOW, to="entity")
    async def slow(ctx: IqContext) -> None:
        # The answer is a future the test settles; the handler itself returns at once.
        fut: asyncio.Future[etree._Element | None] = asyncio.get_running_loop().create_future()
        answers[ctx.iq.get("id", "")] = fut
        ctx.host.answer_later(ctx.iq, fut)
        return None

    @module.on("message")
    async def echo(app: ComponentApp, stanza: etree._Element) -> None:
        app.send(
            etree.Element(
                qn(NS_COMPONENT, "message"), to=stanza.get("from", ""), frm=stanza.get("to", "")
            )
        )

    return module


def test_answer_later_does_not_hold_up_the_bare_jid(run_async: Run) -> None:
    """A handler that answers later lets the next stanza to the same bare JID through; its
    result, error or failure is sent when it comes, with the IQ's id and addresses."""
    answers: dict[str, asyncio.Future[etree._Element | None]] = {}

    async def go() -> None:
        _app, server = linked_app([_slow_module(answers)])
        for n in ("1", "2", "3"):
            server.send(
                f"<iq from='a@localhost/r' to='room@echo.localhost/x' type='get' id='q{n}'>"
                f"<query xmlns='{SLOW}'/></iq>"
            )
        server.send("<message from='a@localhost/r' to='room@echo.localhost'/>")
        got = await until(server, lambda got: any(e.tag == C("message") for e in got))
        # Nothing answered the IQs yet, and the message behind them was handled.
        assert [e.tag for e in got] == [C("message")]
        payload = etree.Element(QN_SLOW)
        etree.SubElement(payload, qn(SLOW, "answer")).text = "late"
        answers["q2"].set_result(payload)
        answers["q1"].set_exception(StanzaError("item-not-found"))
        answers["q3"].set_exception(RuntimeError("boom"))
        got = await until(server, lambda got: len(got) == 3)
        by_id = {e.get("id"): e for e in got}
        assert by_id["q2"].get("type") == "result"
        assert (by_id["q2"].get("from"), by_id["q2"].get("to")) == (
            "room@echo.localhost/x",
            "a@localhost/r",
        )
        assert by_id["q2"].findtext(f"{{{SLOW}}}query/{{{SLOW}}}answer") == "late"
        for iq_id, condition in (("q1", "item-not-found"), ("q3", "internal-server-error")):
            error = by_id[iq_id].find(C("error"))
            assert error is not None and error.find(qn(NS_STANZAS, condition)) is not None

    run_async(go())


def test_pending_answers_are_bounded_and_do_not_stop_reading(run_async: Run) -> None:
    """Answers awaited from third parties are not work in flight: with max_in_flight of 2
    and two answers pending, the link is still read; a third is resource-constraint."""
    answers: dict[str, asyncio.Future[etree._Element | None]] = {}

    async def go() -> None:
        _app, server = linked_app([_slow_module(answers)], max_in_flight=2)
        for n in ("1", "2", "3"):
            server.send(
                f"<iq from='a@localhost/r' to='room{n}@echo.localhost/x' type='get' id='q{n}'>"
                f"<query xmlns='{SLOW}'/></iq>"
            )
        got = await until(server, lambda got: len(got) == 1)
        assert got[0].get("id") == "q3"
        error = got[0].find(C("error"))
        assert error is not None and error.find(qn(NS_STANZAS, "resource-constraint")) is not None
        assert answers["q3"].cancelled() and not answers["q1"].done()
        await idle()  # the handlers' done callbacks
        assert server.transport.producerState == "producing"
        server.send("<message from='a@localhost/r' to='room9@echo.localhost'/>")
        got = await until(server, lambda got: len(got) == 1)
        assert got[0].tag == C("message")
        answers["q1"].set_result(None)
        got = await until(server, lambda got: len(got) == 1)
        assert (got[0].get("id"), got[0].get("type")) == ("q1", "result")

    run_async(go())


def test_stop_answers_what_a_third_party_has_not(run_async: Run) -> None:
    """stop() waits for handlers, not for third parties: an IQ still waiting for its answer
    is answered remote-server-timeout (the sender may retry) before the stream closes."""
    answers: dict[str, asyncio.Future[etree._Element | None]] = {}

    async def go() -> None:
        app, server = linked_app([_slow_module(answers)])
        server.send(
            "<iq from='a@localhost/r' to='room@echo.localhost/x' type='get' id='q1'>"
            f"<query xmlns='{SLOW}'/></iq>"
        )
        await until(server, lambda got: "q1" in answers)
        stopping = asyncio.ensure_future(app.stop(timeout=5))
        got = await until(server, lambda got: server.closed)
        (refused,) = got
        assert refused.get("id") == "q1" and refused.get("type") == "error"
        error = refused.find(C("error"))
        assert error is not None and error.find(qn(NS_STANZAS, "remote-server-timeout")) is not None
        server.lose()
        await asyncio.wait_for(stopping, 1)

    run_async(go())


def _muc_app(client: redis.asyncio.Redis) -> ComponentApp:
    config = load_config(
        None,
        env={
            "SWITCHBOARD_COMPONENTS_MUC_DOMAIN": SERVICE,
            "SWITCHBOARD_COMPONENTS_MUC_SECRET": "muc-secret",
        },
    )
    app, _service = build(
        config,
        client,
        reactor=MemoryReactorClock(),
        instance="m1",
        keepalive=0,
        backoff=Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.0),
    )
    assert isinstance(app, ComponentApp)
    return app


def _link(app: ComponentApp) -> Server:
    app.start()
    server = Server(app)
    server.send(
        f"<stream:stream xmlns='{NS_COMPONENT}' xmlns:stream='{NS_STREAMS}' "
        f"from='{SERVICE}' id='sid'>"
    )
    (handshake,) = server.read()
    assert handshake.text == handshake_digest("sid", "muc-secret")
    server.send("<handshake/>")
    assert app.linked
    return server


def test_an_iq_relayed_to_an_occupant_does_not_hold_up_the_room(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """A version query to room/nick goes to that occupant's real JID; while its client has
    not answered, the room fans out the next groupchat message; the answer then reaches the
    asker from the occupant JID with the asker's id."""

    def is_(kind: str, to: str, **attrs: str) -> Callable[[list[etree._Element]], bool]:
        def pred(got: list[etree._Element]) -> bool:
            return any(
                e.tag == C(kind)
                and e.get("to") == to
                and all(e.get(k) == v for k, v in attrs.items())
                for e in got
            )

        return pred

    async def go() -> None:
        app = _muc_app(redis_client)
        server = _link(app)
        server.send(
            f"<presence from='{CRONE}' to='{ROOM}/firstwitch'><x xmlns='{MUC}'/></presence>"
            f"<iq from='{CRONE}' to='{ROOM}' type='set' id='cfg'>"
            f"<query xmlns='{MUC}#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
        )
        await until(server, is_("iq", CRONE, id="cfg", type="result"))
        server.send(f"<presence from='{HAG}' to='{ROOM}/thirdwitch'><x xmlns='{MUC}'/></presence>")
        await until(server, is_("message", HAG, type="groupchat"))  # the subject, last
        server.send(
            f"<iq from='{HAG}' to='{ROOM}/firstwitch' type='get' id='v1'>"
            f"<query xmlns='{VERSION}'/></iq>"
            f"<message from='{HAG}' to='{ROOM}' type='groupchat' id='m1'><body>hi</body></message>"
        )
        got = await until(server, is_("message", HAG, id="m1"))
        (relayed,) = [e for e in got if e.tag == C("iq")]
        assert (relayed.get("from"), relayed.get("to"), relayed.get("type")) == (
            f"{ROOM}/thirdwitch",
            CRONE,
            "get",
        )
        assert relayed.get("id") != "v1"
        assert is_("message", CRONE, id="m1")(got)
        server.send(
            f"<iq from='{CRONE}' to='{ROOM}/thirdwitch' type='result' id='{relayed.get('id')}'>"
            f"<query xmlns='{VERSION}'><name>broom</name></query></iq>"
        )
        got = await until(server, is_("iq", HAG, id="v1"))
        (answer,) = got
        assert (answer.get("type"), answer.get("from")) == ("result", f"{ROOM}/firstwitch")
        assert answer.findtext(f"{{{VERSION}}}query/{{{VERSION}}}name") == "broom"
        server.lose()

    run_async(go())
