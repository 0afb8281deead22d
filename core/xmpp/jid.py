"""XMPP addresses (JIDs) of RFC 7622, prepared with the PRECIS profiles of RFC 8265."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import idna
from precis_i18n import get_profile

__all__ = ["JID", "JIDError", "parse_jid", "prep_domain", "prep_local", "prep_resource"]

# RFC 7622 §3.2, §3.3, §3.4: each part is 1 to 1023 octets of UTF-8 after preparation.
MAX_PART_BYTES = 1023

# No preparation step of RFC 8265 or RFC 5895 turns more than four code points into one
# (the longest canonical decomposition is four), so longer input cannot fit once prepared.
# Refusing it early keeps hostile input away from the expensive PRECIS and IDNA code.
_MAX_INPUT_CHARS = 4 * MAX_PART_BYTES

# RFC 7622 §3.3.1: disallowed in a localpart although the IdentifierClass allows them.
_LOCAL_FORBIDDEN = frozenset("\"&'/:<>@")

_LOCAL_FORBIDDEN_RE = re.compile("[\"&'/:<>@]")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
_PRINTABLE_ASCII_OR_SPACE = re.compile(r"[\x20-\x7e]+")

_USERNAME = get_profile("UsernameCaseMapped")
_OPAQUE = get_profile("OpaqueString")

# RFC 5890 §2.3.1, RFC 1123 §2.1: an LDH label, no hyphen at either end, at most 63 octets.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# RFC 5895 §2 step 4: the dots that separate labels.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


class JIDError(ValueError):
    """A string is not a valid JID or JID part (stanza error ``jid-malformed``)."""


def _check_length(part: str, what: str) -> None:
    # RFC 7622 §3.2, §3.3, §3.4: 1..1023 octets; a code point is at least one octet.
    if not part:
        raise JIDError(f"{what} is empty")
    if len(part) > MAX_PART_BYTES or (
        not part.isascii() and len(part.encode("utf-8")) > MAX_PART_BYTES
    ):
        raise JIDError(f"{what} is longer than {MAX_PART_BYTES} bytes")


def _check_input(s: str, what: str) -> None:
    if not s:
        raise JIDError(f"{what} is empty")
    if len(s) > _MAX_INPUT_CHARS:
        raise JIDError(f"{what} is longer than {MAX_PART_BYTES} bytes")


def _precis_error(what: str, err: UnicodeError) -> JIDError:
    if isinstance(err, UnicodeEncodeError) and err.start < len(err.object):
        char = err.object[err.start]
        return JIDError(f"{what} has disallowed character U+{ord(char):04X} ({err.reason})")
    reason = getattr(err, "reason", str(err))
    return JIDError(f"{what} is invalid ({reason})")


# -- localpart ---------------------------------------------------------------------------


def _prep_local_precis(s: str) -> str:
    """The full RFC 7622 §3.3 enforcement, without the ASCII shortcut."""
    try:
        out: str = _USERNAME.enforce(s)
    except UnicodeError as err:
        raise _precis_error("localpart", err) from None
    # RFC 7622 §3.3.1: checked after mapping, as width mapping turns U+FF20 into '@'.
    bad = _LOCAL_FORBIDDEN.intersection(out)
    if bad:
        raise JIDError(f"localpart has disallowed character {min(bad)!r}")
    _check_length(out, "localpart")
    return out


def _prep_local_ascii(s: str) -> str | None:
    """Enforce an ASCII localpart, or return None when the full profile must decide."""
    # RFC 8264 §9.11: printable ASCII (U+0021..U+007E) is PVALID in the IdentifierClass;
    # on it width mapping, NFC and the bidi rule of RFC 8265 §3.3 change nothing, and case
    # mapping is plain ASCII lowercasing.
    if _PRINTABLE_ASCII.fullmatch(s) is None:
        return None
    bad = _LOCAL_FORBIDDEN_RE.search(s)
    if bad is not None:
        raise JIDError(f"localpart has disallowed character {bad.group()!r}")
    _check_length(s, "localpart")
    return s.lower()


def prep_local(s: str) -> str:
    """Enforce a localpart: UsernameCaseMapped (RFC 8265 §3.3) plus RFC 7622 §3.3.1."""
    _check_input(s, "localpart")
    if s.isascii():
        out = _prep_local_ascii(s)
        if out is not None:
            return out
    return _prep_local_precis(s)


# -- resourcepart ------------------------------------------------------------------------


def _prep_resource_precis(s: str) -> str:
    """The full RFC 7622 §3.4 enforcement, without the ASCII shortcut."""
    try:
        out: str = _OPAQUE.enforce(s)
    except UnicodeError as err:
        raise _precis_error("resourcepart", err) from None
    _check_length(out, "resourcepart")
    return out


def prep_resource(s: str) -> str:
    """Enforce a resourcepart: the OpaqueString profile (RFC 8265 §4.2)."""
    _check_input(s, "resourcepart")
    # RFC 8265 §4.2: OpaqueString maps nothing in ASCII and the FreeformClass allows
    # U+0020..U+007E anywhere (leading, trailing or only spaces included); other ASCII is
    # a control character, which the full profile refuses with a precise message.
    if _PRINTABLE_ASCII_OR_SPACE.fullmatch(s) is not None:
        _check_length(s, "resourcepart")
        return s
    return _prep_resource_precis(s)


# -- domainpart --------------------------------------------------------------------------


def _map_domain(s: str) -> str:
    """RFC 5895 §2: lowercase, width-map, NFC, and map the label separators to '.'."""
    s = s.lower()
    if not s.isascii():
        s = "".join(
            unicodedata.normalize("NFKC", ch)
            if unicodedata.decomposition(ch).startswith(("<wide>", "<narrow>"))
            else ch
            for ch in s
        )
        s = unicodedata.normalize("NFC", s).translate(_DOTS)
    return s


def _prep_label(label: str) -> str:
    if not label:
        raise JIDError("domainpart has an empty label")
    if label.isascii():
        if label[2:4] == "--":
            if label.startswith("xn--"):
                # RFC 7622 §3.2.1: an A-label is converted to its U-label.
                try:
                    return str(idna.ulabel(label))
                except (idna.IDNAError, UnicodeError) as err:
                    raise JIDError(f"domainpart has an invalid A-label ({err})") from None
            # RFC 5891 §4.2.3.1: '--' in the third and fourth positions is reserved.
            raise JIDError("domainpart label has '--' in the third and fourth positions")
        if _LDH_LABEL.fullmatch(label) is None:
            if len(label) > 63:
                raise JIDError("domainpart label is longer than 63 bytes")
            if label[0] == "-" or label[-1] == "-":
                raise JIDError("domainpart label starts or ends with a hyphen")
            bad = next((ch for ch in label if not (ch.isalnum() or ch == "-")), label[0])
            raise JIDError(f"domainpart has disallowed character U+{ord(bad):04X}")
        return label
    try:
        # RFC 5891 §5.4 and RFC 5893: code points, contextual rules, hyphens, bidi.
        idna.check_label(label)
    except (idna.IDNAError, UnicodeError) as err:
        raise JIDError(f"domainpart label is not a valid U-label ({err})") from None
    # RFC 5890 §2.3.2.1: the A-label form must fit in 63 octets.
    if len(label.encode("punycode")) + 4 > 63:
        raise JIDError("domainpart label is longer than 63 bytes as an A-label")
    return label


def _prep_ip_literal(s: str) -> str:
    # RFC 7622 §3.2: an IP-literal of RFC 3986 §3.2.2, written in the form of RFC 5952.
    inner = s[1:-1]
    if not s.endswith("]") or "%" in inner:
        raise JIDError("domainpart is not a valid IPv6 literal")
    try:
        addr = ipaddress.IPv6Address(inner)
    except ValueError:
        raise JIDError("domainpart is not a valid IPv6 literal") from None
    if addr.ipv4_mapped is not None:
        # RFC 5952 §5: an IPv4-mapped address keeps its dotted quad.
        return f"[::ffff:{addr.ipv4_mapped}]"
    return f"[{addr.compressed}]"


def prep_domain(s: str) -> str:
    """Enforce a domainpart (RFC 7622 §3.2): an IP literal, IPv4 address or IDN in U-labels."""
    _check_input(s, "domainpart")
    s = _map_domain(s)
    # RFC 7622 §3.2: one trailing label separator is stripped.
    if s.endswith("."):
        s = s[:-1]
    if not s:
        raise JIDError("domainpart is empty")
    if s[0] == "[":
        return _prep_ip_literal(s)
    labels = s.split(".")
    if labels[-1].isdigit() and labels[-1].isascii():
        # RFC 3986 §3.2.2 IPv4address; no top-level domain is all digits (RFC 3696 §2).
        try:
            return str(ipaddress.IPv4Address(s))
        except ValueError:
            raise JIDError("domainpart is not a valid IPv4 address") from None
    if s.isascii() and "--" not in s and all(_LDH_LABEL.fullmatch(lb) for lb in labels):
        out = s
    else:
        out = ".".join([_prep_label(lb) for lb in labels])
    _check_length(out, "domainpart")
    return out


# -- JID ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JID:
    """An address of RFC 7622; build it with `parse`/`parse_jid`, or from prepared parts."""

    local: str | None
    domain: str
    resource: str | None

    @classmethod
    def parse(cls, text: str) -> JID:
        """Split and enforce `text`, raising JIDError when it is not a valid JID."""
        # RFC 7622 §3.1: the resourcepart follows the first '/', the localpart precedes the
        # first '@' before it; each part that is present must be non-empty.
        head, slash, resource = text.partition("/")
        local, at, domain = head.partition("@")
        if not at:
            domain = head
        return cls(
            prep_local(local) if at else None,
            prep_domain(domain),
            prep_resource(resource) if slash else None,
        )

    @property
    def bare(self) -> JID:
        """This JID without its resourcepart."""
        if self.resource is None:
            return self
        return JID(self.local, self.domain, None)

    @property
    def is_bare(self) -> bool:
        """True when there is no resourcepart."""
        return self.resource is None

    def with_resource(self, resource: str) -> JID:
        """This JID with its resourcepart set to `resource`, enforced (RFC 7622 §3.4)."""
        return JID(self.local, self.domain, prep_resource(resource))

    def __str__(self) -> str:
        out = self.domain
        if self.local is not None:
            out = f"{self.local}@{out}"
        if self.resource is not None:
            out = f"{out}/{self.resource}"
        return out


@lru_cache(maxsize=65536)
def parse_jid(text: str) -> JID:
    """`JID.parse` with a cache: the same addresses arrive on stanza after stanza."""
    return JID.parse(text)
