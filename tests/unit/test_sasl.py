"""Tests for the SASL mechanisms: SCRAM (RFC 5802, RFC 7677, RFC 9266, RFC 5929) and PLAIN."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import re
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from core.xmpp.sasl import (
    HASHES,
    TLS_EXPORTER_LABEL,
    Challenge,
    SaslFailure,
    ScramClient,
    ScramCredentials,
    ServerMechanism,
    Success,
    create_server_mechanism,
    derive_scram_credentials,
    plain_initial,
    saslprep,
    server_mechanism_names,
    tls_server_end_point,
    verify_password,
)

T = TypeVar("T")

EXPORTER = bytes(range(32))
END_POINT = hashlib.sha256(b"certificate").digest()
BINDINGS = {"tls-exporter": EXPORTER, "tls-server-end-point": END_POINT}
PASSWORD = "pencil"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never suspends, as the in-memory lookups here never do."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("coroutine suspended")


class Accounts:
    """In-memory credentials with lazily derived SCRAM keys, for both hashes."""

    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords
        self.creds: dict[tuple[str, str], ScramCredentials] = {}
        self.lookups: list[tuple[str, str]] = []

    def set(self, username: str, hash_name: str, creds: ScramCredentials) -> None:
        self.creds[username, hash_name] = creds

    async def lookup(self, username: str, hash_name: str) -> ScramCredentials | None:
        self.lookups.append((username, hash_name))
        if username not in self.passwords:
            return None
        if (username, hash_name) not in self.creds:
            self.creds[username, hash_name] = derive_scram_credentials(
                self.passwords[username], hash_name
            )
        return self.creds[username, hash_name]

    async def check(self, username: str, password: str) -> bool:
        return self.passwords.get(username) == password


@pytest.fixture
def accounts() -> Accounts:
    return Accounts({"user": PASSWORD, "a,b=c": "secret", "juliet": "r0m30"})


def server(
    accounts: Accounts,
    name: str,
    *,
    bindings: dict[str, bytes] | None = None,
    tls: bool = True,
    server_nonce: str | None = None,
) -> ServerMechanism:
    return create_server_mechanism(
        name,
        lookup=accounts.lookup,
        check=accounts.check,
        channel_bindings=BINDINGS if bindings is None else bindings,
        tls=tls,
        server_nonce=server_nonce,
    )


def failure(mech: ServerMechanism, data: bytes | None) -> SaslFailure:
    with pytest.raises(SaslFailure) as info:
        run(mech.step(data))
    return info.value


def challenge(mech: ServerMechanism, data: bytes | None) -> bytes:
    result = run(mech.step(data))
    assert isinstance(result, Challenge)
    return result.data


def scram_first(mech: ServerMechanism, username: str = "user", gs2: str = "n,,") -> bytes:
    """Send a client-first-message with a fixed nonce and return the server-first-message."""
    return challenge(mech, f"{gs2}n={username},r=abcdefgh".encode())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# RFC 5802 §5 and RFC 7677 §3: user "user", password "pencil".
SHA1_VECTOR = {
    "client_first": b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    "server_first": b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    "client_final": b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
    b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    "server_final": b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
}
SHA256_VECTOR = {
    "client_first": b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    "server_first": b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    "client_final": b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    "server_final": b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
}
VECTORS = [
    ("SCRAM-SHA-1", "sha1", SHA1_VECTOR, "fyko+d2lbbFgONRv9qkxdawL", "3rfcNHYJY1ZVvWVs7j"),
    (
        "SCRAM-SHA-256",
        "sha256",
        SHA256_VECTOR,
        "rOprNGfwEbeRWgbNEkqO",
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    ),
]


@pytest.mark.parametrize(("mechanism", "hash_name", "vector", "cnonce", "snonce"), VECTORS)
def test_server_reproduces_rfc_vector(
    accounts: Accounts,
    mechanism: str,
    hash_name: str,
    vector: dict[str, bytes],
    cnonce: str,
    snonce: str,
) -> None:
    """The server produces the RFC 5802 §5 / RFC 7677 §3 messages byte for byte."""
    salt = base64.b64decode(vector["server_first"].split(b",s=")[1].split(b",")[0])
    accounts.set("user", hash_name, derive_scram_credentials(PASSWORD, hash_name, salt=salt))
    mech = server(accounts, mechanism, bindings={}, server_nonce=snonce)
    assert challenge(mech, vector["client_first"]) == vector["server_first"]
    assert run(mech.step(vector["client_final"])) == Success("user", vector["server_final"], None)


@pytest.mark.parametrize(("mechanism", "hash_name", "vector", "cnonce", "snonce"), VECTORS)
def test_client_reproduces_rfc_vector(
    mechanism: str, hash_name: str, vector: dict[str, bytes], cnonce: str, snonce: str
) -> None:
    """The client produces the RFC 5802 §5 / RFC 7677 §3 messages and accepts the verifier."""
    client = ScramClient(hash_name, "user", PASSWORD, nonce=cnonce)
    assert client.mechanism == mechanism
    assert client.first() == vector["client_first"]
    assert client.respond(vector["server_first"]) == vector["client_final"]
    client.verify(vector["server_final"])


ROUND_TRIPS = [
    ("sha1", None, None),
    ("sha256", None, None),
    ("sha1", "tls-exporter", EXPORTER),
    ("sha256", "tls-exporter", EXPORTER),
    ("sha1", "tls-server-end-point", END_POINT),
    ("sha256", "tls-server-end-point", END_POINT),
]


@pytest.mark.parametrize(("hash_name", "cb_type", "cb_data"), ROUND_TRIPS)
def test_scram_round_trip(
    accounts: Accounts, hash_name: str, cb_type: str | None, cb_data: bytes | None
) -> None:
    """Client and server authenticate each other, with and without channel binding."""
    client = ScramClient(
        hash_name, "user", PASSWORD, cb_type=cb_type, cb_data=cb_data, plus_advertised=True
    )
    assert client.mechanism.endswith("-PLUS") == (cb_type is not None)
    mech = server(accounts, client.mechanism)
    result = run(mech.step(client.respond(challenge(mech, client.first()))))
    assert isinstance(result, Success)
    assert (result.username, result.authzid) == ("user", None)
    assert result.data is not None
    client.verify(result.data)


def test_scram_escaped_username(accounts: Accounts) -> None:
    """A username with "," and "=" travels escaped and the lookup sees it decoded."""
    client = ScramClient("sha256", "a,b=c", "secret")
    assert b"n=a=2Cb=3Dc," in client.first()
    mech = server(accounts, client.mechanism)
    result = run(mech.step(client.respond(challenge(mech, client.first()))))
    assert isinstance(result, Success)
    assert result.username == "a,b=c"
    assert accounts.lookups == [("a,b=c", "sha256")]


def test_scram_authzid_reported(accounts: Accounts) -> None:
    """The requested authorization identity comes back with Success for the caller to check."""
    creds = accounts.creds.setdefault(("user", "sha1"), derive_scram_credentials(PASSWORD, "sha1"))
    mech = server(accounts, "SCRAM-SHA-1", server_nonce="srv")
    gs2 = "n,a=admin=2Cx,"
    challenge(mech, f"{gs2}n=user,r=cli".encode())
    # Build the client-final by hand: ScramClient sends no authzid.
    auth_message = (
        f"n=user,r=cli,r=clisrv,s={b64(creds.salt)},i=4096,c={b64(gs2.encode())},r=clisrv"
    )
    salted = hashlib.pbkdf2_hmac("sha1", PASSWORD.encode(), creds.salt, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha1")
    signature = hmac.digest(hashlib.sha1(client_key).digest(), auth_message.encode(), "sha1")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    result = run(mech.step(f"c={b64(gs2.encode())},r=clisrv,p={b64(proof)}".encode()))
    assert isinstance(result, Success)
    assert result.authzid == "admin,x"


def test_scram_without_initial_response(accounts: Accounts) -> None:
    """With no initial response the server sends an empty challenge first (RFC 6120 §6.4.2)."""
    client = ScramClient("sha256", "user", PASSWORD)
    mech = server(accounts, client.mechanism)
    assert challenge(mech, None) == b""
    result = run(mech.step(client.respond(challenge(mech, client.first()))))
    assert isinstance(result, Success)


def test_scram_wrong_password(accounts: Accounts) -> None:
    """A proof from the wrong password fails with not-authorized."""
    client = ScramClient("sha256", "user", "pencil2")
    mech = server(accounts, client.mechanism)
    final = client.respond(challenge(mech, client.first()))
    assert failure(mech, final).condition == "not-authorized"


def test_unknown_user_looks_like_wrong_password(accounts: Accounts) -> None:
    """An unknown user gets a well-formed, stable salt and fails only at the proof, identically."""
    shape = re.compile(rb"r=abcdefgh[A-Za-z0-9+/]{24},s=[A-Za-z0-9+/]{22}==,i=4096")
    errors = []
    for username in ("user", "nobody"):
        mech = server(accounts, "SCRAM-SHA-256")
        first = scram_first(mech, username)
        assert shape.fullmatch(first)
        client = ScramClient("sha256", username, "wrong", nonce="abcdefgh")
        client.first()
        errors.append(failure(mech, client.respond(first)))
    assert [(e.condition, e.text) for e in errors] == [("not-authorized", None)] * 2

    def salt(username: str) -> bytes:
        return scram_first(server(accounts, "SCRAM-SHA-256"), username).split(b",")[1]

    assert salt("nobody") == salt("nobody") == salt("Nobody")
    assert salt("nobody") != salt("someone")


def test_unknown_user_with_right_looking_proof_fails(accounts: Accounts) -> None:
    """An unknown user never succeeds, whatever the password."""
    client = ScramClient("sha1", "ghost", PASSWORD)
    mech = server(accounts, client.mechanism)
    assert failure(mech, client.respond(challenge(mech, client.first()))).condition == (
        "not-authorized"
    )


def test_downgrade_detected(accounts: Accounts) -> None:
    """A "y" flag while the server offers -PLUS reveals a stripped mechanism list."""
    client = ScramClient("sha256", "user", PASSWORD, cb_type="tls-exporter", cb_data=EXPORTER)
    assert client.mechanism == "SCRAM-SHA-256"
    assert client.first().startswith(b"y,,")
    error = failure(server(accounts, client.mechanism), client.first())
    assert (error.condition, error.text) == (
        "not-authorized",
        "server-does-support-channel-binding",
    )


def test_y_flag_accepted_without_channel_binding(accounts: Accounts) -> None:
    """A "y" flag is fine when the server has no channel binding to offer."""
    client = ScramClient("sha1", "user", PASSWORD, cb_type="tls-exporter", cb_data=EXPORTER)
    mech = server(accounts, client.mechanism, bindings={}, tls=False)
    result = run(mech.step(client.respond(challenge(mech, client.first()))))
    assert isinstance(result, Success)


def test_channel_binding_mismatch(accounts: Accounts) -> None:
    """Binding data from another channel (a man in the middle) fails with not-authorized."""
    client = ScramClient(
        "sha256", "user", PASSWORD, cb_type="tls-exporter", cb_data=b"\0" * 32, plus_advertised=True
    )
    mech = server(accounts, client.mechanism)
    error = failure(mech, client.respond(challenge(mech, client.first())))
    assert (error.condition, error.text) == ("not-authorized", "channel-bindings-dont-match")


def test_gs2_header_must_match_c_attribute(accounts: Accounts) -> None:
    """The c= attribute must repeat the GS2 header of the first message."""
    mech = server(accounts, "SCRAM-SHA-256")
    first = scram_first(mech)
    nonce = first.split(b",")[0][2:].decode()
    error = failure(mech, f"c={b64(b'y,,')},r={nonce},p={b64(bytes(32))}".encode())
    assert error.condition == "not-authorized"


@pytest.mark.parametrize(
    ("mechanism", "gs2", "condition"),
    [
        ("SCRAM-SHA-256", "p=tls-exporter,,", "malformed-request"),
        ("SCRAM-SHA-256-PLUS", "n,,", "malformed-request"),
        ("SCRAM-SHA-256-PLUS", "y,,", "malformed-request"),
        ("SCRAM-SHA-256-PLUS", "p=tls-unique,,", "not-authorized"),
        ("SCRAM-SHA-1-PLUS", "p=bad_name,,", "malformed-request"),
    ],
)
def test_channel_binding_flag_refused(
    accounts: Accounts, mechanism: str, gs2: str, condition: str
) -> None:
    """The GS2 flag must fit the mechanism and name a binding this channel has."""
    assert failure(server(accounts, mechanism), f"{gs2}n=user,r=abc".encode()).condition == (
        condition
    )


@pytest.mark.parametrize(
    ("message", "condition"),
    [
        (b"", "malformed-request"),
        (b"\xff\xfe", "malformed-request"),
        (b"n=user,r=abc", "malformed-request"),
        (b"x,,n=user,r=abc", "malformed-request"),
        (b"n,b=x,n=user,r=abc", "malformed-request"),
        (b"n,a=,n=user,r=abc", "malformed-request"),
        (b"n,a=x=40y,n=user,r=abc", "malformed-request"),
        (b"n,,n=us=2cer,r=abc", "malformed-request"),
        (b"n,,n=us=41er,r=abc", "malformed-request"),
        (b"n,,n=,r=abc", "malformed-request"),
        (b"n,,r=abc,n=user", "malformed-request"),
        (b"n,,n=user", "malformed-request"),
        (b"n,,n=user,r=", "malformed-request"),
        (b"n,,n=user,r=a b", "malformed-request"),
        (b"n,,n=user,r=abc,bad", "malformed-request"),
        (b"n,,m=ext,n=user,r=abc", "not-authorized"),
    ],
)
def test_malformed_client_first(accounts: Accounts, message: bytes, condition: str) -> None:
    """A client-first-message outside the RFC 5802 §7 grammar is refused."""
    assert failure(server(accounts, "SCRAM-SHA-1"), message).condition == condition


@pytest.mark.parametrize(
    ("template", "condition"),
    [
        ("c=biws,r={nonce}", "malformed-request"),
        ("r={nonce},c=biws,p={proof}", "malformed-request"),
        ("c=biws,r={nonce},p={proof},x=y", "malformed-request"),
        ("c=biws,r={nonce},bad,p={proof}", "malformed-request"),
        ("c=b!ws,r={nonce},p={proof}", "incorrect-encoding"),
        ("c=biws,r={nonce},p=AAA", "incorrect-encoding"),
        ("c=biws,r={nonce}x,p={proof}", "not-authorized"),
        ("c=biws,r=abcdefgh,p={proof}", "not-authorized"),
        ("c=biws,r={nonce},p=AAAA", "not-authorized"),
        ("c=biws,r={nonce},x=ignored,p={proof}", "not-authorized"),
    ],
)
def test_malformed_client_final(accounts: Accounts, template: str, condition: str) -> None:
    """A bad client-final-message is refused with the matching RFC 6120 §6.5 condition."""
    mech = server(accounts, "SCRAM-SHA-1")
    nonce = scram_first(mech).split(b",")[0][2:].decode()
    message = template.format(nonce=nonce, proof=b64(bytes(20)))
    assert failure(mech, message.encode()).condition == condition


def test_scram_steps_out_of_order(accounts: Accounts) -> None:
    """Data after the end of the exchange, or a missing response, is a malformed request."""
    client = ScramClient("sha256", "user", PASSWORD)
    mech = server(accounts, client.mechanism)
    assert isinstance(run(mech.step(client.respond(challenge(mech, client.first())))), Success)
    assert failure(mech, b"more").condition == "malformed-request"
    assert failure(mech, None).condition == "malformed-request"

    mech = server(accounts, "SCRAM-SHA-256")
    scram_first(mech)
    assert failure(mech, None).condition == "malformed-request"

    mech = server(accounts, "SCRAM-SHA-256")
    assert challenge(mech, None) == b""
    assert failure(mech, None).condition == "malformed-request"


def test_scram_failure_ends_exchange(accounts: Accounts) -> None:
    """After a failure the mechanism accepts nothing more."""
    mech = server(accounts, "SCRAM-SHA-1")
    assert failure(mech, b"garbage").condition == "malformed-request"
    client = ScramClient("sha1", "user", PASSWORD)
    assert failure(mech, client.first()).condition == "malformed-request"


def test_client_rejects_wrong_server_signature(accounts: Accounts) -> None:
    """A server that does not know the credentials fails the client's verification."""
    client = ScramClient("sha256", "user", PASSWORD)
    mech = server(accounts, client.mechanism)
    run(mech.step(client.respond(challenge(mech, client.first()))))
    with pytest.raises(SaslFailure) as info:
        client.verify(b"v=" + base64.b64encode(bytes(32)))
    assert info.value.condition == "not-authorized"
    with pytest.raises(SaslFailure) as info:
        client.verify(b"e=invalid-proof")
    assert (info.value.condition, info.value.text) == ("not-authorized", "invalid-proof")


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=abcd,s=QSXCR+Q6sek8bf92,i=4096",
        b"r=xyzabcd1,s=QSXCR+Q6sek8bf92,i=4096",
        b"r=abcd1,s=QSXCR+Q6sek8bf92,i=0",
        b"r=abcd1,s=QSXCR+Q6sek8bf92",
        b"m=x,r=abcd1,s=QSXCR+Q6sek8bf92,i=4096",
        b"r=abcd1,s=!!,i=4096",
    ],
)
def test_client_rejects_bad_server_first(server_first: bytes) -> None:
    """The client refuses a server-first-message that does not extend its nonce or is malformed."""
    client = ScramClient("sha1", "user", PASSWORD, nonce="abcd")
    with pytest.raises(SaslFailure):
        client.respond(server_first)


