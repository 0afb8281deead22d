"""Configuration: TOML file, environment overrides, validation messages, the Redis URL rule."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from core.runtime.config import (
    DEFAULT_REDIS_URL,
    ComponentConfig,
    Config,
    ConfigError,
    check_config,
    effective_redis_url,
    find_config_file,
    load_config,
    tls_files,
)

SECRET = {"SECRET": "s3cret"}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "switchboard.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def problems(path: str | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return info.value.problems


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A switchboard.toml in the directory the tests run from must not leak into them.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


def test_defaults_without_file() -> None:
    """With no file and no environment, the documented defaults apply."""
    config = load_config(None, {})
    assert config.domain == "localhost"
    assert config.data_dir == "./data"
    assert config.redis.url == ""
    assert config.c2s.port == 5222
    assert config.c2s.direct_tls_port == 5223
    assert config.c2s.require_encryption is True
    assert config.c2s.max_stanza_size == 262144
    assert config.s2s.port == 5269
    assert config.s2s.hosts == {}
    assert config.component_listener.interface == "127.0.0.1"
    assert config.component_listener.port == 5347
    assert config.auth.scram_iterations == 4096
    assert config.auth.max_failures_per_minute == 20
    assert config.log.level == "info"
    assert config.admin.port == 5380
    assert config.components == {}


def test_node_id_defaults_to_host_and_pid() -> None:
    """An empty node_id becomes <hostname>-<pid>; a configured one is kept."""
    assert load_config(None, {}).node_id == f"{socket.gethostname()}-{os.getpid()}"
    assert load_config(None, {"SWITCHBOARD_NODE_ID": "n1"}).node_id == "n1"


def test_file_values(tmp_path: Path) -> None:
    """Values from every kind of section are read from the file, with types kept."""
    path = write(
        tmp_path,
        """
domain = "Example.COM"
data_dir = "/var/lib/switchboard"

[redis]
url = "redis://db:6379/1"

[c2s]
port = 15222
require_encryption = false
negotiation_timeout = 5

[s2s]
hosts = { "other.example" = "10.0.0.2:5269" }

[components.muc]
domain = "conference.example.com"
secret = "abc"
instances = "shard"

[log]
level = "DEBUG"
""",
    )
    config = load_config(path, {})
    assert config.domain == "example.com"  # prepared (RFC 7622 domainpart)
    assert config.data_dir == "/var/lib/switchboard"
    assert config.redis.url == "redis://db:6379/1"
    assert config.c2s.port == 15222
    assert config.c2s.require_encryption is False
    assert config.c2s.negotiation_timeout == 5.0
    assert isinstance(config.c2s.negotiation_timeout, float)
    assert config.s2s.hosts == {"other.example": "10.0.0.2:5269"}
    assert config.components == {
        "muc": ComponentConfig(domain="conference.example.com", secret="abc", instances="shard")
    }
    assert config.log.level == "debug"


def test_env_overrides_file(tmp_path: Path) -> None:
    """Environment variables override the file, parsed by the key's type."""
    path = write(tmp_path, "[c2s]\nport = 15222\nrequire_encryption = true\n")
    config = load_config(
        path,
        {
            "SWITCHBOARD_DOMAIN": "env.example",
            "SWITCHBOARD_C2S_PORT": "25222",
            "SWITCHBOARD_C2S_REQUIRE_ENCRYPTION": "no",
            "SWITCHBOARD_C2S_IDLE_TIMEOUT": "12.5",
            "SWITCHBOARD_COMPONENT_LISTENER_PORT": "0",
            "SWITCHBOARD_S2S_HOSTS": "a.example=h1:5269, b.example=h2:5270",
        },
    )
    assert config.domain == "env.example"
    assert config.c2s.port == 25222
    assert config.c2s.require_encryption is False
    assert config.c2s.idle_timeout == 12.5
    assert config.component_listener.port == 0
    assert config.s2s.hosts == {"a.example": "h1:5269", "b.example": "h2:5270"}


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("no", False)],
)
def test_env_booleans(raw: str, value: bool) -> None:
    """Booleans from the environment accept true/false/1/0/yes/no in any case."""
    config = load_config(None, {"SWITCHBOARD_C2S_ALLOW_PLAIN_WITHOUT_TLS": raw})
    assert config.c2s.allow_plain_without_tls is value


