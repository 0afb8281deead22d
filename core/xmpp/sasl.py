"""SASL mechanisms for stream authentication (RFC 6120 §6).

SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677) with their -PLUS variants, which bind the
exchange to the TLS channel through tls-exporter (RFC 9266) or tls-server-end-point (RFC 5929),
and PLAIN (RFC 4616). Strings are prepared with the PRECIS OpaqueString profile (RFC 8265 §4.2),
the successor of SASLprep (RFC 4013).

Server side for the core, client side for tests and load generation. This is protocol logic
only: no I/O; credential lookups and password checks are async callables given by the caller,
and the caller base64-encodes and decodes the payloads of the <auth/>, <challenge/>,
<response/> and <success/> elements.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from precis_i18n import get_profile

# SCRAM hash name -> the hashlib algorithm name (for hashlib.new, hmac.digest, pbkdf2_hmac).
HASHES: dict[str, str] = {"sha1": "sha1", "sha256": "sha256"}

# RFC 7677 §4: an iteration count of at least 4096.
DEFAULT_ITERATIONS = 4096
SALT_LENGTH = 16

# RFC 9266 §2: the exporter label; 32 bytes of keying material with an empty context.
TLS_EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
TLS_EXPORTER_LENGTH = 32

# RFC 6120 §6.5: the defined SASL failure conditions.
SASL_CONDITIONS = frozenset(
    {
        "aborted",
        "account-disabled",
        "credentials-expired",
        "encryption-required",
        "incorrect-encoding",
        "invalid-authzid",
        "invalid-mechanism",
        "malformed-request",
        "mechanism-too-weak",
        "not-authorized",
        "temporary-auth-failure",
    }
)

# Mechanism name -> (hash name, channel binding), in order of preference.
_SCRAM_MECHANISMS: dict[str, tuple[str, bool]] = {
    "SCRAM-SHA-256-PLUS": ("sha256", True),
    "SCRAM-SHA-1-PLUS": ("sha1", True),
    "SCRAM-SHA-256": ("sha256", False),
    "SCRAM-SHA-1": ("sha1", False),
}
_MECHANISM_HASH_NAMES = {"sha1": "SHA-1", "sha256": "SHA-256"}

# RFC 5802 §7 grammar.
_PRINTABLE_RE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # c-nonce / s-nonce
_CB_NAME_RE = re.compile(r"[A-Za-z0-9.\-]+")
_EXTENSION_RE = re.compile(r"[A-Za-z]=[^\x00]+")
_POSIT_NUMBER_RE = re.compile(r"[1-9][0-9]*")
_SASLNAME_ESCAPE_RE = re.compile(r"=(2C|3D)")
_BAD_SASLNAME_ESCAPE_RE = re.compile(r"=(?!2C|3D)")

_OPAQUE_STRING = get_profile("OpaqueString")
_USERNAME_CASE_MAPPED = get_profile("UsernameCaseMapped")

# Keys the fake salts given for unknown users; see _fake_credentials.
_FAKE_SALT_SECRET = secrets.token_bytes(32)


class SaslFailure(Exception):
    """An authentication failure, sent as <failure/> with an RFC 6120 §6.5 condition."""

    condition: str
    text: str | None

    def __init__(self, condition: str, text: str | None = None) -> None:
        if condition not in SASL_CONDITIONS:
            raise ValueError(f"unknown SASL failure condition {condition!r}")
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text


@dataclass(slots=True)
class Challenge:
    """Send <challenge/> with this data and wait for the next <response/>."""

    data: bytes


@dataclass(slots=True)
class Success:
    """Authentication succeeded: send <success/> with ``data`` (RFC 6120 §6.4.6)."""

    username: str
    data: bytes | None
    authzid: str | None


# What ScramCredentials.from_dict reads: to_dict's output, or a Redis hash with bytes keys.
StoredCredentials = (
    Mapping[str, str | bytes] | Mapping[bytes, str | bytes] | Mapping[str | bytes, str | bytes]
)


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server stores for one user and hash (RFC 5802 §3): never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def to_dict(self) -> dict[str, str]:
        return {
            "salt": _b64(self.salt),
            "iterations": str(self.iterations),
            "stored_key": _b64(self.stored_key),
            "server_key": _b64(self.server_key),
        }

    @classmethod
    def from_dict(cls, d: StoredCredentials) -> ScramCredentials:
        """Read what ``to_dict`` wrote, with str or bytes keys and values (as Redis returns)."""
        values = {_text(k): _text(v) for k, v in d.items()}
        try:
            creds = cls(
                salt=base64.b64decode(values["salt"], validate=True),
                iterations=int(values["iterations"]),
                stored_key=base64.b64decode(values["stored_key"], validate=True),
                server_key=base64.b64decode(values["server_key"], validate=True),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError("malformed stored SCRAM credentials") from exc
        if creds.iterations < 1:
            raise ValueError("malformed stored SCRAM credentials")
        return creds


CredentialLookup = Callable[[str, str], Awaitable[ScramCredentials | None]]
PasswordCheck = Callable[[str, str], Awaitable[bool]]


class ServerMechanism(Protocol):
    """One authentication exchange on the server side."""

    name: str

    async def step(self, data: bytes | None) -> Challenge | Success:
        """Process the client's data (None: no initial response); raise SaslFailure."""
        ...