def test_plain_success_and_authzid(accounts: Accounts) -> None:
    """PLAIN authenticates and reports the requested authzid."""
    result = run(server(accounts, "PLAIN").step(plain_initial("user", PASSWORD)))
    assert result == Success("user", None, None)
    result = run(server(accounts, "PLAIN").step(plain_initial("user", PASSWORD, "admin@x")))
    assert result == Success("user", None, "admin@x")


def test_plain_prepares_strings(accounts: Accounts) -> None:
    """PLAIN applies OpaqueString to authcid and password, so a no-break space matches a space."""
    accounts.passwords["user"] = "a b"
    result = run(server(accounts, "PLAIN").step(plain_initial("user", "a\u00a0b")))
    assert isinstance(result, Success)
    error = failure(server(accounts, "PLAIN"), b"\0user\0pass\x07word")
    assert error.condition == "not-authorized"


def test_plain_without_initial_response(accounts: Accounts) -> None:
    """PLAIN with no initial response asks for it with an empty challenge."""
    mech = server(accounts, "PLAIN")
    assert challenge(mech, None) == b""
    assert isinstance(run(mech.step(plain_initial("user", PASSWORD))), Success)
    assert failure(mech, b"x").condition == "malformed-request"


@pytest.mark.parametrize(
    ("message", "condition"),
    [
        (b"\0user\0wrong", "not-authorized"),
        (b"\0nobody\0pencil", "not-authorized"),
        (b"\0\0pencil", "malformed-request"),
        (b"\0user\0", "malformed-request"),
        (b"user\0pencil", "malformed-request"),
        (b"\0user\0pen\0cil", "malformed-request"),
        (b"\0us\xffer\0pencil", "malformed-request"),
    ],
)
def test_plain_refused(accounts: Accounts, message: bytes, condition: str) -> None:
    """PLAIN refuses wrong credentials and malformed messages."""
    assert failure(server(accounts, "PLAIN"), message).condition == condition


