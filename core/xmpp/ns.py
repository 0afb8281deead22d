"""XML namespaces and qualified names used across Switchboard (RFC 6120, RFC 6121, XEPs).

Names are Clark notation (``{namespace}local``) as lxml uses them.
"""

from typing import cast

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_SERVER = "jabber:server"
NS_COMPONENT = "jabber:component:accept"
NS_DIALBACK = "jabber:server:dialback"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_XML = "http://www.w3.org/XML/1998/namespace"

NS_ROSTER = "jabber:iq:roster"
NS_ROSTER_VER = "urn:xmpp:features:rosterver"
NS_PREAPPROVAL = "urn:xmpp:features:pre-approval"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PING = "urn:xmpp:ping"
NS_VERSION = "jabber:iq:version"
NS_LAST = "jabber:iq:last"
NS_DELAY = "urn:xmpp:delay"
NS_OFFLINE = "msgoffline"
NS_PRIVACY = "jabber:iq:privacy"
NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
NS_VCARD = "vcard-temp"
NS_DATA = "jabber:x:data"
NS_MUC = "http://jabber.org/protocol/muc"


def qn(ns: str, local: str) -> str:
    """The Clark name of ``local`` in ``ns``."""
    return f"{{{ns}}}{local}"


def default_ns(ns: str) -> dict[str, str]:
    """An lxml ``nsmap`` that declares ``ns`` as the default namespace (``xmlns='...'``).

    lxml takes None as the prefix of the default namespace; lxml-stubs type ``nsmap`` as
    ``Mapping[str, str]`` and would refuse it, so the one cast for that is here."""
    return cast("dict[str, str]", {None: ns})


QN_STREAM = qn(NS_STREAMS, "stream")
QN_STREAM_FEATURES = qn(NS_STREAMS, "features")
QN_STREAM_ERROR = qn(NS_STREAMS, "error")

# Stanzas in the three content namespaces.
QN_MESSAGE = qn(NS_CLIENT, "message")
QN_PRESENCE = qn(NS_CLIENT, "presence")
QN_IQ = qn(NS_CLIENT, "iq")

QN_STARTTLS = qn(NS_TLS, "starttls")
QN_TLS_PROCEED = qn(NS_TLS, "proceed")
QN_TLS_FAILURE = qn(NS_TLS, "failure")
QN_TLS_REQUIRED = qn(NS_TLS, "required")

QN_SASL_MECHANISMS = qn(NS_SASL, "mechanisms")
QN_SASL_MECHANISM = qn(NS_SASL, "mechanism")
QN_SASL_AUTH = qn(NS_SASL, "auth")
QN_SASL_RESPONSE = qn(NS_SASL, "response")
QN_SASL_CHALLENGE = qn(NS_SASL, "challenge")
QN_SASL_SUCCESS = qn(NS_SASL, "success")
QN_SASL_FAILURE = qn(NS_SASL, "failure")
QN_SASL_ABORT = qn(NS_SASL, "abort")

QN_BIND = qn(NS_BIND, "bind")
QN_BIND_RESOURCE = qn(NS_BIND, "resource")
QN_BIND_JID = qn(NS_BIND, "jid")
QN_SESSION = qn(NS_SESSION, "session")

QN_PING = qn(NS_PING, "ping")
QN_VERSION_QUERY = qn(NS_VERSION, "query")
QN_DISCO_INFO = qn(NS_DISCO_INFO, "query")
QN_DISCO_ITEMS = qn(NS_DISCO_ITEMS, "query")
QN_ROSTER_QUERY = qn(NS_ROSTER, "query")
QN_DELAY = qn(NS_DELAY, "delay")

QN_XML_LANG = qn(NS_XML, "lang")