def saslprep(s: str) -> str:
    """Prepare a password or SASL name with the OpaqueString profile (RFC 8265 §4.2)."""
    try:
        return _OPAQUE_STRING.enforce(s)
    except UnicodeError as exc:
        # The reason names the rule (e.g. "DISALLOWED/controls"), never the string itself.
        reason = exc.reason if isinstance(exc, UnicodeEncodeError) else "invalid"
        raise ValueError(f"string not allowed by OpaqueString: {reason}") from None


def derive_scram_credentials(
    password: str,
    hash_name: str,
    *,
    salt: bytes | None = None,
    iterations: int = DEFAULT_ITERATIONS,
) -> ScramCredentials:
    """Compute the stored credentials for a password (RFC 5802 §3). Slow: run it in a thread."""
    _check_hash(hash_name)
    if iterations < 1:
        raise ValueError("iterations must be positive")
    if salt is None:
        salt = secrets.token_bytes(SALT_LENGTH)
    _client_key, stored_key, server_key = _scram_keys(
        hash_name, _salted_password(hash_name, password, salt, iterations)
    )
    return ScramCredentials(salt, iterations, stored_key, server_key)


def verify_password(password: str, hash_name: str, creds: ScramCredentials) -> bool:
    """Check a plaintext password (from PLAIN) against stored SCRAM credentials. Slow."""
    _check_hash(hash_name)
    try:
        salted = _salted_password(hash_name, password, creds.salt, creds.iterations)
    except ValueError:
        return False
    _client_key, stored_key, _server_key = _scram_keys(hash_name, salted)
    return hmac.compare_digest(stored_key, creds.stored_key)


def server_mechanism_names(
    *,
    tls: bool,
    channel_bindings: Mapping[str, bytes],
    allow_plain_without_tls: bool = False,
) -> list[str]:
    """The mechanisms to offer in <mechanisms/>, most preferred first."""
    names = [
        name for name, (_hash, plus) in _SCRAM_MECHANISMS.items() if not plus or channel_bindings
    ]
    # RFC 6120 §6.4.1 and §13.9.4: PLAIN only over a protected stream.
    if tls or allow_plain_without_tls:
        names.append("PLAIN")
    return names


