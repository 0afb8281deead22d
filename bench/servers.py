"""Provision and run the servers under test on loopback: Prosody (Debian's package) and
Switchboard, with equivalent settings.

Both get the same accounts (``u0``..: plain accounts; ``r0``..: accounts whose rosters hold
mutual subscriptions, RFC 6121 §3) with one password, the same SCRAM iteration count, plaintext
authentication allowed without TLS, no rate limits and no TLS requirement (the generator
chooses STARTTLS per run), and logging at warning level.

For the ``muc`` scenario both get a multi-user chat service (XEP-0045) at
``conference.<domain>``: Prosody its ``muc`` component in the same process, Switchboard its
``switchboard muc`` process linked to the core over XEP-0114. Either way rooms may be created
by local users only, new rooms keep no discussion history and nothing limits rooms or
occupants.

Prosody 0.12 refuses to run as root: as root it is started as the ``prosody`` user (the
supported way, what its init script does), with its configuration, data and certificate in a
temporary directory it owns.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import proc

ITERATIONS = 4096
PASSWORD = "bench-password"
DOMAIN = "localhost"
MUC_DOMAIN = f"conference.{DOMAIN}"
ROOT = Path(__file__).resolve().parent.parent
# The MUC instance's id (its resource in the component stream header, README "MUC").
MUC_INSTANCE = "bench"

PROSODY_CONFIG = """\
-- Written by bench/servers.py for a benchmark run: loopback only, no limits.
daemonize = false
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
network_backend = "epoll"
-- Lua 5.4's generational collector: about twice the throughput of the incremental default.
gc = {{ mode = "generational" }}
log = {{ {{ levels = {{ min = "warn" }}, to = "file", filename = "{dir}/prosody.log" }} }}
authentication = "internal_hashed"
default_iteration_count = {iterations}
storage = "internal"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_require_encryption = false
-- No rate limits (mod_limits is not loaded, and limits are empty).
limits = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "version"; "posix" }}
modules_disabled = {{ "limits"; "s2s" }}
certificates = "{dir}/certs"
VirtualHost "{domain}"
    ssl = {{ certificate = "{dir}/certs/{domain}.crt"; key = "{dir}/certs/{domain}.key" }}
"""

# Appended for the muc scenario: mod_muc of Prosody 0.12 (plugins/muc). Room creation by
# accounts of the host only, new rooms keep no history (history.lib.lua's default is 20), no
# cap on live rooms (mod_muc keeps 100 in memory by default); no message archive (mod_muc_mam
# is not loaded) and no mod_muc_limits. Rooms stay locked until configured (the default, as
# in Switchboard). Occupant ids (XEP-0421) stay on, as Switchboard sends them too.
PROSODY_MUC = """\
Component "{muc_domain}" "muc"
    restrict_room_creation = "local"
    muc_room_default_history_length = 0
    muc_room_cache_size = 100000
    muc_tombstones = false
