"""``python -m components.muc [--config PATH] [--instance ID]``: one MUC instance, as
``switchboard muc`` runs it."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.muc", description=__doc__)
    parser.add_argument("--config", metavar="PATH", default=None)
    parser.add_argument("--instance", metavar="ID", default=None)
    args = parser.parse_args(argv)
    from core.runtime.config import ConfigError, load_config

    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"switchboard muc: configuration error: {problem}", file=sys.stderr)
        return 2
    from core.runtime.reactor import install

    # Before anything imports twisted.internet.reactor.
    install()
    from components.muc.app import run_muc
    from components.muc.settings import SettingsError

    try:
        return run_muc(config, instance=args.instance)
    except SettingsError as exc:
        print(f"switchboard muc: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
