"""Room options as XEP-0004 data forms: the ``muc#roomconfig`` form (XEP-0045 §10.2, §15.5.3)
and the ``muc#roominfo`` form of a room's disco#info (§6.4, XEP-0128).

Each room option is declared once in ``OPTIONS``: its form field, how it reads and writes the
room configuration, and the disco features it implies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

from components.muc.model import PM_POLICIES, ROLES, WHOIS_POLICIES, Room, RoomConfig
from components.muc.names import NS_MUC_ROOMCONFIG, NS_MUC_ROOMINFO
from components.muc.settings import MucSettings
from core.xmpp.ns import NS_DATA, qn

Element = etree._Element
QN_X = qn(NS_DATA, "x")
QN_FIELD = qn(NS_DATA, "field")
QN_VALUE = qn(NS_DATA, "value")
_TRUE = ("1", "true")
_FALSE = ("0", "false")


class FormError(ValueError):
    """A submitted form that cannot be applied (XEP-0045 §10.2: ``not-acceptable``)."""


@dataclass
class Form:
    """A parsed data form: its type, FORM_TYPE and the values of each field."""

    type: str
    form_type: str | None
    values: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_element(cls, x: Element) -> Form:
        values: dict[str, list[str]] = {}
        for f in x.iter(QN_FIELD):
            var = f.get("var")
            if var:
                values[var] = [v.text or "" for v in f.iter(QN_VALUE)]
        form_type = values.pop("FORM_TYPE", [None])[0]
        return cls(x.get("type", ""), form_type, values)

    def single(self, var: str) -> str | None:
        """The first value of ``var``; "" for a field without value, None when absent."""
        vals = self.values.get(var)
        if vals is None:
            return None
        return vals[0] if vals else ""


def new_form(form_type: str, type: str = "form", title: str | None = None) -> Element:
    x = etree.Element(QN_X, nsmap={None: NS_DATA})
    x.set("type", type)
    if title:
        etree.SubElement(x, qn(NS_DATA, "title")).text = title
    add_field(x, "FORM_TYPE", "hidden", [form_type])
    return x


def add_field(
    x: Element,
    var: str,
    type: str | None,
    values: list[str],
    *,
    label: str | None = None,
    options: list[tuple[str, str]] | None = None,
) -> Element:
    f = etree.SubElement(x, QN_FIELD)
    f.set("var", var)
    if type:
        f.set("type", type)
    if label:
        f.set("label", label)
    for value in values:
        etree.SubElement(f, QN_VALUE).text = value
    for opt_value, opt_label in options or ():
        opt = etree.SubElement(f, qn(NS_DATA, "option"))
        opt.set("label", opt_label)
        etree.SubElement(opt, QN_VALUE).text = opt_value
    return f


def _bool(values: list[str]) -> bool:
    v = (values[0] if values else "").strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise FormError(f"expected a boolean, got {v!r}")


def _choice(allowed: tuple[str, ...]) -> Callable[[list[str]], str]:
    def parse(values: list[str]) -> str:
        v = (values[0] if values else "").strip()
        if v not in allowed:
            raise FormError(f"expected one of {', '.join(allowed)}, got {v!r}")
        return v

    return parse


def _count(values: list[str]) -> int:
    v = (values[0] if values else "").strip().lower()
    if v in ("", "none", "0"):
        return 0
    try:
        n = int(v)
    except ValueError:
        raise FormError(f"expected a number, got {v!r}") from None
    if n < 0:
        raise FormError("expected a positive number")
    return n


def _text(values: list[str]) -> str:
    return "\n".join(values)


def _roles(values: list[str]) -> list[str]:
    roles = [v.strip() for v in values if v.strip()]
    bad = [r for r in roles if r not in ROLES or r == "none"]
    if bad:
        raise FormError(f"unknown role {bad[0]!r}")
    return roles


@dataclass(frozen=True)
class Option:
    """One room option: its ``muc#roomconfig`` field and its place in RoomConfig."""

    var: str
    type: str
    label: str
    attr: str
    parse: Callable[[list[str]], object]
    options: tuple[tuple[str, str], ...] = ()
    # The disco features the option implies, as (when true, when false), if any.
    features: tuple[str, str] | None = None

    def values(self, config: RoomConfig) -> list[str]:
        value = getattr(config, self.attr)
        if isinstance(value, bool):
            return ["1" if value else "0"]
        if isinstance(value, list):
            return list(value)
        if self.attr == "max_users" and value == 0:
            return ["none"]
        return [str(value)]


