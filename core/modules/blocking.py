"""XEP-0191: Simple Communications Blocking, on the privacy lists' store (XEP-0016).

The blocklist is the default privacy list's jid/deny items (XEP-0191 §3, see
core/storage/privacy.py): blocking and privacy lists see each other's changes because there is
nothing else to see. Enforcement, the unavailable presence on block and the current presence on
unblock are the privacy service's (core/modules/privacy.py); this module speaks the protocol:

* get: the blocklist, and the session asked for it, so it receives pushes (§5.2);
* block: at least one item (else ``bad-request``), each a valid JID (else ``jid-malformed``);
  result, then a push of the items to every resource that asked for the blocklist (§5.3);
* unblock: the items, or every blocked JID when there are none (§5.4, §5.5); result and push.
"""

from __future__ import annotations

import logging

from lxml import etree

from core.modules.privacy import BLOCKLIST_REQUESTED, MAX_ITEMS, add_service_hooks, service_of
from core.storage.privacy import PrivacyLists
from core.xmpp.errors import StanzaError
from core.xmpp.jid import JIDError, parse_jid
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_BLOCKING, qn

log = logging.getLogger(__name__)
Element = etree._Element

QN_BLOCKLIST = qn(NS_BLOCKING, "blocklist")
QN_BLOCK = qn(NS_BLOCKING, "block")
QN_UNBLOCK = qn(NS_BLOCKING, "unblock")
QN_ITEM = qn(NS_BLOCKING, "item")

module = Module("blocking", spec="XEP-0191", features=[NS_BLOCKING])


def _jids(payload: Element) -> list[str]:
    """The normalised JIDs of the <item/> children, in order and without repeats."""
    out: list[str] = []
    for c in payload:
        if not isinstance(c.tag, str):
            continue
        if c.tag != QN_ITEM:
            raise StanzaError("bad-request", "only <item jid='...'/> elements belong here")
        raw = c.get("jid")
        if raw is None:
            raise StanzaError("bad-request", "an item needs a 'jid'")
        try:
            jid = str(parse_jid(raw))
        except JIDError:
            raise StanzaError("jid-malformed", f"not a JID: {raw!r}") from None
        if jid not in out:
            out.append(jid)
    return out


# The privacy service is installed by this module too, so blocking is enforced when the
# privacy module is not loaded.
add_service_hooks(module)


@module.iq("get", QN_BLOCKLIST, to="self")
async def get_blocklist(ctx: IqContext) -> Element:
    """§5.2: the blocked JIDs; the asking session receives block and unblock pushes."""
    service = service_of(ctx.host)
    lists = await service.cache.get(str(ctx.sender.bare))
    data = getattr(ctx.session, "data", None)
    if isinstance(data, dict):
        data[BLOCKLIST_REQUESTED] = True
    blocklist = etree.Element(QN_BLOCKLIST, nsmap={None: NS_BLOCKING})
    for jid in lists.data.blocklist():
        etree.SubElement(blocklist, QN_ITEM).set("jid", jid)
    return blocklist


@module.iq("set", QN_BLOCK, to="self")
async def block(ctx: IqContext) -> None:
    """§5.3: block the items' JIDs."""
    jids = _jids(ctx.payload)
    if not jids:
        raise StanzaError("bad-request", "<block/> needs at least one item")
    bare = str(ctx.sender.bare)

    def edit(lists: PrivacyLists) -> PrivacyLists:
        after = lists.blocking(jids)
        if after.default is not None and len(after.lists[after.default]) > MAX_ITEMS:
            raise StanzaError("policy-violation", f"a list holds at most {MAX_ITEMS} items")
        return after

    await service_of(ctx.host).change(bare, edit, blocking=("block", jids))
    log.info("blocking: %s blocked %d JID(s)", bare, len(jids))
    return None


@module.iq("set", QN_UNBLOCK, to="self")
async def unblock(ctx: IqContext) -> None:
    """§5.4, §5.5: unblock the items' JIDs, or every blocked JID when there is no item."""
    jids = _jids(ctx.payload) or None
    bare = str(ctx.sender.bare)
    await service_of(ctx.host).change(
        bare,
        lambda lists: lists.unblocking(jids),
        blocking=("unblock", jids),
    )
    log.info("blocking: %s unblocked %s", bare, "all" if jids is None else f"{len(jids)} JID(s)")
    return None
