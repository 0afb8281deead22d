"""vCards in Redis (XEP-0054 vcard-temp), with the photo hash of XEP-0153.

One hash per account (``keys.vcard``): ``xml`` holds the ``<vCard xmlns='vcard-temp'/>`` element
as UTF-8 bytes, ``photo`` the hex SHA-1 of the decoded ``PHOTO/BINVAL`` (empty when the vCard has
no photo), so that presence can carry ``vcard-temp:x:update`` without parsing the vCard again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from lxml import etree
from redis.asyncio.client import Pipeline

from core.storage import keys
from core.xmpp.ns import NS_VCARD, qn

QN_VCARD = qn(NS_VCARD, "vCard")
_PHOTO_BINVAL = f"{{{NS_VCARD}}}PHOTO/{{{NS_VCARD}}}BINVAL"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


@dataclass(frozen=True, slots=True)
class StoredVCard:
    """A vCard as stored: the serialized element and the hash of its photo ('' for none)."""

    xml: bytes
    photo: str

    def element(self) -> etree._Element:
        return etree.fromstring(self.xml, _PARSER)


def serialize(vcard: etree._Element) -> bytes:
    """The vCard element alone, with its namespace declared on it (no stanza around it)."""
    return etree.tostring(vcard, encoding="utf-8", with_tail=False)


def photo_hash(vcard: etree._Element) -> str:
    """XEP-0153 §3.1: hex SHA-1 of the image data; '' when there is no (decodable) photo."""
    binval = vcard.findtext(_PHOTO_BINVAL)
    if not binval or not binval.strip():
        return ""
    try:
        data = base64.b64decode("".join(binval.split()), validate=True)
    except (binascii.Error, ValueError):
        return ""
    return hashlib.sha1(data).hexdigest()


class VCardStore:
    """Read and replace one account's vCard; a write is one command, so it is atomic."""

    def __init__(self, redis: redis.asyncio.Redis) -> None:
        self._redis = redis

    async def get(self, bare: str) -> StoredVCard | None:
        raw = await self._redis.hmget(keys.vcard(bare), [b"xml", b"photo"])
        if raw[0] is None:
            return None
        return StoredVCard(raw[0], (raw[1] or b"").decode())

    async def set(self, bare: str, vcard: etree._Element) -> StoredVCard:
        """Store ``vcard`` (a ``{vcard-temp}vCard`` element), replacing any earlier one."""
        stored = StoredVCard(serialize(vcard), photo_hash(vcard))
        await self._redis.hset(
            keys.vcard(bare), mapping={b"xml": stored.xml, b"photo": stored.photo.encode()}
        )
        return stored

    async def delete(self, bare: str) -> None:
        await self._redis.delete(keys.vcard(bare))

    async def photo(self, bare: str) -> str | None:
        """The photo hash: '' for a vCard without photo, None when no vCard is stored."""
        return self.photo_loaded([await self._redis.hget(keys.vcard(bare), b"photo")])

    @staticmethod
    def queue_photo(pipe: Pipeline, bare: str) -> None:
        """Queue the read of ``photo`` on a pipeline (``core.storage.batch``)."""
        pipe.hget(keys.vcard(bare), b"photo")

    @staticmethod
    def photo_loaded(replies: list[Any]) -> str | None:
        (raw,) = replies
        return None if raw is None else raw.decode()
