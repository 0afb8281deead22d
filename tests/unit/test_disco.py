"""Service discovery transcripts (XEP-0030) with XEP-0128/XEP-0157 contact addresses, and the
truthfulness walk: every feature the server or an account advertises must be served."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from lxml import etree

from core.runtime.config import ComponentConfig, ConfigError, load_config
from core.storage.roster import RosterItem, RosterStore
from core.xmpp.errors import StanzaError
from core.xmpp.module import Identity, IqContext, Module
from core.xmpp.ns import NS_BLOCKING, NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PRIVACY, NS_VCARD
from tests.unit.helpers import assert_xml, settle
from tests.unit.test_roster_harness import Im, assert_stanzas, run_im

A = "alice@localhost"
B = "bob@localhost"
INFO = f"xmlns='{NS_DISCO_INFO}'"
ITEMS = f"xmlns='{NS_DISCO_ITEMS}'"
# An error condition that means "nobody serves this": a feature answered with one of these is
# advertised without a handler.
UNSERVED = {"service-unavailable", "feature-not-implemented", "internal-server-error"}


async def ask(im: Im, session: Any, text: str) -> etree._Element:
    """Send an IQ and return the one reply to it (pushes that follow are left out)."""
    await im.send(session, text)
    await settle(im.core)
    id = etree.fromstring(text).get("id")
    replies = [
        s
        for s in session.take()
        if s.tag == "{jabber:client}iq" and s.get("id") == id and s.get("type") != "set"
    ]
    assert len(replies) == 1, [etree.tostring(r) for r in replies]
    return replies[0]


def condition(stanza: etree._Element) -> str | None:
    if stanza.get("type") != "error":
        return None
    error = stanza.find("{jabber:client}error")
    assert error is not None
    return etree.QName(error[0]).localname


def features(reply: etree._Element) -> list[str]:
    return [f.get("var") for f in reply.iter(f"{{{NS_DISCO_INFO}}}feature")]


def test_server_info_lists_exactly_the_loaded_features(redis_client: Any, run_async: Any) -> None:
    """§3.1: identity server/im and the features of the loaded modules, these four specs'
    included; no extended form without configured contact addresses."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        reply = await ask(im, a, f"<iq to='localhost' type='get' id='i1'><query {INFO}/></iq>")
        query = reply.find(f"{{{NS_DISCO_INFO}}}query")
        assert query is not None
        identity = query.find(f"{{{NS_DISCO_INFO}}}identity")
        assert identity is not None
        assert (identity.get("category"), identity.get("type")) == ("server", "im")
        assert features(reply) == im.core.dispatcher.features
        assert {NS_PRIVACY, NS_BLOCKING, NS_VCARD, NS_DISCO_INFO} <= set(features(reply))
        assert query.find("{jabber:x:data}x") is None

    run_im(run_async, redis_client, scenario)


def test_contact_addresses(redis_client: Any, run_async: Any) -> None:
    """XEP-0157 §3: configured addresses come as an XEP-0128 form of FORM_TYPE serverinfo."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        reply = await ask(im, a, f"<iq to='localhost' type='get' id='i1'><query {INFO}/></iq>")
        form = reply.find(f"{{{NS_DISCO_INFO}}}query/{{jabber:x:data}}x")
        expected = (
            "<x xmlns='jabber:x:data' type='result'>"
            "<field var='FORM_TYPE' type='hidden'>"
            "<value>http://jabber.org/network/serverinfo</value></field>"
            "<field var='abuse-addresses' type='list-multi'>"
            "<value>mailto:abuse@localhost</value></field>"
            "<field var='admin-addresses' type='list-multi'>"
            "<value>mailto:xmpp@localhost</value><value>xmpp:admin@localhost</value></field>"
            "</x>"
        )
        assert_xml(form, expected)

    def configured(im: Im) -> None:
        im.config.contact.admin = ["mailto:xmpp@localhost", "xmpp:admin@localhost"]
        im.config.contact.abuse = ["mailto:abuse@localhost"]

    async def go(im: Im) -> None:
        configured(im)
        await scenario(im)

    run_im(run_async, redis_client, go)


def test_server_items_are_the_components(redis_client: Any, run_async: Any) -> None:
    """§4.1: the server's items are the configured components; nodes are item-not-found."""

    async def scenario(im: Im) -> None:
        im.core.config.components = {
            "muc": ComponentConfig(domain="conference.localhost", secret="s")
        }
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        reply = await ask(im, a, f"<iq to='localhost' type='get' id='t1'><query {ITEMS}/></iq>")
        assert_stanzas(
            [reply],
            f"<iq type='result' id='t1' to='{A}/a' from='localhost'>"
            f"<query {ITEMS}><item jid='conference.localhost'/></query></iq>",
        )
        for text in (
            f"<iq to='localhost' type='get' id='n1'><query {ITEMS} node='x'/></iq>",
            f"<iq to='localhost' type='get' id='n2'><query {INFO} node='x'/></iq>",
            f"<iq type='get' id='n3'><query {INFO} node='x'/></iq>",
            f"<iq type='get' id='n4'><query {ITEMS} node='x'/></iq>",
        ):
            assert condition(await ask(im, a, text)) == "item-not-found", text

    run_im(run_async, redis_client, scenario)