def test_env_wrong_types() -> None:
    """Unparseable environment values are reported with the variable's name."""
    found = problems(
        None,
        {
            "SWITCHBOARD_C2S_PORT": "abc",
            "SWITCHBOARD_C2S_REQUIRE_ENCRYPTION": "maybe",
            "SWITCHBOARD_AUTH_FAILURE_DELAY": "soon",
            "SWITCHBOARD_S2S_HOSTS": "nonsense",
        },
    )
    assert "SWITCHBOARD_C2S_PORT: expected an integer, got 'abc'" in found
    assert any(
        p.startswith("SWITCHBOARD_C2S_REQUIRE_ENCRYPTION: expected true/false") for p in found
    )
    assert "SWITCHBOARD_AUTH_FAILURE_DELAY: expected a number, got 'soon'" in found
    assert any(p.startswith("SWITCHBOARD_S2S_HOSTS: expected domain=host:port") for p in found)
    assert len(found) == 4


def test_components_from_env_only() -> None:
    """A component can be defined entirely in the environment, secret_env included."""
    config = load_config(
        None,
        {
            "SWITCHBOARD_COMPONENTS_MUC_DOMAIN": "conference.localhost",
            "SWITCHBOARD_COMPONENTS_MUC_SECRET_ENV": "MUC_SECRET",
            "MUC_SECRET": "from-env",
            "SWITCHBOARD_COMPONENTS_MY_PUBSUB_DOMAIN": "pubsub.localhost",
            "SWITCHBOARD_COMPONENTS_MY_PUBSUB_SECRET": "x",
            "SWITCHBOARD_COMPONENTS_MY_PUBSUB_INSTANCES": "shard",
        },
    )
    muc = config.components["muc"]
    assert (muc.domain, muc.secret, muc.secret_env) == (
        "conference.localhost",
        "from-env",
        "MUC_SECRET",
    )
    assert config.components["my_pubsub"].instances == "shard"


def test_component_env_overrides_file_component(tmp_path: Path) -> None:
    """SWITCHBOARD_COMPONENTS_<NAME>_<KEY> changes the file's component of that name."""
    path = write(tmp_path, '[components.MUC]\ndomain = "conference.localhost"\nsecret = "a"\n')
    config = load_config(path, {"SWITCHBOARD_COMPONENTS_MUC_SECRET": "b"})
    assert list(config.components) == ["MUC"]
    assert config.components["MUC"].secret == "b"


def test_unknown_keys_suggest_close_names(tmp_path: Path) -> None:
    """Unknown keys are reported with a 'did you mean' when a known key is close."""
    path = write(
        tmp_path,
        """
domian = "x"
[c2s]
prot = 1
[components.muc]
domain = "conference.localhost"
secret = "a"
instance = "shard"
[nonsense]
""",
    )
    found = problems(path)
    assert f"{path}: unknown key 'domian'; did you mean 'domain'?" in found
    assert f"{path}: unknown key 'c2s.prot'; did you mean 'port'?" in found
    assert (
        f"{path}: unknown component key 'components.muc.instance'; did you mean 'instances'?"
        in found
    )
    assert f"{path}: unknown key 'nonsense'" in found


def test_unknown_env_for_our_sections() -> None:
    """Misspelt variables for our sections are reported; unrelated SWITCHBOARD_* ones are not."""
    found = problems(
        None,
        {
            "SWITCHBOARD_C2S_PROT": "1",
            "SWITCHBOARD_DOMIAN": "x",
            "SWITCHBOARD_COMPONENTS_MUC_SECRT": "x",
            "SWITCHBOARD_SOMETHING_ELSE": "ignored",
        },
    )
    assert (
        "SWITCHBOARD_C2S_PROT: unknown configuration variable; did you mean SWITCHBOARD_C2S_PORT?"
        in found
    )
    assert (
        "SWITCHBOARD_DOMIAN: unknown configuration variable; did you mean SWITCHBOARD_DOMAIN?"
        in found
    )
    assert any(
        p.startswith("SWITCHBOARD_COMPONENTS_MUC_SECRT: unknown component key") for p in found
    )
    assert len(found) == 3


def test_wrong_types_in_file(tmp_path: Path) -> None:
    """Type mismatches name the key and the value; true is not an integer."""
    path = write(
        tmp_path,
        """
domain = 5
[c2s]
port = true
require_encryption = "yes"
idle_timeout = "long"
[log]
level = 3
[admin]
""",
    )
    found = problems(path)
    assert f"{path}: domain: expected a string, got 5" in found
    assert f"{path}: c2s.port: expected an integer, got True" in found
    assert f"{path}: c2s.require_encryption: expected true or false, got 'yes'" in found
    assert f"{path}: c2s.idle_timeout: expected a number, got 'long'" in found
    assert f"{path}: log.level: expected a string, got 3" in found
    assert len(found) == 5


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    """A section given as a scalar is reported, not crashed on."""
    path = write(tmp_path, 'c2s = 5\ncomponents = "muc"\n')
    found = problems(path)
    assert f"{path}: [c2s] must be a table, got 5" in found
    assert any("[components] must hold tables" in p for p in found)