OPTIONS: tuple[Option, ...] = (
    Option("muc#roomconfig_roomname", "text-single", "Name", "name", _text),
    Option("muc#roomconfig_roomdesc", "text-single", "Description", "description", _text),
    Option("muc#roomconfig_lang", "text-single", "Language of discussion", "language", _text),
    Option(
        "muc#roomconfig_persistentroom",
        "boolean",
        "Make room persistent",
        "persistent",
        _bool,
        features=("muc_persistent", "muc_temporary"),
    ),
    Option(
        "muc#roomconfig_publicroom",
        "boolean",
        "Make room publicly searchable",
        "public",
        _bool,
        features=("muc_public", "muc_hidden"),
    ),
    Option(
        "muc#roomconfig_membersonly",
        "boolean",
        "Make room members-only",
        "members_only",
        _bool,
        features=("muc_membersonly", "muc_open"),
    ),
    Option(
        "muc#roomconfig_moderatedroom",
        "boolean",
        "Make room moderated",
        "moderated",
        _bool,
        features=("muc_moderated", "muc_unmoderated"),
    ),
    Option("muc#roomconfig_roomsecret", "text-private", "Password", "password", _text),
    Option(
        "muc#roomconfig_maxusers",
        "list-single",
        "Maximum number of occupants",
        "max_users",
        _count,
        options=(("10", "10"), ("20", "20"), ("30", "30"), ("50", "50"), ("100", "100")),
    ),
    Option(
        "muc#roomconfig_whois",
        "list-single",
        "Who may discover real JIDs",
        "whois",
        _choice(WHOIS_POLICIES),
        options=(("moderators", "Moderators only"), ("anyone", "Anyone")),
        features=("muc_nonanonymous", "muc_semianonymous"),
    ),
    Option(
        "muc#roomconfig_changesubject",
        "boolean",
        "Allow occupants to change the subject",
        "change_subject",
        _bool,
    ),
    Option(
        "muc#roomconfig_allowinvites",
        "boolean",
        "Allow occupants to invite others",
        "allow_invites",
        _bool,
    ),
    Option(
        "muc#roomconfig_allowpm",
        "list-single",
        "Who may send private messages",
        "allow_pm",
        _choice(PM_POLICIES),
        options=(
            ("anyone", "Anyone"),
            ("participants", "Participants and moderators"),
            ("moderators", "Moderators only"),
            ("none", "Nobody"),
        ),
    ),
    Option(
        "muc#maxhistoryfetch",
        "text-single",
        "Messages of discussion history sent on entry",
        "history_length",
        _count,
    ),
    Option(
        "muc#roomconfig_presencebroadcast",
        "list-multi",
        "Roles whose presence is broadcast",
        "presence_broadcast",
        _roles,
        options=(
            ("moderator", "Moderator"),
            ("participant", "Participant"),
            ("visitor", "Visitor"),
        ),
    ),
)
_BY_VAR = {o.var: o for o in OPTIONS}
PASSWORD_FLAG = "muc#roomconfig_passwordprotectedroom"
# §10.2: the full admin and owner lists, editable in the form as well as through muc#admin.
ADMINS_FIELD = "muc#roomconfig_roomadmins"
OWNERS_FIELD = "muc#roomconfig_roomowners"


