"""XEP-0054: vcard-temp, served by the server for every account's bare JID.

* One's own vCard: get and set at one's bare JID (or with no 'to'); a get with none stored is an
  empty ``<vCard/>`` (§3.1 allows either that or item-not-found).
* Another account's vCard: the server answers (§3.3); none stored and no such account give the
  same ``service-unavailable``, so the answer does not reveal which accounts exist (the router
  refuses IQs to unknown accounts with that condition before they reach this module).
* Setting another account's vCard is ``forbidden`` (§3.2). A vCard larger than
  ``MAX_VCARD_BYTES`` is refused with ``policy-violation``; setting an empty ``<vCard/>``
  removes the stored one.

The hash of the photo (XEP-0153) is kept with the vCard; ``photo_hash`` gives it to presence.
"""

from __future__ import annotations

import logging
from typing import Any

from lxml import etree

from core.storage.vcard import QN_VCARD, VCardStore, serialize
from core.xmpp.errors import StanzaError
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_VCARD

log = logging.getLogger(__name__)

# Large enough for a vCard with a small avatar (XEP-0153 asks for images of a few KiB), small
# enough that one account cannot store a sizeable share of the stanza limit many times over.
MAX_VCARD_BYTES = 64 * 1024

module = Module("vcard", spec="XEP-0054", features=[NS_VCARD], account_features=[NS_VCARD])


def _is_self(ctx: IqContext) -> bool:
    return ctx.sender.local == ctx.to.local and ctx.sender.domain == ctx.to.domain


def _store(host: Any) -> VCardStore:
    return VCardStore(host.redis)


@module.iq("get", QN_VCARD, to="account")
async def get_vcard(ctx: IqContext) -> etree._Element:
    """One's own vCard (empty when none), or another account's (service-unavailable when none)."""
    stored = await _store(ctx.host).get(str(ctx.to.bare))
    if stored is not None:
        return stored.element()
    if _is_self(ctx):
        return etree.Element(QN_VCARD, nsmap={None: NS_VCARD})
    # §3.3: no vCard, or no such user: the same answer either way.
    raise StanzaError("service-unavailable")


@module.iq("set", QN_VCARD, to="account")
async def set_vcard(ctx: IqContext) -> None:
    """Publish or replace one's own vCard (§3.2); another account's is forbidden."""
    if not _is_self(ctx):
        raise StanzaError("forbidden", "you may only change your own vCard")
    data = serialize(ctx.payload)
    if len(data) > MAX_VCARD_BYTES:
        raise StanzaError(
            "policy-violation",
            f"the vCard is {len(data)} bytes; this server keeps vCards of up to "
            f"{MAX_VCARD_BYTES} bytes",
        )
    bare = str(ctx.to.bare)
    store = _store(ctx.host)
    if not any(isinstance(c.tag, str) for c in ctx.payload):
        await store.delete(bare)
        log.info("vCard of %s removed", bare)
    else:
        await store.set(bare, ctx.payload)
        log.info("vCard of %s stored (%d bytes)", bare, len(data))
    return None


async def photo_hash(host: Any, bare: str) -> str | None:
    """XEP-0153: the SHA-1 of the account's vCard photo ('' without photo, None without vCard),
    for presence to advertise in ``<x xmlns='vcard-temp:x:update'/>``."""
    return await _store(host).photo(bare)
