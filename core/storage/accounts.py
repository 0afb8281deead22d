"""Accounts: SCRAM credentials in Redis (RFC 5802, RFC 7677), never a plaintext password.

One hash per account (``keys.account``) holds salted keys for both SCRAM-SHA-1 and
SCRAM-SHA-256, so either mechanism works whichever the client picks; ``keys.accounts_index``
lists a domain's localparts. Usernames are prepared with the PRECIS UsernameCaseMapped profile
(RFC 7622 localpart), passwords with OpaqueString (RFC 8265), both before anything is derived
or stored.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.client import Pipeline

from core.storage import keys
from core.xmpp.jid import JIDError, prep_domain, prep_local
from core.xmpp.sasl import ScramCredentials, derive_scram_credentials, saslprep

log = logging.getLogger(__name__)

# Both, always: a client may offer only one of them.
HASH_NAMES = ("sha1", "sha256")
_CRED_FIELDS = ("salt", "iterations", "stored_key", "server_key")
# Optimistic transactions retried this often before giving up on a hot key.
WRITE_ATTEMPTS = 3
# The sender named in change announcements made here: no core node has this id, so every
# node acts on them.
ANNOUNCER = "account-store"


class AccountExists(Exception):
    """An account with this name already exists."""


class NoSuchAccount(Exception):
    """There is no account with this name."""


class InvalidUsername(ValueError):
    """The name cannot be an XMPP localpart."""


class InvalidPassword(ValueError):
    """The password is empty or not allowed by the OpaqueString profile."""


def _prepare_username(username: str) -> str:
    try:
        return prep_local(username)
    except JIDError as exc:
        raise InvalidUsername(f"invalid username {username!r}: {exc}") from None


def _prepare_password(password: str) -> str:
    if not password:
        raise InvalidPassword("the password must not be empty")
    try:
        prepared = saslprep(password)
    except ValueError as exc:
        raise InvalidPassword(f"invalid password: {exc}") from None
    return prepared


class AccountStore:
    """Create, delete and look up accounts; every write is one MULTI/EXEC transaction."""

    def __init__(self, redis: redis.asyncio.Redis, *, iterations: int = 4096) -> None:
        self._redis = redis
        self._iterations = iterations

    def _bare(self, username: str, domain: str) -> tuple[str, str]:
        """(prepared localpart, bare JID); raises InvalidUsername / JIDError."""
        local = _prepare_username(username)
        return local, f"{local}@{prep_domain(domain)}"

    async def _derive(self, password: str) -> dict[str, str]:
        """Credential fields for every hash; PBKDF2 is slow, so off the event loop."""
        prepared = _prepare_password(password)
        derived = await asyncio.gather(
            *(
                asyncio.to_thread(
                    derive_scram_credentials, prepared, name, iterations=self._iterations
                )
                for name in HASH_NAMES
            )
        )
        fields: dict[str, str] = {}
        for name, creds in zip(HASH_NAMES, derived, strict=True):
            fields.update({f"{name}:{key}": value for key, value in creds.to_dict().items()})
        return fields

    async def create(self, username: str, domain: str, password: str) -> None:
        """Create an account; raises AccountExists, InvalidUsername, InvalidPassword."""
        local, bare = self._bare(username, domain)
        key = keys.account(bare)
        # Fail before spending time on PBKDF2; the transaction below still guards the race.
        if await self._redis.exists(key):
            raise AccountExists(f"account {bare} already exists")
        fields = await self._derive(password)
        fields["created"] = str(int(time.time()))
        async with self._redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                if await pipe.exists(key):
                    raise AccountExists(f"account {bare} already exists")
                pipe.multi()
                pipe.hset(key, mapping=fields)
                pipe.sadd(keys.accounts_index(bare.split("@", 1)[1]), local)
                await pipe.execute()
            except redis.exceptions.WatchError:
                # The key changed after WATCH: someone created it in the meantime.
                raise AccountExists(f"account {bare} already exists") from None

    async def delete(self, username: str, domain: str) -> bool:
        """Delete an account and all its durable data; False if there was none."""
        local, bare = self._bare(username, domain)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys.per_account_keys(bare))
            pipe.srem(keys.accounts_index(bare.split("@", 1)[1]), local)
            deleted, _removed = await pipe.execute()
        if deleted:
            # Core nodes keep the rosters and privacy lists of accounts they served in memory
            # and drop a copy when its account is announced as changed: an account created
            # again under this name must not inherit them.
            message = f"{ANNOUNCER} {bare}".encode()
            try:
                for channel in (keys.privacy_changes(), keys.roster_changes()):
                    await self._redis.publish(channel, message)
            except (redis.exceptions.RedisError, OSError):
                log.warning("could not announce the deletion of %s", bare, exc_info=True)
        return bool(deleted)

    async def set_password(self, username: str, domain: str, password: str) -> None:
        """Replace the credentials; raises NoSuchAccount, InvalidUsername, InvalidPassword."""
        _local, bare = self._bare(username, domain)
        key = keys.account(bare)
        if not await self._redis.exists(key):
            raise NoSuchAccount(f"no account {bare}")
        fields = await self._derive(password)
        for _attempt in range(WRITE_ATTEMPTS):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    if not await pipe.exists(key):
                        raise NoSuchAccount(f"no account {bare}")
                    pipe.multi()
                    pipe.hset(key, mapping=fields)
                    await pipe.execute()
                    return
                except redis.exceptions.WatchError:
                    # Changed after WATCH (deleted, or a concurrent change): look again.
                    continue
        raise RuntimeError(f"account {bare} kept changing while its password was being set")

    async def exists(self, username: str, domain: str) -> bool:
        """Does the account exist? A name that cannot be a localpart never does."""
        try:
            _local, bare = self._bare(username, domain)
        except ValueError:
            return False
        return bool(await self._redis.exists(keys.account(bare)))

    @staticmethod
    def queue_exists(pipe: Pipeline, bare: str) -> None:
        """Queue ``exists`` for a prepared bare JID on a pipeline (``core.storage.batch``);
        its reply is true when the account exists."""
        pipe.exists(keys.account(bare))

    async def scram_credentials(
        self, username: str, domain: str, hash_name: str
    ) -> ScramCredentials | None:
        """The stored credentials for ``hash_name`` ("sha1" or "sha256"); None when the
        account does not exist (or the name cannot be a localpart)."""
        found = self._credential_fields(username, domain, hash_name)
        if found is None:
            return None
        return self.scram_loaded([await self._redis.hmget(*found)])

    def queue_scram_credentials(
        self, pipe: Pipeline, username: str, domain: str, hash_name: str
    ) -> bool:
        """Queue the read of ``scram_credentials`` on a pipeline; False (nothing queued) when
        the name cannot be a localpart."""
        found = self._credential_fields(username, domain, hash_name)
        if found is None:
            return False
        pipe.hmget(*found)
        return True

    def _credential_fields(
        self, username: str, domain: str, hash_name: str
    ) -> tuple[bytes, list[str]] | None:
        """(key, fields) of the credentials for ``hash_name``; None for a name that cannot
        be a localpart."""
        if hash_name not in HASH_NAMES:
            raise ValueError(f"unknown hash {hash_name!r}; expected one of {HASH_NAMES}")
        try:
            _local, bare = self._bare(username, domain)
        except ValueError:
            return None
        return keys.account(bare), [f"{hash_name}:{key}" for key in _CRED_FIELDS]

    @staticmethod
    def scram_loaded(replies: list[Any]) -> ScramCredentials | None:
        """The credentials from the reply to ``queue_scram_credentials``'s command."""
        values = replies[-1]
        if any(value is None for value in values):
            return None
        return ScramCredentials.from_dict(dict(zip(_CRED_FIELDS, values, strict=True)))

    # builtins.list: inside the class body, a bare `list` would name this method.
    async def list(self, domain: str) -> builtins.list[str]:
        """The localparts of the domain's accounts, sorted."""
        members = await self._redis.smembers(keys.accounts_index(prep_domain(domain)))
        return sorted(member.decode() for member in members)
