"""SIGINT/SIGTERM: a graceful stop first, an immediate exit on a second Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, Callable, Dict, Optional

from .errors import EXIT_INTERRUPTED, PROG, log

__all__ = ["GracefulSignals"]


class GracefulSignals:
    """SIGINT/SIGTERM call ``on_stop`` once (on the event loop); a second SIGINT exits at once.

    Uses ``signal.signal`` (not ``loop.add_signal_handler``) so that the second Ctrl-C works
    even while the loop is blocked in a slow synchronous ``handle``/``flush``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> None:
        self._loop = loop
        self._on_stop = on_stop
        self._stopping = False
        self._previous: Dict[int, Any] = {}
        self.received: Optional[str] = None

    def _handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            if signum == signal.SIGINT:
                # os.write: no buffered-IO re-entrancy trouble inside a signal handler.
                os.write(2, f"{PROG}: second {name}: exiting without the final checkpoint\n".encode())
                os._exit(EXIT_INTERRUPTED)
            self._loop.call_soon_threadsafe(
                log.info, "%s received again: still stopping (send SIGINT to exit at once)", name
            )
            return
        self._stopping = True
        self.received = name
        self._loop.call_soon_threadsafe(self._stop, name)

    def _stop(self, name: str) -> None:
        log.info("%s received: stopping (final flush and checkpoint); Ctrl-C again exits at once", name)
        self._on_stop()

    def __enter__(self) -> "GracefulSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except (ValueError, OSError):  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            try:
                signal.signal(sig, previous)
            except (ValueError, OSError, TypeError):
                pass