def test_plain_needs_tls(accounts: Accounts) -> None:
    """PLAIN without TLS is refused with encryption-required unless explicitly allowed."""
    with pytest.raises(SaslFailure) as info:
        server(accounts, "PLAIN", bindings={}, tls=False)
    assert info.value.condition == "encryption-required"
    mech = create_server_mechanism(
        "PLAIN",
        lookup=accounts.lookup,
        check=accounts.check,
        channel_bindings={},
        tls=False,
        allow_plain_without_tls=True,
    )
    assert isinstance(run(mech.step(plain_initial("user", PASSWORD))), Success)


@pytest.mark.parametrize(
    ("name", "bindings"),
    [("DIGEST-MD5", BINDINGS), ("scram-sha-1", BINDINGS), ("SCRAM-SHA-256-PLUS", {})],
)
def test_unoffered_mechanism_refused(
    accounts: Accounts, name: str, bindings: dict[str, bytes]
) -> None:
    """Unknown mechanisms and -PLUS without channel binding data are invalid-mechanism."""
    with pytest.raises(SaslFailure) as info:
        server(accounts, name, bindings=bindings)
    assert info.value.condition == "invalid-mechanism"


def test_mechanism_listing() -> None:
    """-PLUS only with channel bindings, PLAIN only over TLS or when allowed, strongest first."""
    assert server_mechanism_names(tls=True, channel_bindings=BINDINGS) == [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ]
    assert server_mechanism_names(tls=True, channel_bindings={}) == [
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ]
    assert server_mechanism_names(tls=False, channel_bindings={}) == [
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
    ]
    assert server_mechanism_names(tls=False, channel_bindings={}, allow_plain_without_tls=True) == [
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ]


