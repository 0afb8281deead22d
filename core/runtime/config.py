"""Configuration: one TOML file (``switchboard.toml``) plus environment overrides.

Where the file comes from, first match wins: the ``--config`` option, the environment variable
``SWITCHBOARD_CONFIG``, ``./switchboard.toml`` when it exists; otherwise only the defaults apply.

Every key can be overridden by an environment variable, which is how containers configure us:

* top-level keys: ``SWITCHBOARD_<KEY>`` (``SWITCHBOARD_DOMAIN=example.com``)
* section keys: ``SWITCHBOARD_<SECTION>_<KEY>`` (``SWITCHBOARD_C2S_PORT=5222``,
  ``SWITCHBOARD_COMPONENT_LISTENER_PORT=5347``)
* components: ``SWITCHBOARD_COMPONENTS_<NAME>_<KEY>`` (``SWITCHBOARD_COMPONENTS_MUC_SECRET=...``);
  a component named only in the environment is created, so a container needs no file at all
* ``SWITCHBOARD_S2S_HOSTS`` holds the whole table as ``domain=host:port,domain=host:port``

Environment values are parsed by the type of the key: booleans accept true/false/1/0/yes/no.
A port of 0 disables that listener.

``load_config`` reports every problem at once through ``ConfigError`` (one line each), so
``switchboard config check`` can explain a broken file in one go instead of one error per run.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.runtime.redis_server import SOCKET_NAME, URL_FILE_NAME
from core.xmpp.jid import JIDError, prep_domain

ENV_PREFIX = "SWITCHBOARD_"
CONFIG_ENV = "SWITCHBOARD_CONFIG"
DEFAULT_CONFIG_FILE = "switchboard.toml"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# SCRAM with fewer PBKDF2 rounds than RFC 7677's recommended minimum is not worth offering.
MIN_SCRAM_ITERATIONS = 4096
# RFC 6120 §13.12: a server must accept stanzas of at least 10000 bytes.
MIN_STANZA_SIZE = 10000
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
INSTANCE_MODES = ("replace", "shard")


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class RedisConfig:
    url: str = ""


@dataclass
class TLSConfig:
    cert: str = ""
    key: str = ""


@dataclass
class C2SConfig:
    interface: str = "0.0.0.0"
    port: int = 5222
    direct_tls_port: int = 5223
    require_encryption: bool = True
    allow_plain_without_tls: bool = False
    max_stanza_size: int = 262144
    negotiation_timeout: float = 30.0
    idle_timeout: float = 600.0
    max_resources: int = 10


@dataclass
class S2SConfig:
    interface: str = "0.0.0.0"
    port: int = 5269
    require_encryption: bool = True
    require_valid_certificates: bool = False
    trust_store: str = ""
    hosts: dict[str, str] = field(default_factory=dict)
    # XEP-0185: empty means one random secret shared by every node through Redis.
    dialback_secret: str = ""
    # Seconds from the first stanza for a domain to an authenticated link; then the queued
    # stanzas bounce with remote-server-timeout.
    connect_timeout: float = 30.0
    idle_timeout: float = 600.0
    max_stanza_size: int = 262144
    queue_limit: int = 1000


@dataclass
class ComponentListenerConfig:
    interface: str = "127.0.0.1"
    port: int = 5347
    grace_period: float = 30.0
    # Larger than c2s: a component relays client stanzas with additions of its own.
    max_stanza_size: int = 1048576


@dataclass
class ComponentConfig:
    domain: str = ""
    # After loading, ``secret`` holds the secret even when it came from ``secret_env``.
    secret: str = ""
    secret_env: str = ""
    instances: str = "replace"


@dataclass
class AuthConfig:
    scram_iterations: int = 4096
    max_failures: int = 3
    failure_delay: float = 1.0
    max_failures_per_minute: int = 20


@dataclass
class LogConfig:
    level: str = "info"


@dataclass
class RuntimeConfig:
    # The event loop under Twisted's asyncio reactor: "auto" takes uvloop when it is
    # installed (it is a dependency on Linux and macOS), else asyncio's own loop.
    event_loop: str = "auto"


@dataclass
class AdminConfig:
    interface: str = "127.0.0.1"
    port: int = 5380


@dataclass
class RosterConfig:
    """RFC 6121 §2.3.3: limits of one roster, refused with not-acceptable/policy-violation/
    resource-constraint when exceeded."""

    max_items: int = 1000
    max_name_length: int = 1023
    max_group_length: int = 1023
    max_groups: int = 64


@dataclass
class OfflineConfig:
    """XEP-0160: messages kept per account while it is offline; past this the sender gets
    service-unavailable."""

    max_messages: int = 1000


@dataclass
class MucConfig:
    """Limits of the MUC service (XEP-0045 §17), read by ``switchboard muc``; the component's
    address, secret and instance mode are in ``[components.muc]``."""

    max_rooms_per_user: int = 100  # rooms one bare JID may own at once; 0: no limit
    max_occupants: int = 200  # per room; a room's own maxusers may only lower it
    default_max_occupants: int = 50  # maxusers of a new room
    max_message_chars: int = 10000  # characters of a body or subject
    max_history: int = 100  # messages kept per room
    default_history: int = 20  # history length of a new room
    creators: str = "anyone"  # who may create rooms: anyone, local or nobody
    persistent_by_default: bool = False
    max_listed_rooms: int = 1000  # rooms listed in service discovery at most


MUC_CREATORS = ("anyone", "local", "nobody")


@dataclass
class ContactConfig:
    """XEP-0157 contact addresses, advertised in the server's disco#info (XEP-0128); each
    key is a list of URIs such as ``mailto:xmpp@example.com`` or ``xmpp:admin@example.com``."""

    abuse: list[str] = field(default_factory=list)
    admin: list[str] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)
    sales: list[str] = field(default_factory=list)
    security: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    support: list[str] = field(default_factory=list)


@dataclass
class Config:
    domain: str = "localhost"
    node_id: str = ""
    data_dir: str = "./data"
    redis: RedisConfig = field(default_factory=RedisConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    c2s: C2SConfig = field(default_factory=C2SConfig)
    s2s: S2SConfig = field(default_factory=S2SConfig)
    component_listener: ComponentListenerConfig = field(default_factory=ComponentListenerConfig)
    components: dict[str, ComponentConfig] = field(default_factory=dict)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    contact: ContactConfig = field(default_factory=ContactConfig)
    roster: RosterConfig = field(default_factory=RosterConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    muc: MucConfig = field(default_factory=MucConfig)


# Section name -> dataclass. ``components`` is a table of tables and handled on its own.
SECTIONS: dict[str, type] = {
    "redis": RedisConfig,
    "tls": TLSConfig,
    "c2s": C2SConfig,
    "s2s": S2SConfig,
    "component_listener": ComponentListenerConfig,
    "auth": AuthConfig,
    "log": LogConfig,
    "runtime": RuntimeConfig,
    "admin": AdminConfig,
    "contact": ContactConfig,
    "roster": RosterConfig,
    "offline": OfflineConfig,
    "muc": MucConfig,
}
TOP_LEVEL_KEYS = ("domain", "node_id", "data_dir")
COMPONENT_KEYS = tuple(f.name for f in fields(ComponentConfig))
# The dataclasses use postponed annotations, so field types are strings; map them once.
_TYPES: dict[str, type] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list[str]": list,
}
_TRUE = ("true", "1", "yes", "on")
# RFC 3986 §3.1: a scheme, a colon, then something.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_FALSE = ("false", "0", "no", "off")


def _key_type(cls: type, name: str) -> type:
    """The Python type of one scalar field, or ``dict`` for table-valued fields."""
    annotation = next(f.type for f in fields(cls) if f.name == name)
    return _TYPES.get(str(annotation), dict)


def _did_you_mean(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _type_name(expected: type) -> str:
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "a table",
        list: "a list of strings",
    }[expected]


def _check_toml_value(value: Any, expected: type) -> tuple[Any, str | None]:
    """Check a value read from TOML; returns (value, problem)."""
    # bool is a subclass of int in Python, but `port = true` is a mistake, not 1.
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, expected)
    if ok:
        return value, None
    return value, f"expected {_type_name(expected)}, got {value!r}"


def _parse_env_value(raw: str, expected: type) -> tuple[Any, str | None]:
    """Parse an environment string by the key's type; returns (value, problem)."""
    text = raw.strip()
    if expected is bool:
        if text.lower() in _TRUE:
            return True, None
        if text.lower() in _FALSE:
            return False, None
        return None, f"expected true/false/1/0/yes/no, got {raw!r}"
    if expected is int:
        try:
            return int(text), None
        except ValueError:
            return None, f"expected an integer, got {raw!r}"
    if expected is float:
        try:
            return float(text), None
        except ValueError:
            return None, f"expected a number, got {raw!r}"
    if expected is list:
        # A list in one variable: comma-separated (URIs do not need a bare comma).
        return [v.strip() for v in raw.split(",") if v.strip()], None
    if expected is dict:
        return _parse_env_table(raw)
    return raw, None