def create_server_mechanism(
    name: str,
    *,
    lookup: CredentialLookup,
    check: PasswordCheck,
    channel_bindings: Mapping[str, bytes],
    tls: bool,
    allow_plain_without_tls: bool = False,
    server_nonce: str | None = None,
) -> ServerMechanism:
    """Start the exchange for the mechanism the client chose in <auth/>.

    ``channel_bindings`` maps a channel-binding type ("tls-exporter", "tls-server-end-point")
    to this connection's data. ``server_nonce`` fixes the SCRAM server nonce, for test vectors.
    """
    if name == "PLAIN" and not (tls or allow_plain_without_tls):
        # RFC 6120 §6.5.4
        raise SaslFailure("encryption-required")
    offered = server_mechanism_names(
        tls=tls, channel_bindings=channel_bindings, allow_plain_without_tls=allow_plain_without_tls
    )
    if name not in offered:
        # RFC 6120 §6.5.7
        raise SaslFailure("invalid-mechanism")
    if name == "PLAIN":
        return PlainServer(check)
    hash_name, plus = _SCRAM_MECHANISMS[name]
    return ScramServer(
        name,
        hash_name,
        plus=plus,
        lookup=lookup,
        channel_bindings=channel_bindings,
        server_nonce=server_nonce,
    )


# Exchange states shared by the server mechanisms.
_FIRST = "first"
_FINAL = "final"
_DONE = "done"


class ScramServer:
    """The server side of SCRAM-SHA-* and SCRAM-SHA-*-PLUS (RFC 5802 §5, §6, §7)."""

    def __init__(
        self,
        name: str,
        hash_name: str,
        *,
        plus: bool,
        lookup: CredentialLookup,
        channel_bindings: Mapping[str, bytes],
        server_nonce: str | None = None,
    ) -> None:
        _check_hash(hash_name)
        self.name = name
        self._hash = hash_name
        self._plus = plus
        self._lookup = lookup
        self._channel_bindings = dict(channel_bindings)
        self._server_nonce = server_nonce
        self._state = _FIRST
        self._asked_first = False
        self._known_user = False
        self._username = ""
        self._authzid: str | None = None
        self._cbind_input = b""
        self._nonce = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._creds: ScramCredentials | None = None

    async def step(self, data: bytes | None) -> Challenge | Success:
        # Any failure, and any exception from the lookup, ends the exchange.
        state, self._state = self._state, _DONE
        if state == _FIRST:
            if data is None and not self._asked_first:
                # RFC 6120 §6.4.2: no initial response, so an empty challenge asks for it.
                self._asked_first = True
                self._state = _FIRST
                return Challenge(b"")
            if data is None:
                raise SaslFailure("malformed-request", "expected client-first-message")
            return await self._client_first(data)
        if state == _FINAL:
            if data is None:
                raise SaslFailure("malformed-request", "expected client-final-message")
            return self._client_final(data)
        raise SaslFailure("malformed-request", "the exchange is over")

    async def _client_first(self, data: bytes) -> Challenge:
        text = _utf8(data)
        # RFC 5802 §7: gs2-header = gs2-cbind-flag "," [authzid] ","
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise SaslFailure("malformed-request", "missing GS2 header")
        flag, authz, bare = parts
        cb_name: str | None = None
        if flag.startswith("p="):
            cb_name = flag[2:]
            if not _CB_NAME_RE.fullmatch(cb_name):
                raise SaslFailure("malformed-request", "bad channel binding name")
        elif flag not in ("n", "y"):
            raise SaslFailure("malformed-request", "bad channel binding flag")
        if authz:
            if not authz.startswith("a="):
                raise SaslFailure("malformed-request", "bad authorization identity")
            self._authzid = _decode_saslname(authz[2:])

        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            # RFC 5802 §5.1: fail on a mandatory extension we do not support.
            raise SaslFailure("not-authorized", "extensions-not-supported")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise SaslFailure("malformed-request", "expected username and nonce")
        username = _decode_saslname(attrs[0][2:])
        client_nonce = attrs[1][2:]
        if not _PRINTABLE_RE.fullmatch(client_nonce):
            raise SaslFailure("malformed-request", "bad nonce")
        _check_extensions(attrs[2:])

        # RFC 5802 §6: channel binding negotiation.
        cb_data = b""
        if self._plus:
            if cb_name is None:
                raise SaslFailure("malformed-request", "-PLUS requires channel binding")
            if cb_name not in self._channel_bindings:
                raise SaslFailure("not-authorized", "unsupported-channel-binding-type")
            cb_data = self._channel_bindings[cb_name]
        elif cb_name is not None:
            raise SaslFailure("malformed-request", "channel binding requires a -PLUS mechanism")
        elif flag == "y" and self._channel_bindings:
            # The client thinks we cannot bind, yet we offered -PLUS: someone removed it.
            raise SaslFailure("not-authorized", "server-does-support-channel-binding")
        self._cbind_input = f"{flag},{authz},".encode() + cb_data

        creds = await self._credentials(username)
        self._creds = creds
        # RFC 5802 §5.1: the server appends its own nonce; 18 random bytes, base64.
        server_nonce = self._server_nonce or _b64(secrets.token_bytes(18))
        self._nonce = client_nonce + server_nonce
        self._client_first_bare = bare
        self._server_first = f"r={self._nonce},s={_b64(creds.salt)},i={creds.iterations}"
        self._state = _FINAL
        return Challenge(self._server_first.encode())

    async def _credentials(self, username: str) -> ScramCredentials:
        try:
            prepared: str | None = saslprep(username)
        except ValueError:
            prepared = None
        creds = None
        if prepared is not None:
            self._username = prepared
            creds = await self._lookup(prepared, self._hash)
        self._known_user = creds is not None
        # RFC 5802 §9: answer an unknown user as if it existed, then fail at the proof.
        return creds if creds is not None else _fake_credentials(username, self._hash)

    def _client_final(self, data: bytes) -> Success:
        assert self._creds is not None
        text = _utf8(data)
        # RFC 5802 §7: client-final-message = client-final-message-without-proof "," proof
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep or "," in proof_b64:
            raise SaslFailure("malformed-request", "the proof must come last")
        attrs = without_proof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise SaslFailure("malformed-request", "expected channel binding and nonce")
        _check_extensions(attrs[2:])
        cbind_input = _b64decode(attrs[0][2:])
        proof = _b64decode(proof_b64)

        # RFC 5802 §6: c= carries the GS2 header and, for -PLUS, this channel's binding data.
        if not hmac.compare_digest(cbind_input, self._cbind_input):
            raise SaslFailure("not-authorized", "channel-bindings-dont-match")
        if attrs[1][2:] != self._nonce:
            raise SaslFailure("not-authorized", "nonce mismatch")

        # RFC 5802 §3: ClientKey = ClientProof XOR ClientSignature; StoredKey = H(ClientKey)
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        client_signature = _hmac(self._hash, self._creds.stored_key, auth_message)
        valid = len(proof) == len(client_signature) and hmac.compare_digest(
            _digest(self._hash, _xor(proof, client_signature)), self._creds.stored_key
        )
        if not (valid and self._known_user):
            raise SaslFailure("not-authorized")
        server_signature = _hmac(self._hash, self._creds.server_key, auth_message)
        return Success(self._username, b"v=" + _b64(server_signature).encode(), self._authzid)