def test_credentials_storage_round_trip() -> None:
    """Credentials survive to_dict and from_dict with the bytes keys and values Redis returns."""
    creds = derive_scram_credentials(PASSWORD, "sha256")
    stored = creds.to_dict()
    assert stored["iterations"] == "4096"
    assert all(isinstance(v, str) for v in stored.values())
    as_redis = {k.encode(): v.encode() for k, v in stored.items()}
    assert ScramCredentials.from_dict(as_redis) == creds
    assert ScramCredentials.from_dict(stored) == creds
    assert len(creds.salt) == 16
    assert creds.stored_key.hex() not in repr(creds)


@pytest.mark.parametrize(
    "change",
    [{"iterations": "many"}, {"iterations": "0"}, {"salt": "!!"}, {"server_key": None}],
)
def test_credentials_from_bad_dict(change: dict[str, str | None]) -> None:
    """Damaged stored credentials raise ValueError."""
    stored: dict[str, str] = derive_scram_credentials("x", "sha1").to_dict()
    for key, value in change.items():
        if value is None:
            del stored[key]
        else:
            stored[key] = value
    with pytest.raises(ValueError):
        ScramCredentials.from_dict(stored)


def test_verify_password() -> None:
    """verify_password recomputes StoredKey for PLAIN against SCRAM credentials."""
    for hash_name in HASHES:
        creds = derive_scram_credentials("s\u00a0cret", hash_name)
        assert verify_password("s\u00a0cret", hash_name, creds)
        assert verify_password("s cret", hash_name, creds)
        assert not verify_password("secret", hash_name, creds)
        assert not verify_password("\x07", hash_name, creds)


