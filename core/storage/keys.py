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
``roster:{<bare>}``                hash    contact JID -> JSON roster item (name, groups,
                                           subscription, ask, approved) (storage/roster.py)
``roster-version:{<bare>}``        string  the roster version (RFC 6121 §2.6), changed with
                                           every change of an item
``roster-pending:{<bare>}``        hash    contact JID -> the pending inbound subscription
                                           request, serialized (RFC 6121 §3.1.3)
``offline:{<bare>}``               list    stored messages, oldest first, serialized with their
                                           XEP-0203 delay stamp (storage/offline.py, XEP-0160)
``last:{<bare>}``                  hash    ``time`` of the last unavailable presence and the
                                           ``presence`` itself (storage/last.py, XEP-0012)
``roster-changed``                 pubsub  channel: ``<node_id> <bare>`` when an account's roster
                                           changed, so other nodes reload their copy and push
                                           the changes to their sessions (modules/roster.py)
``component-links:{<domain>}``     hash    instance id -> id of the core node holding that live
                                           component link (component_routes.py, XEP-0114)
``component-link:{<domain>}/<i>``  string  node id of instance ``<i>``'s link; its TTL is
                                           refreshed by the node's heartbeat, so the links of a
                                           crashed node expire and are cleaned at start
``component-down:{<domain>}``      string  set when the domain lost its last link; expires
                                           after ``component_listener.grace_period``, while
                                           stanzas to it get ``remote-server-timeout``
``privacy:{<bare>}``               hash    privacy list name -> JSON list of items (XEP-0016);
                                           the blocklist of XEP-0191 is the default list's
                                           jid/deny items (storage/privacy.py)
``privacy-default:{<bare>}``       string  the name of the account's default privacy list
``vcard:{<bare>}``                 hash    ``xml``: the vCard (XEP-0054), ``photo``: SHA-1 of
                                           its photo (XEP-0153) (storage/vcard.py)
``privacy-changed``                pubsub  channel: ``<node_id> <bare>`` when an account's
                                           privacy lists changed, so nodes drop cached copies
``s2s-dialback-secret``            string  the dialback secret (XEP-0185) every node signs its
                                           keys with, created by the first node when
                                           ``s2s.dialback_secret`` is not configured (s2s/)
=================================  ======  =========================================================

Add new keys here, and add durable per-account keys to ``per_account_keys`` so that deleting an
account deletes them too.

Component processes may not import this module (they reach the core only through core.xmpp
and core.runtime), so they name their own keys in one module each, listed here:
``components/muc/store.py`` owns every ``muc:*`` key (rooms, occupants, affiliations,
history, indexes), each room's keys tagged with the room JID.
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


def roster(bare: str) -> bytes:
    """The account's roster items: contact JID -> JSON."""
    return _tagged("roster", bare)


def roster_version(bare: str) -> bytes:
    """The current roster version string (RFC 6121 §2.6)."""
    return _tagged("roster-version", bare)


def roster_pending(bare: str) -> bytes:
    """Pending inbound subscription requests: contact JID -> serialized presence stanza."""
    return _tagged("roster-pending", bare)


def offline(bare: str) -> bytes:
    """Messages kept for the account while it has no available resource (XEP-0160)."""
    return _tagged("offline", bare)


def last_activity(bare: str) -> bytes:
    """When the account last went unavailable, and that presence (XEP-0012)."""
    return _tagged("last", bare)


def roster_changes() -> bytes:
    """The pub/sub channel that announces changed rosters to every node."""
    return b"roster-changed"


def component_links(domain: str) -> bytes:
    """The live links of one component domain: instance id -> node id."""
    return _tagged("component-links", domain)


def component_link(domain: str, instance: str) -> bytes:
    """One live component link: the node id, with a TTL refreshed by the node heartbeat."""
    return _tagged("component-link", domain) + b"/" + instance.encode()


def component_down(domain: str) -> bytes:
    """Present for the grace period after a component domain lost its last link."""
    return _tagged("component-down", domain)


def privacy(bare: str) -> bytes:
    """The account's privacy lists: list name -> JSON list of items (XEP-0016)."""
    return _tagged("privacy", bare)


def privacy_default(bare: str) -> bytes:
    """The name of the account's default privacy list."""
    return _tagged("privacy-default", bare)


def privacy_changes() -> bytes:
    """The pub/sub channel that announces changed privacy lists to every node."""
    return b"privacy-changed"


def vcard(bare: str) -> bytes:
    """The account's vCard (XEP-0054) and its photo hash (XEP-0153)."""
    return _tagged("vcard", bare)


def dialback_secret() -> bytes:
    """The server dialback secret shared by the nodes of one deployment (XEP-0185)."""
    return b"s2s-dialback-secret"


def per_account_keys(bare: str) -> list[bytes]:
    """Every durable key of one account: what deleting the account must delete."""
    return [
        account(bare),
        roster(bare),
        roster_version(bare),
        roster_pending(bare),
        offline(bare),
        last_activity(bare),
        privacy(bare),
        privacy_default(bare),
        vcard(bare),
    ]
