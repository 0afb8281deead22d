"""The ``switchboard`` command.

    switchboard [--config PATH] core | stack
    switchboard [--config PATH] muc [--instance ID]
    switchboard [--config PATH] user add|passwd NAME [--password P]
    switchboard [--config PATH] user del NAME
    switchboard [--config PATH] user list [--domain D]
    switchboard [--config PATH] config check

Failures print one line on stderr saying what went wrong and what to do, never a traceback.
Exit codes: 0 success, 1 the command failed while running (Redis unreachable, the account
exists or does not), 2 the command or the configuration is wrong (usage, config problems,
invalid name or password).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from core.runtime.config import Config
    from core.storage.accounts import AccountStore

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# How long `user` commands wait for Redis before saying it is unreachable.
REDIS_TIMEOUT = 2.0


class CommandError(Exception):
    """A failure to report as one line, with the exit code to use."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line instead of usage text + error."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see `{self.prog} --help`)", EXIT_USAGE)


def _build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the subcommand; SUPPRESS keeps a later default
    # from overwriting a value given earlier.
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="configuration file (default: $SWITCHBOARD_CONFIG, else ./switchboard.toml)",
    )
    parser = _Parser(prog="switchboard", description="Switchboard XMPP server")
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="configuration file (default: $SWITCHBOARD_CONFIG, else ./switchboard.toml)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    commands.add_parser("core", parents=[config_option], help="run a core router node")
    muc = commands.add_parser(
        "muc", parents=[config_option], help="run a multi-user chat instance (XEP-0045)"
    )
    muc.add_argument(
        "--instance",
        metavar="ID",
        default=None,
        help="this instance's id among shard instances (default: <hostname>-<pid>)",
    )
    commands.add_parser(
        "stack", parents=[config_option], help="run everything, with an embedded Redis"
    )

    user = commands.add_parser("user", help="manage accounts")
    user_commands = user.add_subparsers(dest="user_command", metavar="ACTION")
    user_commands.required = True
    add = user_commands.add_parser("add", parents=[config_option], help="create an account")
    passwd = user_commands.add_parser("passwd", parents=[config_option], help="set a password")
    for sub in (add, passwd):
        sub.add_argument("name", metavar="NAME", help="alice or alice@domain")
        sub.add_argument(
            "--password",
            help="the password (default: one line from stdin when piped, else a prompt)",
        )
    delete = user_commands.add_parser("del", parents=[config_option], help="delete an account")
    delete.add_argument("name", metavar="NAME", help="alice or alice@domain")
    listing = user_commands.add_parser("list", parents=[config_option], help="list accounts")
    listing.add_argument("--domain", help="the domain (default: the configured domain)")

    config = commands.add_parser("config", help="configuration")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION")
    config_commands.required = True
    config_commands.add_parser("check", parents=[config_option], help="validate the configuration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``switchboard`` console script; returns the exit code."""
    try:
        args = _build_parser().parse_args(argv)
    except CommandError as exc:
        return _fail(str(exc), exc.code)
    except SystemExit as exc:
        # --help and --version exit through argparse; their code is what we return.
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "core": _run_core,
        "muc": _run_muc,
        "stack": _run_stack,
        "user": _run_user,
        "config": _run_config,
    }
    try:
        return handlers[args.command](args)
    except CommandError as exc:
        return _fail(str(exc), exc.code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:
        # Last resort: still one line, naming the exception so a report is actionable.
        return _fail(f"unexpected error: {type(exc).__name__}: {exc}", EXIT_FAILED)


def _fail(message: str, code: int) -> int:
    print(f"switchboard: {message}", file=sys.stderr)
    return code


# --- configuration --------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> Config:
    from core.runtime.config import ConfigError, load_config

    try:
        return load_config(args.config, os.environ)
    except ConfigError as exc:
        if len(exc.problems) == 1:
            raise CommandError(f"configuration error: {exc.problems[0]}", EXIT_USAGE) from None
        # Several problems: one line each, then the exit.
        for problem in exc.problems[:-1]:
            print(f"switchboard: configuration error: {problem}", file=sys.stderr)
        raise CommandError(f"configuration error: {exc.problems[-1]}", EXIT_USAGE) from None


def _run_config(args: argparse.Namespace) -> int:
    from core.runtime.config import check_config

    source, problems = check_config(args.config, os.environ)
    if not problems:
        print(f"config ok: {source}")
        return EXIT_OK
    for problem in problems:
        print(problem, file=sys.stderr)
    return EXIT_USAGE


# --- long-running processes ---------------------------------------------------------------


def _run_core(args: argparse.Namespace) -> int:
    config = _load(args)
    from core.runtime.config import effective_redis_url
    from core.runtime.reactor import install

    # Before anything from core.server: importing it may import twisted.internet.reactor.
    install(config.runtime.event_loop)
    from core.server import run_core

    config.redis.url = effective_redis_url(config)
    return run_core(config)


def _run_muc(args: argparse.Namespace) -> int:
    config = _load(args)
    if "muc" not in config.components:
        raise CommandError(
            "no [components.muc] in the configuration: set its domain and secret "
            "(SWITCHBOARD_COMPONENTS_MUC_DOMAIN, SWITCHBOARD_COMPONENTS_MUC_SECRET)",
            EXIT_USAGE,
        )
    from core.runtime.reactor import install

    # Before anything from components.muc: importing Twisted modules may install a reactor.
    install(config.runtime.event_loop)
    from components.muc.app import run_muc
    from components.muc.settings import SettingsError

    try:
        return run_muc(config, instance=args.instance)
    except SettingsError as exc:
        raise CommandError(f"configuration error: {exc}", EXIT_USAGE) from None


def _run_stack(args: argparse.Namespace) -> int:
    config = _load(args)
    from core.runtime.reactor import install

    install(config.runtime.event_loop)
    from core.runtime.redis_server import RedisStartError
    from core.stack import run_stack

    try:
        return run_stack(config, config_path=args.config)
    except RedisStartError as exc:
        raise CommandError(f"cannot start the embedded Redis: {exc}") from None


# --- accounts -------------------------------------------------------------------------------


def _split_name(name: str, default_domain: str) -> tuple[str, str]:
    local, sep, domain = name.partition("@")
    if not local:
        raise CommandError(f"invalid user name {name!r}: expected alice or alice@domain", 2)
    return local, (domain if sep else default_domain)


def _read_password(given: str | None) -> str:
    if given is not None:
        return given
    if sys.stdin is None:
        raise CommandError("no password given: use --password or pipe it on stdin", EXIT_USAGE)
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Password (again): ")
    if first != second:
        raise CommandError("the passwords do not match; nothing changed", EXIT_USAGE)
    return first


def _run_user(args: argparse.Namespace) -> int:
    config = _load(args)
    from core.runtime.config import effective_redis_url

    url = effective_redis_url(config)
    action: str = args.user_command
    password: str | None = None
    if action in ("add", "passwd"):
        password = _read_password(args.password)
    return asyncio.run(_user_command(action, args, config, url, password))


async def _user_command(
    action: str, args: argparse.Namespace, config: Config, url: str, password: str | None
) -> int:
    import redis.exceptions

    from core.runtime.redis import connect, redact_url, wait_ready
    from core.storage.accounts import (
        AccountExists,
        AccountStore,
        InvalidPassword,
        InvalidUsername,
        NoSuchAccount,
    )
    from core.xmpp.jid import JIDError

    shown = redact_url(url)
    try:
        client = connect(url)
    except ValueError as exc:
        raise CommandError(
            f"invalid Redis URL {shown}: {exc}; fix redis.url or SWITCHBOARD_REDIS_URL",
            EXIT_USAGE,
        ) from None
    unreachable = (
        f"cannot reach Redis at {shown}: start `switchboard stack` first or set redis.url "
        "(SWITCHBOARD_REDIS_URL)"
    )
    try:
        try:
            await wait_ready(client, REDIS_TIMEOUT)
        except ConnectionError as exc:
            raise CommandError(f"{unreachable} ({exc})") from None
        store = AccountStore(client, iterations=config.auth.scram_iterations)
        try:
            return await _do_user(action, args, config, store, password)
        except (InvalidUsername, InvalidPassword, JIDError) as exc:
            raise CommandError(str(exc), EXIT_USAGE) from None
        except AccountExists as exc:
            raise CommandError(
                f"{exc}; use `switchboard user passwd` to change its password"
            ) from None
        except NoSuchAccount as exc:
            raise CommandError(f"{exc}; `switchboard user list` shows the accounts") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise CommandError(f"{unreachable} ({exc})") from None
        except redis.exceptions.RedisError as exc:
            raise CommandError(f"Redis at {shown} refused the command: {exc}") from None
    finally:
        await client.aclose()


async def _do_user(
    action: str,
    args: argparse.Namespace,
    config: Config,
    store: AccountStore,
    password: str | None,
) -> int:
    from core.storage.accounts import InvalidUsername
    from core.xmpp.jid import JIDError, prep_domain, prep_local

    if action == "list":
        domain = prep_domain(args.domain or config.domain)
        for local in await store.list(domain):
            print(f"{local}@{domain}")
        return EXIT_OK
    name, raw_domain = _split_name(args.name, config.domain)
    # Prepared here too, so messages show the account as stored (Alice -> alice).
    try:
        local = prep_local(name)
    except JIDError as exc:
        raise InvalidUsername(f"invalid username {name!r}: {exc}") from None
    domain = prep_domain(raw_domain)
    if action == "add":
        assert password is not None
        await store.create(local, domain, password)
        print(f"created {local}@{domain}")
    elif action == "passwd":
        assert password is not None
        await store.set_password(local, domain, password)
        print(f"password changed for {local}@{domain}")
    elif action == "del":
        if not await store.delete(local, domain):
            raise CommandError(
                f"no account {local}@{domain}; `switchboard user list` shows the accounts"
            )
        print(f"deleted {local}@{domain}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