class PlainServer:
    """The server side of PLAIN (RFC 4616 §2)."""

    name = "PLAIN"

    def __init__(self, check: PasswordCheck) -> None:
        self._check = check
        self._state = _FIRST
        self._asked = False

    async def step(self, data: bytes | None) -> Challenge | Success:
        state, self._state = self._state, _DONE
        if state != _FIRST:
            raise SaslFailure("malformed-request", "the exchange is over")
        if data is None:
            if self._asked:
                raise SaslFailure("malformed-request", "expected a response")
            # RFC 6120 §6.4.2: no initial response, so an empty challenge asks for it.
            self._asked = True
            self._state = _FIRST
            return Challenge(b"")
        # RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
        parts = _utf8(data).split("\0")
        if len(parts) != 3:
            raise SaslFailure("malformed-request", "expected authzid, authcid and password")
        authzid, authcid, password = parts
        if not authcid or not password:
            raise SaslFailure("malformed-request", "empty authcid or password")
        # RFC 4616 §4: a string that fails preparation fails verification.
        try:
            username = saslprep(authcid)
            password = saslprep(password)
        except ValueError:
            raise SaslFailure("not-authorized") from None
        if not await self._check(username, password):
            raise SaslFailure("not-authorized")
        return Success(username, None, authzid or None)