def config_form(room: Room) -> Element:
    """The configuration form of §10.2 with the room's current values."""
    x = new_form(NS_MUC_ROOMCONFIG, title=f"Configuration of {room.jid}")
    etree.SubElement(
        x, qn(NS_DATA, "instructions")
    ).text = "Complete this form to configure the room; submit it empty to accept the defaults."
    config = room.config
    for option in OPTIONS:
        if option.attr == "password":
            # §10.2: the flag comes before the secret it enables.
            add_field(
                x,
                PASSWORD_FLAG,
                "boolean",
                ["1" if config.password_protected else "0"],
                label="Password required to enter",
            )
        add_field(
            x,
            option.var,
            option.type,
            option.values(config),
            label=option.label,
            options=list(option.options) or None,
        )
    for var, affiliation, label in (
        (ADMINS_FIELD, "admin", "Room admins"),
        (OWNERS_FIELD, "owner", "Room owners"),
    ):
        jids = [jid for jid, _ in room.with_affiliation(affiliation)]
        add_field(x, var, "jid-multi", jids, label=label)
    return x


def apply_config(config: RoomConfig, form: Form, settings: MucSettings) -> RoomConfig:
    """A new configuration: ``config`` with the submitted fields applied; raises FormError."""
    if form.form_type not in (None, NS_MUC_ROOMCONFIG):
        raise FormError(f"unexpected FORM_TYPE {form.form_type!r}")
    new = RoomConfig.from_dict(config.to_dict())
    for var, values in form.values.items():
        option = _BY_VAR.get(var)
        if option is None:
            continue  # XEP-0004 §3.2: unknown fields are ignored
        try:
            setattr(new, option.attr, option.parse(values))
        except FormError as exc:
            raise FormError(f"{var}: {exc}") from None
    flag = form.values.get(PASSWORD_FLAG)
    if flag is not None and not _bool(flag):
        new.password = ""
    elif flag is not None and not new.password:
        raise FormError("a password-protected room needs muc#roomconfig_roomsecret")
    if new.max_users > settings.max_occupants:
        raise FormError(f"at most {settings.max_occupants} occupants are allowed")
    if new.history_length > settings.max_history:
        raise FormError(f"at most {settings.max_history} messages of history are kept")
    return new


def room_features(config: RoomConfig) -> list[str]:
    """The ``muc_*`` features of §6.4 that describe the room's configuration."""
    out = []
    for option in OPTIONS:
        if option.features is not None:
            on, off = option.features
            out.append(on if getattr(config, option.attr) == _feature_value(option) else off)
    out.append("muc_passwordprotected" if config.password_protected else "muc_unsecured")
    return out


def _feature_value(option: Option) -> object:
    return "anyone" if option.attr == "whois" else True


def roominfo_form(room: Room) -> Element:
    """The extended room information of §6.4 (FORM_TYPE muc#roominfo)."""
    config = room.config
    x = new_form(NS_MUC_ROOMINFO, type="result")
    add_field(x, "muc#roominfo_description", None, [config.description], label="Description")
    add_field(
        x,
        "muc#roominfo_subject",
        None,
        [room.subject.text if room.subject else ""],
        label="Current subject",
    )
    add_field(
        x,
        "muc#roominfo_subjectmod",
        "boolean",
        ["1" if config.change_subject else "0"],
        label="Occupants may change the subject",
    )
    add_field(
        x,
        "muc#roominfo_occupants",
        None,
        [str(len(room.occupants))],
        label="Number of occupants",
    )
    add_field(x, "muc#roominfo_lang", None, [config.language], label="Language")
    add_field(x, "muc#roomconfig_roomname", None, [config.name], label="Name")
    add_field(x, "muc#maxhistoryfetch", None, [str(config.history_length)], label="History length")
    add_field(
        x,
        "muc#roomconfig_allowinvites",
        "boolean",
        ["1" if config.allow_invites else "0"],
        label="Occupants may invite others",
    )
    add_field(x, "muc#roomconfig_allowpm", None, [config.allow_pm], label="Private messages")
    return x