def test_account_info_only_for_self_and_subscribers(redis_client: Any, run_async: Any) -> None:
    """§8: an account's info goes to itself and to contacts allowed to see its presence;
    anyone else gets the same service-unavailable as for an account that does not exist."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "bob", "carol")
        await RosterStore(im.redis).write(
            A, version="e-1", items={B: RosterItem(B, subscription="from")}
        )
        await RosterStore(im.redis).write(
            B, version="e-1", items={A: RosterItem(A, subscription="to")}
        )
        a = await im.login(f"{A}/a")
        b = await im.login(f"{B}/pc")
        c = await im.login("carol@localhost/pc")
        own = await ask(im, a, f"<iq type='get' id='o1'><query {INFO}/></iq>")
        identity = own.find(f"{{{NS_DISCO_INFO}}}query/{{{NS_DISCO_INFO}}}identity")
        assert identity is not None
        assert (identity.get("category"), identity.get("type")) == ("account", "registered")
        assert NS_VCARD in features(own)
        contact = await ask(im, b, f"<iq to='{A}' type='get' id='o2'><query {INFO}/></iq>")
        assert features(contact) == features(own)
        stranger = await ask(im, c, f"<iq to='{A}' type='get' id='o3'><query {INFO}/></iq>")
        nobody = await ask(
            im, c, f"<iq to='nobody@localhost' type='get' id='o4'><query {INFO}/></iq>"
        )
        assert condition(stranger) == condition(nobody) == "service-unavailable"

    run_im(run_async, redis_client, scenario)


def test_account_items(redis_client: Any, run_async: Any) -> None:
    """§8: available resources to those allowed to see them, an empty result to others."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "carol")
        a = await im.login(f"{A}/a")
        await im.login(f"{A}/b")
        c = await im.login("carol@localhost/pc")
        a.take()
        own = await ask(im, a, f"<iq type='get' id='t1'><query {ITEMS}/></iq>")
        jids = sorted(i.get("jid") for i in own.iter(f"{{{NS_DISCO_ITEMS}}}item"))
        assert jids == [f"{A}/a", f"{A}/b"]
        other = await ask(im, c, f"<iq to='{A}' type='get' id='t2'><query {ITEMS}/></iq>")
        assert_stanzas(
            [other],
            f"<iq type='result' id='t2' to='carol@localhost/pc' from='{A}'><query {ITEMS}/></iq>",
        )

    run_im(run_async, redis_client, scenario)