class ScramClient:
    """The client side of SCRAM-SHA-* and SCRAM-SHA-*-PLUS (RFC 5802 §5).

    With ``cb_type`` and ``plus_advertised`` the client binds to the channel (-PLUS, ``p=``);
    with ``cb_type`` alone it signals that it could bind but the server offered no -PLUS (``y``).
    """

    mechanism: str

    def __init__(
        self,
        hash_name: str,
        username: str,
        password: str,
        *,
        cb_type: str | None = None,
        cb_data: bytes | None = None,
        plus_advertised: bool = False,
        nonce: str | None = None,
    ) -> None:
        _check_hash(hash_name)
        self._hash = hash_name
        self._password = saslprep(password)
        self._nonce = nonce if nonce is not None else _b64(secrets.token_bytes(18))
        if not _PRINTABLE_RE.fullmatch(self._nonce):
            raise ValueError("the nonce must be printable ASCII without commas")
        plus = cb_type is not None and plus_advertised
        if cb_type is not None and plus_advertised:
            if cb_data is None:
                raise ValueError("channel binding needs cb_data")
            if not _CB_NAME_RE.fullmatch(cb_type):
                raise ValueError("bad channel binding type name")
            gs2_header, self._cb_data = f"p={cb_type},,", cb_data
        elif cb_type is not None:
            gs2_header, self._cb_data = "y,,", b""
        else:
            gs2_header, self._cb_data = "n,,", b""
        self._gs2_header = gs2_header
        suffix = "-PLUS" if plus else ""
        self.mechanism = f"SCRAM-{_MECHANISM_HASH_NAMES[hash_name]}{suffix}"
        # RFC 5802 §5.1: the client prepares the username, then escapes "," and "=".
        self._client_first_bare = f"n={_encode_saslname(saslprep(username))},r={self._nonce}"
        self._server_signature: bytes | None = None

    def first(self) -> bytes:
        """The client-first-message, sent as the initial response."""
        return (self._gs2_header + self._client_first_bare).encode()

    def respond(self, challenge: bytes) -> bytes:
        """Answer the server-first-message with the client-final-message."""
        if self._server_signature is not None:
            raise SaslFailure("malformed-request", "unexpected challenge")
        server_first = _utf8(challenge)
        attrs = server_first.split(",")
        if attrs[0].startswith("m="):
            raise SaslFailure("not-authorized", "extensions-not-supported")
        if len(attrs) < 3 or [a[:2] for a in attrs[:3]] != ["r=", "s=", "i="]:
            raise SaslFailure("malformed-request", "expected nonce, salt and iterations")
        _check_extensions(attrs[3:])
        nonce, iterations = attrs[0][2:], attrs[2][2:]
        if not _PRINTABLE_RE.fullmatch(nonce) or not _POSIT_NUMBER_RE.fullmatch(iterations):
            raise SaslFailure("malformed-request", "bad nonce or iteration count")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise SaslFailure("not-authorized", "the server did not extend our nonce")
        salt = _b64decode(attrs[1][2:])

        cbind = _b64((self._gs2_header).encode() + self._cb_data)
        without_proof = f"c={cbind},r={nonce}"
        auth_message = f"{self._client_first_bare},{server_first},{without_proof}".encode()
        salted = _salted_password(self._hash, self._password, salt, int(iterations))
        client_key, stored_key, server_key = _scram_keys(self._hash, salted)
        proof = _xor(client_key, _hmac(self._hash, stored_key, auth_message))
        self._server_signature = _hmac(self._hash, server_key, auth_message)
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify(self, success_data: bytes) -> None:
        """Check the server-final-message: the server must prove it knows our credentials."""
        if self._server_signature is None:
            raise SaslFailure("malformed-request", "no challenge answered yet")
        attrs = _utf8(success_data).split(",")
        if attrs[0].startswith("e="):
            raise SaslFailure("not-authorized", attrs[0][2:])
        if not attrs[0].startswith("v="):
            raise SaslFailure("malformed-request", "expected a verifier")
        if not hmac.compare_digest(_b64decode(attrs[0][2:]), self._server_signature):
            raise SaslFailure("not-authorized", "wrong server signature")


