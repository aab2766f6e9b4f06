"""One shard of a sharded processor, run as a subprocess by test_shard_processes.py.

Usage: python shard_processor.py ENDPOINT CLIENT_ID OUT_FILE SHARD_INDEX SHARD_COUNT MAX_CONCURRENCY

Counts entry events per conversation (the default key: the conversation); each handler awaits a
short random delay and only then changes its state (the state-after-await rule). Appends
``START <pid>`` on start, ``<cursor> <conversation>`` per handled event, and ``STOPPED`` after a
graceful stop (SIGTERM).
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
    CONTENT_TYPE = "application/vnd.test.shard-counter+json;v=1"

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.counts: Dict[str, int] = {}
        self.rng = random.Random()

    def load(self, state: Any) -> None:
        self.counts = dict(state.get("counts", {}))

    async def handle(self, event: EventEnvelope) -> None:
        if self.rng.random() < 0.2:
            await asyncio.sleep(self.rng.random() * 0.002)
        conversation = payload.conversation_id(event) or ""
        self.counts[conversation] = self.counts.get(conversation, 0) + 1
        os.write(self.fd, f"{event.cursor} {conversation}\n".encode())

    def snapshot(self) -> Any:
        return {"counts": self.counts}


async def main(endpoint: str, client_id: str, out: str, index: str, count: str, concurrency: str) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"START {os.getpid()}\n".encode())
    config = Config(
        client_id=client_id,
        after_cursor="start",
        shard_index=int(index),
        shard_count=int(count),
        max_concurrency=int(concurrency),
        checkpoint_interval=0.2,
        reconnect_min=0.05,
        reconnect_max=0.2,
    )
    runtime = Runtime(Counter(fd), config, endpoint=endpoint)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stop)
    await runtime.run()
    os.write(fd, b"STOPPED\n")
    os.close(fd)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
