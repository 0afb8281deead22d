"""The stream header: what each end of an XMPP stream sends and checks (RFC 6120 §4.7, §4.8).

One writer and one check for every kind of stream: client streams (``jabber:client``), server
streams (``jabber:server``, with the dialback namespace of XEP-0220 §2.4.1 declared) and
component streams (``jabber:component:accept``, XEP-0114 §3, which carry no version).
"""

from __future__ import annotations

from core.xmpp.errors import StreamError
from core.xmpp.ns import NS_STREAMS, QN_STREAM
from core.xmpp.parser import StreamOpen

# RFC 6120 §4.4: the end of the stream, sent before the connection closes.
STREAM_CLOSE = b"</stream:stream>"


def xml_attr(value: str) -> str:
    """``value`` escaped for an attribute quoted with ``'`` (XML 1.0 §2.3, AttValue)."""
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace("'", "&apos;")
        .replace('"', "&quot;")
    )


def header_bytes(
    content_ns: str,
    *,
    frm: str | None = None,
    to: str | None = None,
    stream_id: str | None = None,
    version: str | None = "1.0",
    lang: str | None = "en",
    extra_ns: dict[str, str] | None = None,
) -> bytes:
    """The XML declaration and ``<stream:stream>`` start tag (RFC 6120 §4.7).

    ``content_ns`` is the default namespace (§4.8.2); ``extra_ns`` maps further prefixes to
    namespaces (``{"db": NS_DIALBACK}``). Attributes that are None or empty are left out:
    XEP-0114 streams have neither ``version`` nor ``xml:lang``."""
    parts = [f"xmlns='{content_ns}'"]
    if extra_ns:
        parts.extend(f"xmlns:{prefix}='{ns}'" for prefix, ns in extra_ns.items())
    parts.append(f"xmlns:stream='{NS_STREAMS}'")
    for name, value in (
        ("from", frm),
        ("to", to),
        ("id", stream_id),
        ("version", version),
        ("xml:lang", lang),
    ):
        if value:
            parts.append(f"{name}='{xml_attr(value)}'")
    return f"<?xml version='1.0'?><stream:stream {' '.join(parts)}>".encode()


def check_header(
    ev: StreamOpen,
    content_ns: str,
    *,
    prefix_required: bool = True,
    version_required: bool = True,
) -> None:
    """Raise the StreamError for a stream header that is not ``<stream:stream>`` with
    ``content_ns`` as its content namespace (RFC 6120 §4.8, §4.9.3), and, where required, the
    ``stream`` prefix declared (§4.8.5) and a version 1.x (§4.7.5)."""
    if ev.tag != QN_STREAM:
        if ev.tag.endswith("}stream") or ev.tag == "stream":
            raise StreamError("invalid-namespace", "the stream element must be in " + NS_STREAMS)
        raise StreamError("invalid-xml", "the root element must be <stream:stream/>")
    if prefix_required and ev.prefix is None:
        raise StreamError("bad-namespace-prefix", "the stream element needs a namespace prefix")
    if ev.nsmap.get(None) != content_ns:
        raise StreamError("invalid-namespace", "the content namespace must be " + content_ns)
    if version_required:
        # §4.7.5: a missing version means 0.9, which has neither TLS nor stream features.
        major = ev.attrs.get("version", "0.9").split(".", 1)[0]
        if not major.isdigit() or int(major) != 1:
            raise StreamError("unsupported-version", "this server speaks XMPP 1.0")