def plain_initial(username: str, password: str, authzid: str = "") -> bytes:
    """The PLAIN initial response (RFC 4616 §2); the server prepares the strings."""
    if "\0" in username + password + authzid:
        raise ValueError("PLAIN strings cannot contain NUL")
    return f"{authzid}\0{username}\0{password}".encode()


def tls_server_end_point(cert_der: bytes) -> bytes:
    """The tls-server-end-point channel binding of a DER certificate (RFC 5929 §4.1).

    Raises ValueError for signatures without a single hash (Ed25519, Ed448), for which
    RFC 5929 §4.1 leaves the binding undefined."""
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise ValueError("unsupported certificate signature algorithm") from exc
    if algorithm is None:
        raise ValueError("tls-server-end-point is undefined for this signature algorithm")
    # RFC 5929 §4.1: MD5 and SHA-1 are replaced by SHA-256.
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return digest.finalize()


def _check_hash(hash_name: str) -> None:
    if hash_name not in HASHES:
        raise ValueError(f"unsupported SCRAM hash {hash_name!r}")


def _salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    # RFC 5802 §3: SaltedPassword = Hi(Normalize(password), salt, i), Hi being PBKDF2.
    return hashlib.pbkdf2_hmac(HASHES[hash_name], saslprep(password).encode(), salt, iterations)


def _scram_keys(hash_name: str, salted_password: bytes) -> tuple[bytes, bytes, bytes]:
    """ClientKey, StoredKey and ServerKey (RFC 5802 §3)."""
    client_key = _hmac(hash_name, salted_password, b"Client Key")
    server_key = _hmac(hash_name, salted_password, b"Server Key")
    return client_key, _digest(hash_name, client_key), server_key


def _fake_credentials(username: str, hash_name: str) -> ScramCredentials:
    """Stable made-up credentials, so an unknown user looks like a known one.

    The salt depends only on the name, case-folded as account names are, so repeated tries
    and case variants see the same salt, just as for a real account."""
    try:
        key = _USERNAME_CASE_MAPPED.enforce(username)
    except UnicodeError:
        key = username
    seed = hmac.digest(_FAKE_SALT_SECRET, f"{hash_name}\0{key}".encode(), "sha256")
    return ScramCredentials(
        salt=seed[:SALT_LENGTH],
        iterations=DEFAULT_ITERATIONS,
        stored_key=_hmac(hash_name, seed, b"stored"),
        server_key=_hmac(hash_name, seed, b"server"),
    )


def _hmac(hash_name: str, key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, HASHES[hash_name])


def _digest(hash_name: str, data: bytes) -> bytes:
    return hashlib.new(HASHES[hash_name], data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        # RFC 6120 §6.5.5
        raise SaslFailure("incorrect-encoding") from None


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslFailure("malformed-request", "not UTF-8") from None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _decode_saslname(value: str) -> str:
    # RFC 5802 §7: saslname = 1*(value-safe-char / "=2C" / "=3D"); no other "=" escapes.
    if not value or "\0" in value or _BAD_SASLNAME_ESCAPE_RE.search(value):
        raise SaslFailure("malformed-request", "bad name")
    return _SASLNAME_ESCAPE_RE.sub(lambda m: "," if m[1] == "2C" else "=", value)


def _encode_saslname(value: str) -> str:
    return value.replace("=", "=3D").replace(",", "=2C")


def _check_extensions(attrs: list[str]) -> None:
    # RFC 5802 §7: extensions = attr-val *("," attr-val); optional ones are ignored.
    for attr in attrs:
        if not _EXTENSION_RE.fullmatch(attr):
            raise SaslFailure("malformed-request", "bad attribute")
