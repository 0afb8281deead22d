"""Process logging: one line per record on stderr, ``time level logger message``.

Twisted's own log (``twisted.logger``, and ``twisted.python.log`` which feeds it) is routed into
stdlib logging under the event's namespace, so one handler and one level govern everything.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"

_handler: logging.Handler | None = None
_twisted_routed = False


def _level(level: str) -> int:
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}")
    return value


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` (debug, info, warning, error, critical); callable again to
    change the level without duplicating output."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    root.addHandler(_handler)
    root.setLevel(_level(level))
    logging.captureWarnings(True)
    _route_twisted()


def _route_twisted() -> None:
    global _twisted_routed
    if _twisted_routed:
        return
    # twisted.logger does not import the reactor, so this is safe before reactor.install().
    from twisted.logger import LogLevel, formatEvent, globalLogBeginner

    levels = {
        LogLevel.debug: logging.DEBUG,
        LogLevel.info: logging.INFO,
        LogLevel.warn: logging.WARNING,
        LogLevel.error: logging.ERROR,
        LogLevel.critical: logging.CRITICAL,
    }

    def observer(event: dict[str, Any]) -> None:
        namespace = event.get("log_namespace") or "twisted"
        # twisted.python.log.msg() events all carry this namespace; "twisted" says more.
        logger = logging.getLogger("twisted" if namespace == "log_legacy" else namespace)
        level = levels.get(event.get("log_level", LogLevel.info), logging.INFO)
        if not logger.isEnabledFor(level):
            return
        failure = event.get("log_failure")
        exc_info = None
        if failure is not None:
            exc_info = (failure.type, failure.value, failure.getTracebackObject())
        logger.log(level, "%s", formatEvent(event), exc_info=exc_info)

    # redirectStandardIO=False: stdout belongs to the CLI (banners, `user list`).
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    _twisted_routed = True