def test_port_ranges_and_conflicts() -> None:
    """Ports must be 0-65535; two listeners cannot share one; 0 disables and never conflicts."""
    found = problems(
        None,
        {
            "SWITCHBOARD_C2S_PORT": "70000",
            "SWITCHBOARD_S2S_PORT": "-1",
            "SWITCHBOARD_ADMIN_PORT": "5223",
        },
    )
    assert "c2s.port: 70000 is not a port (0-65535, 0 disables)" in found
    assert "s2s.port: -1 is not a port (0-65535, 0 disables)" in found
    assert "admin.port: port 5223 is already used by c2s.direct_tls_port" in found
    config = load_config(
        None, {"SWITCHBOARD_ADMIN_PORT": "0", "SWITCHBOARD_COMPONENT_LISTENER_PORT": "0"}
    )
    assert config.admin.port == 0


def test_invalid_domains() -> None:
    """Domains are checked with prep_domain: server, components and s2s hosts."""
    found = problems(
        None,
        {
            "SWITCHBOARD_DOMAIN": "bad domain",
            "SWITCHBOARD_S2S_HOSTS": "also bad=h:1,ok.example=nohost",
        },
    )
    assert any(p.startswith("domain: invalid domain 'bad domain'") for p in found)
    assert any(p.startswith("s2s.hosts.also bad: invalid domain") for p in found)
    assert "s2s.hosts.ok.example: expected 'host:port', got 'nohost'" in found


def test_component_problems() -> None:
    """Missing domain, missing secret, bad instances and a reused domain are all reported."""
    found = problems(
        None,
        {
            "SWITCHBOARD_COMPONENTS_A_SECRET": "x",
            "SWITCHBOARD_COMPONENTS_B_DOMAIN": "b.localhost",
            "SWITCHBOARD_COMPONENTS_C_DOMAIN": "c.localhost",
            "SWITCHBOARD_COMPONENTS_C_SECRET_ENV": "UNSET_VARIABLE",
            "SWITCHBOARD_COMPONENTS_D_DOMAIN": "b.localhost",
            "SWITCHBOARD_COMPONENTS_D_SECRET": "x",
            "SWITCHBOARD_COMPONENTS_D_INSTANCES": "many",
            "SWITCHBOARD_COMPONENTS_E_DOMAIN": "localhost",
            "SWITCHBOARD_COMPONENTS_E_SECRET": "x",
            "SWITCHBOARD_COMPONENTS_E_SECRET_ENV": "SECRET",
            **SECRET,
        },
    )
    assert "components.a: domain is required" in found
    assert any(p.startswith("components.b: missing secret: set secret") for p in found)
    assert any(
        p.startswith("components.c: missing secret: environment variable UNSET_VARIABLE")
        for p in found
    )
    assert "components.d.instances: expected 'replace' or 'shard', got 'many'" in found
    assert "components.d.domain: b.localhost is already used by components.b" in found
    assert any(p.startswith("components.e.domain: localhost is the server's own") for p in found)
    assert "components.e: set secret or secret_env, not both" in found


