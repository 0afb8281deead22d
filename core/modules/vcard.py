"""XEP-0054: vcard-temp, served by the server for every account's bare JID.

* One's own vCard: get and set at one's bare JID (or with no 'to'); a get with none stored is an
  empty ``<vCard/>`` (§3.1 allows either that or item-not-found).
* Another account's vCard: the server answers (§3.3); none stored and no such account give the
  same ``service-unavailable``, so the answer does not reveal which accounts exist (the router
  refuses IQs to unknown accounts with that condition before they reach this module).
* Setting another account's vCard is ``forbidden`` (§3.2). A vCard larger than
  ``MAX_VCARD_BYTES`` is refused with ``policy-violation``; setting an empty ``<vCard/>``
  removes the stored one.

XEP-0153 avatars: the hash of the photo is kept with the vCard. ``PhotoHashes``
(``server.vcards``) keeps it in memory for the accounts online on this node, and the presence
module has it put into each available presence the user sends, broadcast or directed
(``<x xmlns='vcard-temp:x:update'><photo>sha1</photo></x>``), following the server rules of
XEP-0398 §4: an empty ``<photo/>`` from the client (no avatar to advertise) is left alone, any
other update element is replaced; accounts without a vCard get nothing added. When a vCard
set changes the photo, the available resources' presence is broadcast again with the new hash.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lxml import etree

from core.storage.batch import Batch
from core.storage.vcard import QN_VCARD, VCardStore, serialize
from core.xmpp.errors import StanzaError
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_VCARD, qn

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)

NS_VCARD_UPDATE = "vcard-temp:x:update"  # XEP-0153 §3
QN_X_UPDATE = qn(NS_VCARD_UPDATE, "x")
QN_PHOTO = qn(NS_VCARD_UPDATE, "photo")

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


@module.iq("set", QN_VCARD, to="account", any_account=True)
async def set_vcard(ctx: IqContext) -> None:
    """Publish or replace one's own vCard (§3.2); another account's is forbidden (whether or
    not that account exists, so the answer reveals nothing)."""
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
        photo = None
    else:
        photo = (await store.set(bare, ctx.payload)).photo
        log.info("vCard of %s stored (%d bytes)", bare, len(data))
    photos: PhotoHashes | None = getattr(ctx.host, "vcards", None)
    if photos is not None:
        photos.changed(bare, photo)
    return None


async def photo_hash(host: Any, bare: str) -> str | None:
    """XEP-0153: the SHA-1 of the account's vCard photo ('' without photo, None without vCard),
    for presence to advertise in ``<x xmlns='vcard-temp:x:update'/>``."""
    return await _store(host).photo(bare)


class PhotoHashes:
    """XEP-0153 photo hashes of the accounts with a session on this node, in memory so that
    presence never waits for Redis: loaded when a session is bound, updated by vCard sets
    made on this node, dropped with the account's last session."""

    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self.store = VCardStore(server.redis)
        # bare JID -> hash ('' for a vCard without photo) or None (no vCard).
        self._known: dict[str, str | None] = {}

    async def load(self, bare: str) -> None:
        if bare not in self._known:
            self._known[bare] = await self.store.photo(bare)

    def prefetch(self, bare: str, batch: Batch) -> None:
        """Load the hash with ``batch`` unless it is known; ``load`` then finds it."""
        if bare in self._known:
            return

        def done(replies: list[Any]) -> None:
            # A vCard set on this node while the batch was out has already put its hash.
            self._known.setdefault(bare, self.store.photo_loaded(replies))

        batch.add(lambda pipe: self.store.queue_photo(pipe, bare), done, key=("photo", bare))

    def get(self, bare: str) -> str | None:
        return self._known.get(bare)

    def forget(self, bare: str) -> None:
        if not self.server.router.resources(bare):
            self._known.pop(bare, None)

    def stamp(self, presence: etree._Element, bare: str) -> None:
        """Put the account's photo hash into an available presence (XEP-0398 §4)."""
        digest = self._known.get(bare)
        if digest is None:
            return  # no vCard: nothing the server knows to advertise
        x = presence.find(QN_X_UPDATE)
        if x is not None:
            photo = x.find(QN_PHOTO)
            if photo is not None and not (photo.text or "").strip():
                return  # XEP-0153 §4.1 rule 3: the client says there is no image; keep it
            presence.remove(x)
        x = etree.SubElement(presence, QN_X_UPDATE, nsmap={None: NS_VCARD_UPDATE})
        etree.SubElement(x, QN_PHOTO).text = digest or None

    def changed(self, bare: str, digest: str | None) -> None:
        """A vCard set on this node: remember the new hash; if the photo changed, broadcast the
        available resources' presence again so that contacts learn of it (as ejabberd does)."""
        online = bool(self.server.router.resources(bare))
        old = self._known.get(bare)
        if online:
            self._known[bare] = digest
        if (old or "") == (digest or "") or digest is None:
            return  # same photo (or none either way), or the vCard went: nothing to announce
        presence = self.server.presence
        if presence is None:
            return
        for session in self.server.router.available_sessions(bare):
            self.server.spawn(presence.rebroadcast(session))


@module.on("server-started")
async def started(server: CoreServer) -> None:
    server.vcards = PhotoHashes(server)


@module.on("session-loading")
async def session_loading(session: Any, batch: Batch) -> None:
    photos: PhotoHashes | None = getattr(session.server, "vcards", None)
    if photos is not None:
        photos.prefetch(session.bare, batch)


@module.on("session-bound")
async def session_bound(session: Any) -> None:
    photos: PhotoHashes | None = getattr(session.server, "vcards", None)
    if photos is not None:
        await photos.load(session.bare)


@module.on("session-closed")
async def session_closed(session: Any) -> None:
    photos: PhotoHashes | None = getattr(session.server, "vcards", None)
    if photos is not None:
        photos.forget(session.bare)