@pytest.mark.parametrize(
    ("password", "hash_name", "iterations"),
    [("x", "md5", 4096), ("x", "sha1", 0), ("\x00", "sha1", 4096)],
)
def test_derive_rejects_bad_input(password: str, hash_name: str, iterations: int) -> None:
    """Unknown hashes, bad iteration counts and unpreparable passwords are refused."""
    with pytest.raises(ValueError):
        derive_scram_credentials(password, hash_name, iterations=iterations)


def test_saslprep() -> None:
    """OpaqueString maps non-ASCII spaces, normalises to NFC and refuses controls and empty."""
    assert saslprep("a\u00a0b") == "a b"
    assert saslprep("e\u0301") == "\u00e9"
    for bad in ("", "a\x00b", "\x07"):
        with pytest.raises(ValueError):
            saslprep(bad)


def test_sasl_failure_condition() -> None:
    """SaslFailure carries an RFC 6120 §6.5 condition and refuses unknown ones."""
    error = SaslFailure("not-authorized", "nope")
    assert (error.condition, error.text) == ("not-authorized", "nope")
    with pytest.raises(ValueError):
        SaslFailure("forbidden")


def _certificate(key: Any, algorithm: Any) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.org")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [(hashes.SHA256(), hashlib.sha256), (hashes.SHA384(), hashlib.sha384)],
)
def test_tls_server_end_point(algorithm: hashes.HashAlgorithm, digest: Any) -> None:
    """The end-point binding hashes the DER certificate with its signature hash (RFC 5929 §4.1)."""
    der = _certificate(ec.generate_private_key(ec.SECP256R1()), algorithm)
    assert tls_server_end_point(der) == digest(der).digest()


def test_tls_server_end_point_undefined_for_ed25519() -> None:
    """An Ed25519 certificate has no signature hash, so the binding is undefined."""
    with pytest.raises(ValueError):
        tls_server_end_point(_certificate(ed25519.Ed25519PrivateKey.generate(), None))


def test_tls_exporter_label() -> None:
    """The RFC 9266 exporter label."""
    assert TLS_EXPORTER_LABEL == b"EXPORTER-Channel-Binding"
