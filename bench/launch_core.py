"""Run ``switchboard core`` on a chosen asyncio event loop, to compare loops under load.

    python -m bench.launch_core --loop asyncio|uvloop

Twisted's asyncio reactor runs on whatever loop it is given (Twisted's asyncioreactor refuses
only the Windows proactor loop). ``core.runtime.reactor.install()`` is a no-op once an asyncio
reactor is installed, so installing one here on the chosen loop, before the CLI runs, is all
it takes. Configuration comes from the environment as for ``switchboard core``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence


def install(loop_name: str) -> None:
    """Install Twisted's asyncio reactor on a new loop of kind ``loop_name``."""
    if loop_name == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    elif loop_name == "asyncio":
        loop = asyncio.new_event_loop()
    else:
        raise SystemExit(f"unknown loop {loop_name!r}: asyncio or uvloop")
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.launch_core")
    p.add_argument("--loop", default="asyncio", choices=("asyncio", "uvloop"))
    a = p.parse_args(argv)
    install(a.loop)
    from core.cli import main as cli_main

    return cli_main(["core"])


if __name__ == "__main__":
    sys.exit(main())
