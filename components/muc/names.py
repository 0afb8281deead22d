"""Namespaces and status codes of Multi-User Chat (XEP-0045) and the extensions the MUC
service speaks: XEP-0004 data forms, XEP-0203 delayed delivery, XEP-0410 self-ping and
XEP-0421 occupant ids. Names are Clark notation, as lxml uses them."""

from core.xmpp.ns import NS_DATA, NS_DELAY, NS_MUC, qn

NS_MUC_USER = f"{NS_MUC}#user"
NS_MUC_ADMIN = f"{NS_MUC}#admin"
NS_MUC_OWNER = f"{NS_MUC}#owner"
NS_MUC_ROOMCONFIG = f"{NS_MUC}#roomconfig"
NS_MUC_ROOMINFO = f"{NS_MUC}#roominfo"
NS_MUC_REQUEST = f"{NS_MUC}#request"
# XEP-0045 §7.2.1 / XEP-Remarks: the service keeps the 'id' of reflected messages.
NS_MUC_STABLE_ID = f"{NS_MUC}#stable_id"
# XEP-0410 §3.2: the service answers a self-ping itself instead of forwarding it.
NS_MUC_SELF_PING = f"{NS_MUC}#self-ping-optimization"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"

QN_X_MUC = qn(NS_MUC, "x")
QN_X_USER = qn(NS_MUC_USER, "x")
QN_ADMIN_QUERY = qn(NS_MUC_ADMIN, "query")
QN_OWNER_QUERY = qn(NS_MUC_OWNER, "query")
QN_OCCUPANT_ID = qn(NS_OCCUPANT_ID, "occupant-id")
QN_X_DATA = qn(NS_DATA, "x")
QN_DELAY = qn(NS_DELAY, "delay")

# XEP-0045 §15.6 (status codes registry), by meaning.
STATUS_NON_ANONYMOUS = "100"
STATUS_AFFILIATION_CHANGED_OFFLINE = "101"
STATUS_CONFIG_CHANGED = "104"
STATUS_SELF = "110"
STATUS_LOGGING_ON = "170"
STATUS_LOGGING_OFF = "171"
STATUS_NOW_NON_ANONYMOUS = "172"
STATUS_NOW_SEMI_ANONYMOUS = "173"
STATUS_CREATED = "201"
STATUS_NICK_MODIFIED = "210"
STATUS_BANNED = "301"
STATUS_NICK_CHANGED = "303"
STATUS_KICKED = "307"
STATUS_AFFILIATION_REMOVED = "321"
STATUS_MEMBERS_ONLY_REMOVED = "322"
STATUS_SHUTDOWN = "332"
STATUS_ERROR_REMOVED = "333"
