"""Exit codes, the command line's own exceptions and its one-line error messages."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import traceback

from .._logging import JsonFormatter
from ..errors import ServerStatusError, StaleCursorError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "CommandFailure",
    "UsageError",
    "describe",
    "one_line",
    "report_traceback",
]

PROG = "memory-service-processor"

log = logging.getLogger("memory_service_processor.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The package's directory: its frames are left out of the tracebacks shown to users.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UsageError(Exception):
    """A bad command line or configuration value: exit code 2, one line, no traceback."""


class CommandFailure(Exception):
    """A runtime failure with a ready one-line message (exit 1)."""


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def describe(error: BaseException) -> str:
    """The one-line message for a failure of the package."""
    if isinstance(error, ServerStatusError):
        return one_line(f"server refused: {error}")
    if isinstance(error, StaleCursorError):
        return one_line(f"{error} (use --stale-cursor restart or tail to continue automatically)")
    return one_line(str(error) or type(error).__name__)


def report_traceback(error: BaseException) -> None:
    """The traceback on stderr: a log record when logging is JSON, plain text otherwise."""
    json_logging = any(
        getattr(h, "_msp_installed", False) and isinstance(h.formatter, JsonFormatter)
        for h in logging.getLogger().handlers
    )
    text = user_traceback(error)
    if json_logging:
        log.error("run failed: %s: %s", type(error).__name__, error, extra={"exception": text})
    else:
        sys.stderr.write(text)
        sys.stderr.flush()


def user_traceback(error: BaseException) -> str:
    """The traceback of ``error`` without the frames of this package and of asyncio: what is
    left is the user's code (all frames if nothing is left)."""
    asyncio_dir = os.path.dirname(os.path.abspath(asyncio.__file__))
    frames = traceback.extract_tb(error.__traceback__)
    users = [
        f for f in frames
        if not os.path.abspath(f.filename).startswith((_PACKAGE_DIR + os.sep, asyncio_dir + os.sep))
    ]
    lines = ["Traceback (most recent call last):\n"]
    lines.extend(traceback.format_list(users or frames))
    lines.extend(traceback.format_exception_only(type(error), error))
    return "".join(lines)