def test_limits() -> None:
    """scram_iterations below 4096 and other out-of-range limits are refused."""
    found = problems(
        None,
        {
            "SWITCHBOARD_AUTH_SCRAM_ITERATIONS": "1000",
            "SWITCHBOARD_AUTH_MAX_FAILURES": "0",
            "SWITCHBOARD_C2S_MAX_STANZA_SIZE": "100",
            "SWITCHBOARD_C2S_NEGOTIATION_TIMEOUT": "0",
            "SWITCHBOARD_LOG_LEVEL": "loud",
            "SWITCHBOARD_RUNTIME_EVENT_LOOP": "twisted",
            "SWITCHBOARD_TLS_CERT": "/only/the/cert.pem",
        },
    )
    assert "auth.scram_iterations: must be at least 4096, got 1000" in found
    assert "auth.max_failures: must be at least 1, got 0" in found
    assert "c2s.max_stanza_size: must be at least 10000 (RFC 6120), got 100" in found
    assert "c2s.negotiation_timeout: must be more than 0 seconds, got 0.0" in found
    assert any(p.startswith("log.level: unknown level 'loud'") for p in found)
    assert any(p.startswith("runtime.event_loop: unknown loop 'twisted'") for p in found)
    assert any(p.startswith("tls: set both cert and key") for p in found)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    """A TOML syntax error is one problem giving the file and the line."""
    path = write(tmp_path, 'domain = "a"\n[c2s\nport = 1\n')
    found = problems(path)
    assert len(found) == 1
    assert found[0].startswith(f"{path}: TOML syntax error:")
    assert "line 2" in found[0]


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing or unreadable file given explicitly is a problem, not the defaults."""
    missing = str(tmp_path / "nope.toml")
    assert problems(missing) == [f"cannot read config file {missing}: No such file or directory"]
    assert problems(str(tmp_path))[0].startswith(f"cannot read config file {tmp_path}:")


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    """File and environment problems come together, one line each."""
    path = write(tmp_path, "[c2s]\nport = 99999\n")
    found = problems(path, {"SWITCHBOARD_AUTH_SCRAM_ITERATIONS": "1"})
    assert len(found) == 2
    assert all("\n" not in p for p in found)


def test_config_file_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config wins over SWITCHBOARD_CONFIG, which wins over ./switchboard.toml."""
    assert find_config_file(None, {}) is None
    Path("switchboard.toml").write_text('domain = "cwd.example"\n')
    assert load_config(None, {}).domain == "cwd.example"
    env_file = tmp_path / "env.toml"
    env_file.write_text('domain = "env.example"\n')
    env = {"SWITCHBOARD_CONFIG": str(env_file)}
    assert load_config(None, env).domain == "env.example"
    cli_file = tmp_path / "cli.toml"
    cli_file.write_text('domain = "cli.example"\n')
    assert load_config(str(cli_file), env).domain == "cli.example"


def test_check_config(tmp_path: Path) -> None:
    """check_config names what it read and returns the problems instead of raising."""
    assert check_config(None, {}) == ("defaults", [])
    good = write(tmp_path, 'domain = "example.com"\n')
    assert check_config(good, {}) == (good, [])
    bad = tmp_path / "bad.toml"
    bad.write_text("[c2s]\nport = 99999\n")
    source, found = check_config(str(bad), {})
    assert source == str(bad)
    assert found == ["c2s.port: 99999 is not a port (0-65535, 0 disables)"]


def test_effective_redis_url(tmp_path: Path) -> None:
    """Configured URL, else the stack's URL file, else its socket, else Redis's default."""
    config = Config(data_dir=str(tmp_path / "data"))
    assert effective_redis_url(config) == DEFAULT_REDIS_URL
    redis_dir = tmp_path / "data" / "redis"
    redis_dir.mkdir(parents=True)
    (redis_dir / "redis.sock").touch()
    assert effective_redis_url(config) == f"unix://{redis_dir / 'redis.sock'}"
    (redis_dir / "url").write_text("redis://127.0.0.1:40000/0\n")
    assert effective_redis_url(config) == "redis://127.0.0.1:40000/0"
    config.redis.url = "redis://configured:6379/0"
    assert effective_redis_url(config) == "redis://configured:6379/0"


def test_tls_files_default_under_data_dir() -> None:
    """Without cert/key the self-signed pair lives in <data_dir>/tls/<domain>.crt/.key."""
    config = load_config(None, {"SWITCHBOARD_DOMAIN": "example.com"})
    assert tls_files(config) == (
        Path("./data/tls/example.com.crt"),
        Path("./data/tls/example.com.key"),
    )
    config.tls.cert, config.tls.key = "/c.pem", "/k.pem"
    assert tls_files(config) == (Path("/c.pem"), Path("/k.pem"))


def test_roster_and_offline_limits_reach_their_modules() -> None:
    """[roster] and [offline] settings, from the environment too, are what the modules use."""
    from core.modules.offline import max_messages
    from core.modules.roster import RosterLimits

    config = load_config(
        None, env={"SWITCHBOARD_ROSTER_MAX_ITEMS": "5", "SWITCHBOARD_OFFLINE_MAX_MESSAGES": "7"}
    )
    assert RosterLimits.from_config(config).max_items == 5
    assert max_messages(config) == 7


def test_a_zero_failure_rate_limit_turns_the_limiter_off() -> None:
    """auth.max_failures_per_minute = 0 is accepted (documented as disabling the limiter)."""
    assert load_config(None, env={"SWITCHBOARD_AUTH_MAX_FAILURES_PER_MINUTE": "0"})