def test_unknown_account_items_are_empty(redis_client: Any, run_async: Any) -> None:
    """§8 rule 2: disco#items of an account that does not exist is an empty result, with or
    without a node (info stays service-unavailable, rule 1); a stranger asking an existing
    account with a node gets the same empty result, while the account itself gets
    item-not-found for the node."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "carol")
        a = await im.login(f"{A}/a")
        c = await im.login("carol@localhost/pc")
        for to in ("nobody@localhost", A):
            for node in ("", " node='x'"):
                reply = await ask(
                    im, c, f"<iq to='{to}' type='get' id='u1'><query {ITEMS}{node}/></iq>"
                )
                assert_stanzas(
                    [reply],
                    f"<iq type='result' id='u1' to='carol@localhost/pc' from='{to}'>"
                    f"<query {ITEMS}/></iq>",
                )
        info = await ask(
            im, c, f"<iq to='nobody@localhost' type='get' id='u2'><query {INFO}/></iq>"
        )
        assert condition(info) == "service-unavailable"
        own = await ask(im, a, f"<iq type='get' id='u3'><query {ITEMS} node='x'/></iq>")
        assert condition(own) == "item-not-found"

    run_im(run_async, redis_client, scenario)


# What a stranger may send to an account's bare JID: each must be answered alike whether the
# account exists or not (XEP-0030 §8, XEP-0054 §3.3, XEP-0012 §8, RFC 6121 §2.3.3).
STRANGER_IQS = [
    f"<iq type='get' id='s'><query {INFO}/></iq>",
    f"<iq type='get' id='s'><query {INFO} node='x'/></iq>",
    f"<iq type='get' id='s'><query {ITEMS}/></iq>",
    f"<iq type='get' id='s'><query {ITEMS} node='x'/></iq>",
    f"<iq type='get' id='s'><vCard xmlns='{NS_VCARD}'/></iq>",
    f"<iq type='set' id='s'><vCard xmlns='{NS_VCARD}'><FN>x</FN></vCard></iq>",
    "<iq type='get' id='s'><query xmlns='jabber:iq:roster'/></iq>",
    "<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='x@localhost'/></query></iq>",
    "<iq type='get' id='s'><query xmlns='jabber:iq:last'/></iq>",
    f"<iq type='get' id='s'><query xmlns='{NS_PRIVACY}'/></iq>",
    f"<iq type='get' id='s'><blocklist xmlns='{NS_BLOCKING}'/></iq>",
    "<iq type='get' id='s'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<iq type='get' id='s'><query xmlns='urn:example:unknown'/></iq>",
]


def test_answers_do_not_reveal_accounts(redis_client: Any, run_async: Any) -> None:
    """Every IQ a stranger (a local user or another server's) sends to an existing account
    that does not share its presence with it gets the same answer as one to an account that
    does not exist, so IQs cannot be used to harvest accounts."""

    def shape(reply: etree._Element, to: str) -> bytes:
        out = copy.deepcopy(reply)
        assert out.get("from") == to
        del out.attrib["from"]
        return etree.tostring(out)

    async def scenario(im: Im) -> None:
        await im.accounts("alice", "carol")
        await im.login(f"{A}/a")
        c = await im.login("carol@localhost/pc")
        for text in STRANGER_IQS:
            answers = []
            for to in (A, "nobody@localhost"):
                answers.append(shape(await ask(im, c, text.replace("<iq", f"<iq to='{to}'")), to))
            assert answers[0] == answers[1], text
            for to in (A, "nobody@localhost"):
                await im.receive(
                    text.replace("<iq", f"<iq from='eve@remote.example/x' to='{to}'", 1)
                )
            replies = im.remote.take()
            assert len(replies) == 2, text
            remote = [shape(r, to) for r, to in zip(replies, (A, "nobody@localhost"), strict=True)]
            assert remote[0] == remote[1], text

    run_im(run_async, redis_client, scenario)


def test_account_identities_from_modules(redis_client: Any, run_async: Any) -> None:
    """An account's disco#info carries account/registered and the identities the loaded
    modules declare for accounts (e.g. pubsub/pep), for the account and its contacts."""

    async def scenario(im: Im) -> None:
        im.core.dispatcher.add(Module("pep", account_identities=[Identity("pubsub", "pep")]))
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        reply = await ask(im, a, f"<iq to='{A}' type='get' id='i1'><query {INFO}/></iq>")
        identities = [
            (i.get("category"), i.get("type")) for i in reply.iter(f"{{{NS_DISCO_INFO}}}identity")
        ]
        assert identities == [("account", "registered"), ("pubsub", "pep")]
        server = await ask(im, a, f"<iq to='localhost' type='get' id='i2'><query {INFO}/></iq>")
        assert ("pubsub", "pep") not in [
            (i.get("category"), i.get("type")) for i in server.iter(f"{{{NS_DISCO_INFO}}}identity")
        ]

    run_im(run_async, redis_client, scenario)


def _probes(im: Im, feature: str, target: str) -> list[str]:
    """One IQ per payload that a loaded module serves in ``feature``'s namespace: a get where
    there is one, else a set. The server's features may be served to the server's domain or,
    for features of one's account (privacy lists, blocking), to the account itself."""
    found: dict[tuple[str, str], set[str]] = {}
    for m in im.core.dispatcher.modules:
        for r in m.iq_routes:
            if r.qname.startswith(f"{{{feature}}}") and r.target != "entity":
                where = "server" if r.target == "server" else "self"
                found.setdefault((where, r.qname), set()).add(r.type)
    if target != "server" or not any(where == "server" for where, _ in found):
        found = {k: v for k, v in found.items() if k[0] == "self"}
    else:
        found = {k: v for k, v in found.items() if k[0] == "server"}
    out = []
    for n, ((where, qname), types) in enumerate(sorted(found.items())):
        to = " to='localhost'" if where == "server" else ""
        local = qname.rpartition("}")[2]
        itype = "get" if "get" in types else "set"
        out.append(f"<iq{to} type='{itype}' id='p{n}'><{local} xmlns='{feature}'/></iq>")
    return out


async def _offline_message_kept(im: Im, session: Any) -> bool:
    """XEP-0160 (msgoffline): a message to an account with no resource is kept, not bounced."""
    await im.accounts("offline-peer")
    await im.send(session, "<message to='offline-peer@localhost' id='om'><body>x</body></message>")
    await settle(im.core)
    return not [s for s in session.take() if s.get("type") == "error"]


# Features that no IQ serves, each with a check that it does what it advertises.
NON_IQ_FEATURES = {"msgoffline": _offline_message_kept}


async def unserved_features(im: Im, session: Any) -> list[str]:
    """Walk disco#info of the server and of the session's account; name each feature that
    no handler serves (no IQ route and no known check, or a probe answered 'unserved')."""
    unserved = []
    for target, to in (("server", " to='localhost'"), ("self", "")):
        info = await ask(im, session, f"<iq{to} type='get' id='walk'><query {INFO}/></iq>")
        advertised = features(info)
        assert advertised, target
        for feature in advertised:
            probes = _probes(im, feature, target)
            if not probes:
                check = NON_IQ_FEATURES.get(feature)
                if check is None or not await check(im, session):
                    unserved.append(f"{target}: {feature} (no handler)")
                continue
            for probe in probes:
                reply = await ask(im, session, probe)
                if condition(reply) in UNSERVED:
                    unserved.append(f"{target}: {feature}: {probe} -> {condition(reply)}")
    return unserved


def test_every_advertised_feature_is_served(redis_client: Any, run_async: Any) -> None:
    """Every feature in disco#info of the server and of an account has a handler that answers
    (a result, or an error other than 'nobody serves this'), or is a known delivery feature
    whose check passes."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        assert await unserved_features(im, a) == []

    run_im(run_async, redis_client, scenario)


def test_the_walk_catches_an_unserved_feature(redis_client: Any, run_async: Any) -> None:
    """The walk fails for a feature advertised without a handler, and for one whose handler
    answers service-unavailable."""

    async def scenario(im: Im) -> None:
        liar = Module("liar", features=["urn:example:nothing", "urn:example:refuses"])

        @liar.iq("get", "{urn:example:refuses}q", to="server")
        async def refuse(ctx: IqContext) -> None:
            raise StanzaError("service-unavailable")

        im.core.dispatcher.add(liar)
        await im.accounts("alice")
        a = await im.login(f"{A}/a")
        found = await unserved_features(im, a)
        assert found == [
            "server: urn:example:nothing (no handler)",
            "server: urn:example:refuses: <iq to='localhost' type='get' id='p0'>"
            "<q xmlns='urn:example:refuses'/></iq> -> service-unavailable",
        ]

    run_im(run_async, redis_client, scenario)


def test_contact_configuration(tmp_path: Path) -> None:
    """The [contact] section takes lists of URIs, from the file or comma-separated from the
    environment; anything that is not a URI is refused with a readable problem."""
    path = tmp_path / "switchboard.toml"
    path.write_text('[contact]\nadmin = ["mailto:xmpp@example.com", "xmpp:admin@example.com"]\n')
    config = load_config(str(path), env={"SWITCHBOARD_CONTACT_ABUSE": "mailto:a@x, xmpp:b@x"})
    assert config.contact.admin == ["mailto:xmpp@example.com", "xmpp:admin@example.com"]
    assert config.contact.abuse == ["mailto:a@x", "xmpp:b@x"]
    assert config.contact.support == []
    path.write_text('[contact]\nsupport = ["support at example"]\nsales = "mailto:s@x"\n')
    try:
        load_config(str(path), env={})
    except ConfigError as e:
        problems = "\n".join(e.problems)
    else:
        raise AssertionError("a bad [contact] section was accepted")
    assert "contact.support" in problems and "not a URI" in problems
    assert "contact.sales" in problems and "list of strings" in problems
