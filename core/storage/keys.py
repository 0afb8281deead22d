"""Every Redis key Switchboard uses, named in one place.

Keys are bytes. Per-account keys put the bare JID in a hash tag (``{alice@example.com}``) so all
of one account's keys land in one Redis Cluster slot: the data set runs unchanged on a cluster
and multi-key transactions on one account stay legal there. A bare JID may itself contain
``{`` or ``}`` (RFC 7622 allows them in localparts); the tag then ends early, but it ends at the
same place for every key of that account, so they still share a slot.

Layout (values and their owners):

=================================  ======  =========================================================
key                                type    contents
=================================  ======  =========================================================
``account:{<bare>}``               hash    SCRAM credentials per hash, ``<hash>:<field>``
                                           (``sha1:salt``, ``sha256:stored_key``, ...) and
                                           ``created``; never a plaintext password
                                           (storage/accounts.py)
``accounts:{<domain>}``            set     localparts of the domain's accounts
``auth-failures:{<bare>}``         string  failed logins for one account, expires after 60 s
``auth-failures-addr:{<host>}``    string  failed logins from one remote address, expires after 60 s
``session:{<bare>}``               hash    resource -> id of the core node holding that session
``node-sessions:{<node_id>}``      set     ``bare/resource`` of the sessions a node holds, for
                                           cleanup when the node is gone
``nodes``                          set     ids of the core nodes that registered themselves
``node-alive:{<node_id>}``         string  present while the node lives; its TTL is refreshed by
                                           the node's heartbeat, so a crashed node's sessions
                                           can be found and cleaned
=================================  ======  =========================================================

Reserved for features still to come, with the same per-account hash tag:
``roster:{<bare>}``, ``roster-version:{<bare>}``, ``privacy:{<bare>}``,
``privacy-default:{<bare>}``, ``blocklist:{<bare>}``, ``vcard:{<bare>}``,
``offline:{<bare>}``. Add them here, and add durable per-account keys to ``per_account_keys``
so that deleting an account deletes them too.
"""

from __future__ import annotations


def _tagged(prefix: str, tag: str) -> bytes:
    return f"{prefix}:{{{tag}}}".encode()


def account(bare: str) -> bytes:
    """The account's credentials hash, e.g. ``b"account:{alice@example.com}"``."""
    return _tagged("account", bare)


def accounts_index(domain: str) -> bytes:
    """The set of localparts with an account on ``domain``."""
    # COMPAT: on Redis Cluster this key and account:{bare} live in different slots, so they
    # cannot share a MULTI/EXEC; the index would then be written separately (it can be rebuilt
    # from a SCAN of account:* keys).
    return _tagged("accounts", domain)


def session(bare: str) -> bytes:
    """The live sessions of one account: resource -> id of the node holding it."""
    return _tagged("session", bare)


def sessions_of_node(node_id: str) -> bytes:
    """The ``bare/resource`` of the sessions held by one core node."""
    return _tagged("node-sessions", node_id)


node_sessions = sessions_of_node


def nodes() -> bytes:
    """The set of core node ids that registered themselves."""
    return b"nodes"


def node_alive(node_id: str) -> bytes:
    """Present while the node lives (TTL refreshed by its heartbeat)."""
    return _tagged("node-alive", node_id)


def auth_failures_account(bare: str) -> bytes:
    """Counter of recent failed logins for one account (expires)."""
    return _tagged("auth-failures", bare)


def auth_failures_addr(host: str) -> bytes:
    """Counter of recent failed logins from one remote address (expires)."""
    return _tagged("auth-failures-addr", host)


def per_account_keys(bare: str) -> list[bytes]:
    """Every durable key of one account: what deleting the account must delete."""
    return [account(bare)]
