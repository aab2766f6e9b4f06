"""A processor run as a subprocess by test_crash.py.

Usage: python crash_processor.py ENDPOINT CLIENT_ID OUT_FILE [DELAY_SECONDS]

Appends one line per handled event (its cursor) to OUT_FILE with a single unbuffered
``os.write`` *before* ``handle`` returns, so a SIGKILL at any instant leaves every handled
cursor in the file. Lines ``START <pid>``, ``LOAD <cursor>`` and ``STOPPED`` mark the process's
life. SIGTERM / SIGINT stop the runtime gracefully (final flush and checkpoint).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any, Optional

from memory_service_processor import Config, EventEnvelope, EventProcessor, Runtime

CONTENT_TYPE = "application/vnd.test.crash-recorder+json;v=1"


class CrashRecorder(EventProcessor):
    """Records each handled cursor durably (to the OS) before acknowledging it."""

    CONTENT_TYPE = CONTENT_TYPE

    def __init__(self, fd: int, delay: float) -> None:
        self.fd = fd
        self.delay = delay
        self.last_event_cursor: Optional[str] = None
        self.count = 0

    def _line(self, text: str) -> None:
        os.write(self.fd, (text + "\n").encode())

    def load(self, state: Any) -> None:
        super().load(state)
        self.count = int(state.get("count", 0))
        self._line(f"LOAD {self.last_event_cursor}")

    def handle(self, event: EventEnvelope) -> None:
        if self.delay:
            time.sleep(self.delay)
        self._line(str(event.cursor))
        self.count += 1
        self.last_event_cursor = event.cursor

    def snapshot(self) -> Any:
        return {"lastEventCursor": self.last_event_cursor, "count": self.count}


async def main(endpoint: str, client_id: str, out: str, delay: float) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"START {os.getpid()}\n".encode())
    config = Config(
        client_id=client_id,
        after_cursor="start",
        checkpoint_every=1,
        checkpoint_interval=1.0,
        max_batch=16,
        reconnect_min=0.05,
        reconnect_max=0.2,
    )
    runtime = Runtime(CrashRecorder(fd, delay), config, endpoint=endpoint)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stop)
    await runtime.run()
    os.write(fd, b"STOPPED\n")
    os.close(fd)


if __name__ == "__main__":
    endpoint, client_id, out = sys.argv[1:4]
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    asyncio.run(main(endpoint, client_id, out, delay))