def _parse_env_table(raw: str) -> tuple[dict[str, str] | None, str | None]:
    """``a.example=host:5269,b.example=other:5270`` -> dict."""
    table: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            return None, f"expected domain=host:port[,domain=host:port...], got {raw!r}"
        table[name.strip()] = value.strip()
    return table, None


def find_config_file(path: str | None, env: Mapping[str, str] = os.environ) -> Path | None:
    """The file to read: ``path``, else ``$SWITCHBOARD_CONFIG``, else ``./switchboard.toml``."""
    if path:
        return Path(path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


class _Loader:
    """Collects problems while building a Config, so every mistake is reported at once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self.config = Config()

    # --- file -------------------------------------------------------------------------

    def read_file(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.problems.append(f"cannot read config file {path}: {reason}")
            return
        try:
            document = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            self.problems.append(f"{path}: not UTF-8 text")
            return
        except tomllib.TOMLDecodeError as exc:
            # The message already ends with "(at line N, column M)".
            self.problems.append(f"{path}: TOML syntax error: {exc}")
            return
        self.apply_document(document, str(path))

    def apply_document(self, document: dict[str, Any], where: str) -> None:
        known = [*TOP_LEVEL_KEYS, *SECTIONS, "components"]
        for name, value in document.items():
            if name in TOP_LEVEL_KEYS:
                self._set_toml(self.config, Config, name, value, f"{where}: {name}")
            elif name in SECTIONS:
                self._apply_section(name, value, where)
            elif name == "components":
                self._apply_components(value, where)
            else:
                hint = _did_you_mean(name, known)
                self.problems.append(f"{where}: unknown key '{name}'{hint}")

    def _apply_section(self, section: str, table: Any, where: str) -> None:
        if not isinstance(table, dict):
            self.problems.append(f"{where}: [{section}] must be a table, got {table!r}")
            return
        cls = SECTIONS[section]
        target = getattr(self.config, section)
        names = [f.name for f in fields(cls)]
        for name, value in table.items():
            if name not in names:
                hint = _did_you_mean(name, names)
                self.problems.append(f"{where}: unknown key '{section}.{name}'{hint}")
                continue
            self._set_toml(target, cls, name, value, f"{where}: {section}.{name}")

    def _apply_components(self, table: Any, where: str) -> None:
        if not isinstance(table, dict):
            self.problems.append(f"{where}: [components] must hold tables like [components.muc]")
            return
        for name, entry in table.items():
            if not isinstance(entry, dict):
                self.problems.append(
                    f"{where}: components.{name} must be a table with domain and secret"
                )
                continue
            component = self.config.components.setdefault(name, ComponentConfig())
            for key, value in entry.items():
                if key not in COMPONENT_KEYS:
                    hint = _did_you_mean(key, COMPONENT_KEYS)
                    self.problems.append(
                        f"{where}: unknown component key 'components.{name}.{key}'{hint}"
                    )
                    continue
                label = f"{where}: components.{name}.{key}"
                self._set_toml(component, ComponentConfig, key, value, label)

    def _set_toml(self, target: Any, cls: type, name: str, value: Any, label: str) -> None:
        expected = _key_type(cls, name)
        value, problem = _check_toml_value(value, expected)
        if problem:
            self.problems.append(f"{label}: {problem}")
        else:
            setattr(target, name, value)

    # --- environment ------------------------------------------------------------------

    def apply_env(self) -> None:
        exact = _env_names()
        for var in sorted(self.env):
            if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
                continue
            raw = self.env[var]
            if var in exact:
                section, name = exact[var]
                cls = SECTIONS[section] if section else Config
                target = getattr(self.config, section) if section else self.config
                self._set_env(target, cls, name, raw, var)
            elif var.startswith(f"{ENV_PREFIX}COMPONENTS_"):
                self._apply_component_env(var, raw)
            else:
                self._unknown_env(var, exact)

    def _apply_component_env(self, var: str, raw: str) -> None:
        rest = var[len(f"{ENV_PREFIX}COMPONENTS_") :]
        # Longest key first: SECRET_ENV must not be read as a component named X_SECRET's ENV.
        for key in sorted(COMPONENT_KEYS, key=len, reverse=True):
            suffix = f"_{key.upper()}"
            if rest.endswith(suffix) and len(rest) > len(suffix):
                env_name = rest[: -len(suffix)].lower()
                # Match an existing component case-insensitively, else create one.
                name = next((n for n in self.config.components if n.lower() == env_name), env_name)
                component = self.config.components.setdefault(name, ComponentConfig())
                self._set_env(component, ComponentConfig, key, raw, var)
                return
        hint = _did_you_mean(rest.rsplit("_", 1)[-1].lower(), COMPONENT_KEYS)
        self.problems.append(
            f"{var}: unknown component key; expected SWITCHBOARD_COMPONENTS_<NAME>_<KEY> "
            f"with KEY one of {', '.join(k.upper() for k in COMPONENT_KEYS)}{hint}"
        )

    def _unknown_env(self, var: str, exact: dict[str, tuple[str, str]]) -> None:
        # Other software may use SWITCHBOARD_* names for its own purposes, so only complain
        # when the name is plainly meant for us: it names one of our sections, or it is a
        # near miss of one of our names.
        rest = var[len(ENV_PREFIX) :]
        close = difflib.get_close_matches(var, list(exact), n=1, cutoff=0.85)
        section = next((s for s in SECTIONS if rest.startswith(f"{s.upper()}_")), None)
        if section is None and not close:
            return
        hint = f"; did you mean {close[0]}?" if close else ""
        self.problems.append(f"{var}: unknown configuration variable{hint}")

    def _set_env(self, target: Any, cls: type, name: str, raw: str, var: str) -> None:
        value, problem = _parse_env_value(raw, _key_type(cls, name))
        if problem:
            self.problems.append(f"{var}: {problem}")
        else:
            setattr(target, name, value)

    # --- validation -------------------------------------------------------------------

    def validate(self) -> None:
        config = self.config
        config.domain = self._domain(config.domain, "domain")
        if not config.data_dir:
            self.problems.append("data_dir: must not be empty")
        self._ports()
        self._ranges()
        if config.log.level.lower() not in LOG_LEVELS:
            self.problems.append(
                f"log.level: unknown level {config.log.level!r}; use one of {', '.join(LOG_LEVELS)}"
            )
        config.log.level = config.log.level.lower()
        loop = config.runtime.event_loop.lower()
        if loop not in EVENT_LOOPS:
            self.problems.append(
                f"runtime.event_loop: unknown loop {config.runtime.event_loop!r}; "
                f"use one of {', '.join(EVENT_LOOPS)}"
            )
        config.runtime.event_loop = loop
        if bool(config.tls.cert) != bool(config.tls.key):
            self.problems.append(
                "tls: set both cert and key, or neither for a self-signed certificate"
            )
        hosts: dict[str, str] = {}
        for name, address in config.s2s.hosts.items():
            domain = self._domain(name, f"s2s.hosts.{name}")
            if not isinstance(address, str) or not _valid_host_port(address):
                self.problems.append(f"s2s.hosts.{name}: expected 'host:port', got {address!r}")
            hosts[domain] = address
        config.s2s.hosts = hosts
        if config.s2s.trust_store and not Path(config.s2s.trust_store).exists():
            self.problems.append(
                f"s2s.trust_store: {config.s2s.trust_store} does not exist "
                "(a PEM file or a directory of PEM files; empty: the system's roots)"
            )
        self._components()
        self._contact()
        if not config.node_id:
            # Unique per process, readable in logs and in Redis session records.
            config.node_id = f"{socket.gethostname()}-{os.getpid()}"

    def _contact(self) -> None:
        # XEP-0157: each address is a URI (mailto:, xmpp:, https:, ...).
        for f in fields(ContactConfig):
            for address in getattr(self.config.contact, f.name):
                if not _URI.fullmatch(address):
                    self.problems.append(
                        f"contact.{f.name}: {address!r} is not a URI such as "
                        "'mailto:xmpp@example.com' or 'xmpp:admin@example.com'"
                    )

    def _domain(self, value: str, label: str) -> str:
        try:
            return prep_domain(value)
        except JIDError as exc:
            self.problems.append(f"{label}: invalid domain {value!r}: {exc}")
            return value

    def _ports(self) -> None:
        config = self.config
        ports = {
            "c2s.port": config.c2s.port,
            "c2s.direct_tls_port": config.c2s.direct_tls_port,
            "s2s.port": config.s2s.port,
            "component_listener.port": config.component_listener.port,
            "admin.port": config.admin.port,
        }
        used: dict[int, str] = {}
        for label, port in ports.items():
            if not 0 <= port <= 65535:
                self.problems.append(f"{label}: {port} is not a port (0-65535, 0 disables)")
            elif port and port in used:
                self.problems.append(f"{label}: port {port} is already used by {used[port]}")
            elif port:
                used[port] = label

    def _ranges(self) -> None:
        config = self.config
        minimums: list[tuple[str, float, float, str]] = [
            ("c2s.max_stanza_size", config.c2s.max_stanza_size, MIN_STANZA_SIZE, "RFC 6120"),
            ("c2s.max_resources", config.c2s.max_resources, 1, ""),
            ("auth.scram_iterations", config.auth.scram_iterations, MIN_SCRAM_ITERATIONS, ""),
            ("auth.max_failures", config.auth.max_failures, 1, ""),
            # 0 turns the per-account and per-address limiter off (benchmarks, trusted LANs).
            ("auth.max_failures_per_minute", config.auth.max_failures_per_minute, 0, ""),
            ("roster.max_items", config.roster.max_items, 1, ""),
            ("roster.max_name_length", config.roster.max_name_length, 1, ""),
            ("roster.max_group_length", config.roster.max_group_length, 1, ""),
            ("roster.max_groups", config.roster.max_groups, 0, ""),
            ("offline.max_messages", config.offline.max_messages, 0, ""),
            ("muc.max_rooms_per_user", config.muc.max_rooms_per_user, 0, ""),
            ("muc.max_occupants", config.muc.max_occupants, 1, ""),
            ("muc.default_max_occupants", config.muc.default_max_occupants, 1, ""),
            ("muc.max_message_chars", config.muc.max_message_chars, 1, ""),
            ("muc.max_history", config.muc.max_history, 0, ""),
            ("muc.default_history", config.muc.default_history, 0, ""),
            ("muc.max_listed_rooms", config.muc.max_listed_rooms, 0, ""),
            ("auth.failure_delay", config.auth.failure_delay, 0, ""),
            ("component_listener.grace_period", config.component_listener.grace_period, 0, ""),
            (
                "component_listener.max_stanza_size",
                config.component_listener.max_stanza_size,
                MIN_STANZA_SIZE,
                "RFC 6120",
            ),
            ("s2s.max_stanza_size", config.s2s.max_stanza_size, MIN_STANZA_SIZE, "RFC 6120"),
            ("s2s.queue_limit", config.s2s.queue_limit, 1, ""),
        ]
        for label, value, minimum, why in minimums:
            if value < minimum:
                because = f" ({why})" if why else ""
                self.problems.append(f"{label}: must be at least {minimum:g}{because}, got {value}")
        if config.muc.creators not in MUC_CREATORS:
            self.problems.append(
                f"muc.creators: expected one of {', '.join(MUC_CREATORS)}, "
                f"got {config.muc.creators!r}"
            )
        for label, value in (
            ("c2s.negotiation_timeout", config.c2s.negotiation_timeout),
            ("c2s.idle_timeout", config.c2s.idle_timeout),
            ("s2s.connect_timeout", config.s2s.connect_timeout),
            ("s2s.idle_timeout", config.s2s.idle_timeout),
        ):
            if value <= 0:
                self.problems.append(f"{label}: must be more than 0 seconds, got {value}")

    def _components(self) -> None:
        config = self.config
        seen: dict[str, str] = {}
        for name, component in config.components.items():
            label = f"components.{name}"
            if not component.domain:
                self.problems.append(f"{label}: domain is required")
            else:
                component.domain = self._domain(component.domain, f"{label}.domain")
                if component.domain == config.domain:
                    self.problems.append(
                        f"{label}.domain: {component.domain} is the server's own domain; "
                        "use a subdomain such as conference." + config.domain
                    )
                elif component.domain in seen:
                    self.problems.append(
                        f"{label}.domain: {component.domain} is already used by "
                        f"components.{seen[component.domain]}"
                    )
                else:
                    seen[component.domain] = name
            if component.secret and component.secret_env:
                self.problems.append(f"{label}: set secret or secret_env, not both")
            elif component.secret_env:
                secret = self.env.get(component.secret_env, "")
                if not secret:
                    self.problems.append(
                        f"{label}: missing secret: environment variable "
                        f"{component.secret_env} (secret_env) is not set or empty"
                    )
                component.secret = secret
            elif not component.secret:
                self.problems.append(
                    f"{label}: missing secret: set secret, or secret_env to the name of "
                    "an environment variable that holds it"
                )
            if component.instances not in INSTANCE_MODES:
                self.problems.append(
                    f"{label}.instances: expected 'replace' or 'shard', got {component.instances!r}"
                )


def _env_names() -> dict[str, tuple[str, str]]:
    """Every fixed environment variable name -> (section or "", key)."""
    names = {f"{ENV_PREFIX}{key.upper()}": ("", key) for key in TOP_LEVEL_KEYS}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            names[f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"] = (section, f.name)
    return names


def _valid_host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) <= 65535)


def load_config(path: str | None, env: Mapping[str, str] = os.environ) -> Config:
    """Read the file (see ``find_config_file``), apply the environment, validate.

    Raises ``ConfigError`` listing every problem found.
    """
    loader = _Loader(env)
    config_file = find_config_file(path, env)
    if config_file is not None:
        loader.read_file(config_file)
    loader.apply_env()
    loader.validate()
    if loader.problems:
        raise ConfigError(loader.problems)
    return loader.config


def check_config(path: str | None, env: Mapping[str, str] = os.environ) -> tuple[str, list[str]]:
    """For ``switchboard config check``: (what was read, problems); no problems means valid."""
    config_file = find_config_file(path, env)
    source = str(config_file) if config_file is not None else "defaults"
    try:
        load_config(path, env)
    except ConfigError as exc:
        return source, exc.problems
    return source, []


def redis_dir(config: Config) -> Path:
    """Where ``switchboard stack`` keeps its embedded Redis (AOF, socket, URL file)."""
    return Path(config.data_dir).absolute() / "redis"


def effective_redis_url(config: Config) -> str:
    """The Redis to use: the configured URL; else the embedded Redis of ``switchboard stack``
    for this data_dir (its URL file when it had to use TCP, else its unix socket) when present;
    else Redis's default address."""
    if config.redis.url:
        return config.redis.url
    directory = redis_dir(config)
    url_file = directory / URL_FILE_NAME
    try:
        url = url_file.read_text(encoding="utf-8").strip()
    except OSError:
        url = ""
    if url:
        return url
    sock = directory / SOCKET_NAME
    if sock.exists():
        return f"unix://{sock}"
    return DEFAULT_REDIS_URL


def tls_files(config: Config) -> tuple[Path, Path]:
    """Certificate and key paths: configured, else the self-signed pair under data_dir."""
    if config.tls.cert and config.tls.key:
        return Path(config.tls.cert), Path(config.tls.key)
    directory = Path(config.data_dir) / "tls"
    return directory / f"{config.domain}.crt", directory / f"{config.domain}.key"