"""

# The same for Switchboard's MUC instance ([muc] of switchboard.toml, README "MUC").
SWITCHBOARD_MUC_LIMITS = {
    "SWITCHBOARD_MUC_CREATORS": "local",
    "SWITCHBOARD_MUC_DEFAULT_HISTORY": "0",
    "SWITCHBOARD_MUC_MAX_ROOMS_PER_USER": "0",
    "SWITCHBOARD_MUC_MAX_OCCUPANTS": "100000",
    "SWITCHBOARD_MUC_DEFAULT_MAX_OCCUPANTS": "100000",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc_: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc_.poll() is not None:
            raise RuntimeError(f"the server exited with {proc_.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def user_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def ring_contacts(index: int, users: int, contacts: int) -> list[int]:
    """The ``contacts`` neighbours of ``index`` on a ring of ``users``: half on each side.

    The relation is symmetric, so every roster entry has its mirror and subscriptions can
    be mutual ("both"), as between real contacts."""
    if contacts >= users:
        raise ValueError("a roster cannot hold more contacts than there are other users")
    half = contacts // 2
    out = [(index + d) % users for d in range(1, half + 1)]
    out += [(index - d) % users for d in range(1, contacts - half + 1)]
    return out


def prosody_roster(domain: str, prefix: str, contacts: list[int]) -> str:
    """A roster in Prosody's internal storage format (a Lua chunk returning a table, as
    core/rostermanager.lua keeps it: metadata under ``[false]``, one entry per contact)."""
    lines = ["return {", "\t[false] = { version = 1; pending = {} };"]
    for c in contacts:
        lines.append(f'\t["{prefix}{c}@{domain}"] = {{ subscription = "both"; groups = {{}} }};')
    lines.append("};")
    return "\n".join(lines) + "\n"


def _encode(part: str) -> str:
    """Prosody's datamanager path encoding: every non-alphanumeric byte as %xx."""
    return "".join(c if c.isalnum() and c.isascii() else f"%{ord(c):02x}" for c in part)


@dataclass
class Accounts:
    """What both servers are provisioned with."""

    plain: int  # u0 .. u{plain-1}
    roster_users: int  # r0 .. r{roster_users-1}
    contacts: int
    password: str = PASSWORD
    domain: str = DOMAIN


