"""The live-latency publisher: a LocalMemoryService that publishes at a steady rate.

``python bench/live_server.py --rate 1000 --count 5000 --warmup 200`` starts the package's
``LocalMemoryService`` in this process, prints ``READY <endpoint>``, waits until one
subscriber is connected, then publishes ``warmup + count`` realistic entry events one by one
from this thread at ``rate`` events/s (each on an absolute schedule, so a late one does not
shift the others). Each event's ``data`` carries ``t_ns = time.perf_counter_ns()`` taken just
before ``publish()``; ``perf_counter_ns`` is ``CLOCK_MONOTONIC`` on Linux, one clock for every
process of the machine, so the processor process computes publish-to-handle latency as
``perf_counter_ns() - t_ns``. ``t_wall_ns`` (``time.time_ns()``) lets it split that at the
moment of receipt, which the runtime stamps with the wall clock (``event.time``). Prints
``PUBLISHED <n> <late>`` when done, then serves until SIGTERM/SIGINT (the processor writes
its final checkpoint here).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import List, Optional

from memory_service_processor.testing import LocalMemoryService
from memory_service_processor.testing.events import synthetic_entries


def main(argv: Optional[List[str]] = None) -> int:
    """Serves, publishes on schedule once subscribed, then serves until signalled."""
    p = argparse.ArgumentParser(prog="bench/live_server.py")
    p.add_argument("--rate", type=float, default=1000.0, help="events per second")
    p.add_argument("--count", type=int, default=5000, help="events measured")
    p.add_argument("--warmup", type=int, default=200, help="events published first, not measured")
    p.add_argument("--subscribers", type=int, default=1, help="wait for this many subscribers")
    a = p.parse_args(argv)

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    total = a.count + a.warmup
    events = [e for chunk in synthetic_entries(total) for e in chunk]
    svc = LocalMemoryService()
    endpoint = svc.start_sync()
    print(f"READY {endpoint}", flush=True)

    deadline = time.monotonic() + 60.0
    while svc.subscriber_count < a.subscribers:
        if done.is_set() or time.monotonic() > deadline:
            svc.stop_sync()
            print("ERROR no subscriber", flush=True)
            return 1
        time.sleep(0.001)
    time.sleep(0.2)  # let the subscription settle (its live phase signal)

    period_ns = int(1e9 / a.rate)
    late = 0
    start = time.perf_counter_ns() + period_ns
    publish = svc.publish
    perf_ns = time.perf_counter_ns
    for i, (kind, event, data) in enumerate(events):
        due = start + i * period_ns
        now = perf_ns()
        if now < due:
            time.sleep((due - now) / 1e9)
        elif now - due > period_ns:
            late += 1
        data["seq"] = i
        data["t_wall_ns"] = time.time_ns()
        data["t_ns"] = perf_ns()
        publish(kind, event, data)
    print(f"PUBLISHED {total} {late}", flush=True)
    while not done.wait(0.2):
        pass
    svc.stop_sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
