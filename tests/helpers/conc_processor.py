"""A concurrent processor run as a subprocess by test_concurrency_crash.py and (as one shard)
by test_shard_processes.py.

Usage: python conc_processor.py ENDPOINT CLIENT_ID OUT_FILE [MAX_CONCURRENCY [SHARD_INDEX SHARD_COUNT]]

Counts entry events per conversation (default ``max_concurrency=32``, one shard); each handler
awaits a random delay (up to 20 ms at 32 in flight, proportionally less below) and only then
changes its state (the state-after-await rule). Appends ``START <pid>`` on start,
``<cursor> <conversation>`` per handled event, and ``STOPPED`` after a graceful stop (SIGTERM).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from typing import Any, Dict

from memory_service_processor import Config, EventEnvelope, EventProcessor, Runtime, payload


class Counter(EventProcessor):
    CONTENT_TYPE = "application/vnd.test.conc-counter+json;v=1"

    def __init__(self, fd: int, max_delay: float) -> None:
        self.fd = fd
        self.max_delay = max_delay
        self.counts: Dict[str, int] = {}
        self.rng = random.Random()

    def load(self, state: Any) -> None:
        self.counts = dict(state.get("counts", {}))

    async def handle(self, event: EventEnvelope) -> None:
        await asyncio.sleep(self.rng.random() * self.max_delay)
        conversation = payload.conversation_id(event) or ""
        self.counts[conversation] = self.counts.get(conversation, 0) + 1
        os.write(self.fd, f"{event.cursor} {conversation}\n".encode())

    def snapshot(self) -> Any:
        return {"counts": self.counts}


async def main(endpoint: str, client_id: str, out: str, concurrency: str = "32", index: str = "0", count: str = "1") -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"START {os.getpid()}\n".encode())
    config = Config(
        client_id=client_id,
        after_cursor="start",
        max_concurrency=int(concurrency),
        shard_index=int(index),
        shard_count=int(count),
        checkpoint_interval=0.2,
        reconnect_min=0.05,
        reconnect_max=0.2,
    )
    # Up to 20 ms at 32 in flight, less with fewer, so every configuration runs at a similar rate.
    runtime = Runtime(Counter(fd, 0.02 * min(1.0, int(concurrency) / 32)), config, endpoint=endpoint)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stop)
    await runtime.run()
    os.write(fd, b"STOPPED\n")
    os.close(fd)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