def stop_process(p: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL when it has not exited within 15 s."""
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


class Server(abc.ABC):
    """A server under test: ``processes`` are the server's own (name, pid), whose CPU is the
    server's; ``aux_processes`` its helpers' (Redis), reported apart."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def processes(self) -> list[tuple[str, int]]:
        return [(self.name, self.proc.pid)] if self.proc is not None else []

    @property
    def aux_processes(self) -> list[tuple[str, int]]:
        return []

    @property
    def pids(self) -> list[int]:
        return [pid for _, pid in self.processes]

    @property
    def aux_pids(self) -> list[int]:
        return [pid for _, pid in self.aux_processes]

    @abc.abstractmethod
    def provision(self, accounts: Accounts) -> None:
        """Create the accounts (and rosters) in the server's own storage."""

    @abc.abstractmethod
    def start(self, cpus: set[int] | None, *, muc: bool = False) -> None:
        """Start the server pinned to ``cpus`` and wait until it listens; with ``muc``, with
        its multi-user chat service at ``MUC_DOMAIN``, empty, ready to take rooms."""

    def stop(self) -> None:
        p, self.proc = self.proc, None
        stop_process(p)

    def close(self) -> None:
        """Stop everything this server started."""
        self.stop()

    def log_tail(self) -> str:
        return ""


class Prosody(Server):
    """Prosody from Debian (``apt-get install prosody``), configured in ``workdir``."""

    name = "prosody"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.config = workdir / "prosody.cfg.lua"
        self.binary = shutil.which("prosody")
        self.ctl = shutil.which("prosodyctl")
        if self.binary is None or self.ctl is None:
            raise RuntimeError("prosody is not installed: apt-get install -y prosody")
        # Prosody refuses to run as root (mod_posix); its package creates this user.
        self.user: pwd.struct_passwd | None = None
        if os.getuid() == 0:
            self.user = pwd.getpwnam("prosody")

    def _own(self, path: Path) -> None:
        if self.user is not None:
            for p in [path, *path.rglob("*")]:
                os.chown(p, self.user.pw_uid, self.user.pw_gid)

    def _write_config(self, muc: bool = False) -> None:
        text = PROSODY_CONFIG.format(
            dir=self.workdir, port=self.port, domain=DOMAIN, iterations=ITERATIONS
        )
        if muc:
            text += PROSODY_MUC.format(muc_domain=MUC_DOMAIN)
        self.config.write_text(text)

    def provision(self, accounts: Accounts) -> None:
        from core.xmpp.tls import ensure_self_signed

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        certs = self.workdir / "certs"
        ensure_self_signed(certs / f"{DOMAIN}.crt", certs / f"{DOMAIN}.key", DOMAIN)
        host_dir = self.workdir / "data" / _encode(accounts.domain)
        (host_dir / "accounts").mkdir(parents=True, exist_ok=True)
        (host_dir / "roster").mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._own(self.workdir)
        # One account made by prosodyctl, in Prosody's own format; the others are copies:
        # the file holds salt, iteration count and keys, not the name, and every account
        # has the same password (so the generator's SCRAM client can cache its PBKDF2).
        out = subprocess.run(
            [
                self.ctl,
                "--config",
                str(self.config),
                "register",
                "template",
                DOMAIN,
                accounts.password,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        template = host_dir / "accounts" / "template.dat"
        if out.returncode != 0 or not template.exists():
            raise RuntimeError(f"prosodyctl register failed: {out.stdout}{out.stderr}")
        data = template.read_bytes()
        for name in user_names("u", accounts.plain) + user_names("r", accounts.roster_users):
            (host_dir / "accounts" / f"{_encode(name)}.dat").write_bytes(data)
        for i in range(accounts.roster_users):
            contacts = ring_contacts(i, accounts.roster_users, accounts.contacts)
            (host_dir / "roster" / f"r{i}.dat").write_text(
                prosody_roster(accounts.domain, "r", contacts)
            )
        self._own(self.workdir)

    def start(self, cpus: set[int] | None, *, muc: bool = False) -> None:
        # The MUC component only when asked for; its storage is emptied first: on shutdown
        # mod_muc saves every live room with its occupants, which must not come back.
        shutil.rmtree(self.workdir / "data" / _encode(MUC_DOMAIN), ignore_errors=True)
        self._write_config(muc)
        log = (self.workdir / "stdout.log").open("ab")
        kwargs: dict[str, object] = {}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        env = {**os.environ, "HOME": str(self.workdir)}
        self.proc = subprocess.Popen(
            [self.binary or "prosody", "--config", str(self.config), "-F"],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            **kwargs,  # type: ignore[arg-type]
        )
        log.close()
        proc.pin(self.proc.pid, cpus)
        wait_port(self.port, self.proc)

    def log_tail(self) -> str:
        path = self.workdir / "prosody.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class Switchboard(Server):
    """``switchboard core`` with its own Redis (EmbeddedRedis) in ``workdir``."""

    name = "switchboard"

    def __init__(
        self,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        tree: Path | None = None,
        loop: str = "",
    ) -> None:
        super().__init__(workdir)
        # "" runs `switchboard core` as shipped; "asyncio" or "uvloop" runs it through
        # bench/launch_core.py on that event loop.
        self.loop = loop
        self.redis: Any = None
        self.redis_url = ""
        self.extra_env = dict(extra_env or {})
        # The source tree the core runs from: this one, or another checkout to compare with.
        self.tree = (tree or ROOT).resolve()
        # The MUC process (muc scenario only), its link to the core and the link's secret.
        self.muc: subprocess.Popen[bytes] | None = None
        self.component_port = 0
        self.component_secret = secrets.token_hex(16)

    @property
    def processes(self) -> list[tuple[str, int]]:
        out = [("core", self.proc.pid)] if self.proc is not None else []
        if self.muc is not None:
            out.append(("muc", self.muc.pid))
        return out

    @property
    def aux_processes(self) -> list[tuple[str, int]]:
        pid = self.redis.pid if self.redis is not None else None
        return [("redis", pid)] if pid else []

    def provision(self, accounts: Accounts) -> None:
        from core.runtime.redis_server import EmbeddedRedis

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.redis = EmbeddedRedis(self.workdir / "redis")
        self.redis_url = self.redis.start()
        asyncio.run(seed_switchboard(self.redis_url, accounts))

    def env(self, muc: bool = False) -> dict[str, str]:
        """The environment of the core and, with ``muc``, of the MUC process: both read the
        same [components.muc] (domain, secret) and [component_listener]."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        env.update(
            SWITCHBOARD_DOMAIN=DOMAIN,
            SWITCHBOARD_REDIS_URL=self.redis_url,
            SWITCHBOARD_DATA_DIR=str(self.workdir / "data"),
            SWITCHBOARD_C2S_INTERFACE="127.0.0.1",
            SWITCHBOARD_C2S_PORT=str(self.port),
            SWITCHBOARD_C2S_DIRECT_TLS_PORT="0",
            SWITCHBOARD_C2S_REQUIRE_ENCRYPTION="false",
            SWITCHBOARD_C2S_ALLOW_PLAIN_WITHOUT_TLS="true",
            SWITCHBOARD_S2S_PORT="0",
            SWITCHBOARD_COMPONENT_LISTENER_PORT="0",
            SWITCHBOARD_ADMIN_PORT="0",
            SWITCHBOARD_AUTH_SCRAM_ITERATIONS=str(ITERATIONS),
            # The failure limiter stays on, as operators run it, with a limit no run reaches:
            # its Redis look-ups on every login are part of what is measured (0 turns it off).
            SWITCHBOARD_AUTH_MAX_FAILURES_PER_MINUTE="1000000",
            SWITCHBOARD_LOG_LEVEL="warning",
        )
        if muc:
            env.update(
                SWITCHBOARD_COMPONENT_LISTENER_INTERFACE="127.0.0.1",
                SWITCHBOARD_COMPONENT_LISTENER_PORT=str(self.component_port),
                SWITCHBOARD_COMPONENTS_MUC_DOMAIN=MUC_DOMAIN,
                SWITCHBOARD_COMPONENTS_MUC_SECRET=self.component_secret,
                **SWITCHBOARD_MUC_LIMITS,
            )
        if self.tree != ROOT:
            # The other tree's core first; bench/ (for the launcher) from this one.
            env["PYTHONPATH"] = f"{self.tree}{os.pathsep}{ROOT}"
        env.update(self.extra_env)
        return env

    def start(self, cpus: set[int] | None, *, muc: bool = False) -> None:
        if muc:
            self.component_port = free_port()
            # Rooms of an earlier run (with occupants long gone) must not take part.
            clear_muc_rooms(self.redis_url)
        env = self.env(muc)
        if self.loop:
            command = [sys.executable, "-m", "bench.launch_core", "--loop", self.loop]
        else:
            command = [sys.executable, "-m", "core.cli", "core"]
        self.proc = self._spawn(command, env, "core.log", cpus)
        if self.redis is not None and self.redis.pid:
            proc.pin(self.redis.pid, cpus)
        wait_port(self.port, self.proc)
        if muc:
            try:
                self._start_muc(env, cpus)
            except BaseException:
                self.stop()
                raise

    def _start_muc(self, env: dict[str, str], cpus: set[int] | None) -> None:
        """``switchboard muc`` beside the core, on the server's CPU; returns once its link
        is live (the core records it in Redis after the handshake)."""
        command = [sys.executable, "-m", "core.cli", "muc", "--instance", MUC_INSTANCE]
        self.muc = self._spawn(command, env, "muc.log", cpus)
        wait_link(self.redis_url, MUC_DOMAIN, MUC_INSTANCE, self.muc)

    def _spawn(
        self, command: list[str], env: dict[str, str], log_name: str, cpus: set[int] | None
    ) -> subprocess.Popen[bytes]:
        """A process of this tree, its output appended to ``log_name``, pinned to ``cpus``."""
        with (self.workdir / log_name).open("ab") as log:
            child = subprocess.Popen(
                command, cwd=self.tree, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        proc.pin(child.pid, cpus)
        return child

    def stop(self) -> None:
        # The MUC process first: it leaves the core on SIGTERM, then the core goes.
        m, self.muc = self.muc, None
        stop_process(m)
        super().stop()

    def close(self) -> None:
        self.stop()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def log_tail(self) -> str:
        out = ""
        for name in ("core.log", "muc.log"):
            path = self.workdir / name
            if path.exists():
                out += f"{name}: " + path.read_text(errors="replace")[-2000:]
        return out


def clear_muc_rooms(url: str) -> int:
    """Delete every MUC key (``muc:*``, components/muc/store.py) from Switchboard's Redis;
    returns how many there were."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        found = list(client.scan_iter(match=b"muc:*", count=1000))
        for i in range(0, len(found), 1000):
            client.delete(*found[i : i + 1000])
        return len(found)
    finally:
        client.close()


def wait_link(
    url: str,
    domain: str,
    instance: str,
    proc_: subprocess.Popen[bytes],
    timeout: float = 20.0,
) -> None:
    """Wait until the core records the live link of ``instance`` for ``domain`` in Redis
    (``component-links:{<domain>}``, README "Components")."""
    import redis

    from core.storage import keys

    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc_.poll() is not None:
                raise RuntimeError(f"the MUC process exited with {proc_.returncode}")
            if client.hexists(keys.component_links(domain), instance):
                return
            time.sleep(0.05)
    finally:
        client.close()
    raise TimeoutError(f"the MUC instance {instance} did not link to the core for {domain}")


async def seed_switchboard(url: str, accounts: Accounts) -> None:
    """Write the accounts in the layout core/storage/accounts.py reads, in one pipeline:
    credentials are derived once (PBKDF2 is slow on purpose) and shared by all accounts,
    which have the same password. Rosters are written when the roster store exists."""
    import redis.asyncio

    from core.storage import keys
    from core.storage.accounts import HASH_NAMES
    from core.xmpp.sasl import derive_scram_credentials

    fields: dict[str, str] = {"created": str(int(time.time()))}
    for name in HASH_NAMES:
        creds = derive_scram_credentials(accounts.password, name, iterations=ITERATIONS)
        fields.update({f"{name}:{k}": v for k, v in creds.to_dict().items()})
    client = redis.asyncio.Redis.from_url(url)
    try:
        pipe = client.pipeline(transaction=False)
        names = user_names("u", accounts.plain) + user_names("r", accounts.roster_users)
        for name in names:
            pipe.hset(keys.account(f"{name}@{accounts.domain}"), mapping=fields)
        pipe.sadd(keys.accounts_index(accounts.domain), *names)
        await pipe.execute()
        await seed_switchboard_rosters(client, accounts)
    finally:
        await client.aclose()


def switchboard_has_presence() -> bool:
    """Whether this tree has the roster store and the presence module (RFC 6121)."""
    import importlib.util

    return all(
        importlib.util.find_spec(m) is not None
        for m in ("core.storage.roster", "core.modules.presence", "core.modules.roster")
    )


def switchboard_has_muc() -> bool:
    """Whether this tree has the MUC component (``switchboard muc``, XEP-0045)."""
    import importlib.util

    return importlib.util.find_spec("components.muc.app") is not None


async def seed_switchboard_rosters(client: Any, accounts: Accounts) -> bool:
    """Mutual-subscription rosters for r0.. through core/storage/roster.py; False when this
    tree has no roster store or presence module yet."""
    if accounts.roster_users == 0 or not switchboard_has_presence():
        return False
    from core.storage.roster import RosterItem, RosterStore

    store = RosterStore(client)
    domain = accounts.domain
    for i in range(accounts.roster_users):
        contacts = ring_contacts(i, accounts.roster_users, accounts.contacts)
        items: dict[str, RosterItem | None] = {
            f"r{c}@{domain}": RosterItem(jid=f"r{c}@{domain}", subscription="both")
            for c in contacts
        }
        await store.write(f"r{i}@{domain}", version="bench-1", items=items)
    return True
