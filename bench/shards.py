"""Scale-out: ``python bench/shards.py [--events N] [--repeat K] [--work-us U]``.

A CPU-bound processor (about ``--work-us`` microseconds of pure Python per event, default 200,
calibrated once at start: a stand-in for local parsing, scoring or a small embedding model) over
``--events`` entry events (default 20,000) spread over 1,000 conversations, replayed from the
start of a :class:`~memory_service_processor.testing.LocalMemoryService` running in this
process. Cases, side by side in one run, each repeated ``--repeat`` times (medians):

- ``1 process``: one processor process, ``shard_count=1`` (the default layout);
- ``2 shards``: two processor processes, ``shard_count=2``, one per ``shard_index``, started
  together;
- ``all foreign``: one process whose shard owns none of the events (``shard_count=2``, every
  event in conversations of the other shard), a no-op handler: every event is read and dropped
  in the core. Compared with ``all own``: the same events, owned, with a no-op handler.

Timing: each processor process prints ``READY`` once imported, waits for ``GO``
on stdin, then runs; it reports when its watermark (``stats()["watermark"]``) reaches the last
cursor of the stream, on the system-wide monotonic clock. A case's time runs from ``GO`` to the
last process's report; events/s = events of the stream / that time. The drop cost per foreign
event is the CPU time per event of the thread that runs the loop (``time.thread_time()``: the
thread where Python would run the handlers, and where the core's driver drops foreign events);
the process's CPU per event (``resource.getrusage``: reading and decoding the stream as well)
and ``handled`` (0: nothing reached Python) are shown beside it. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from memory_service_processor import Config, EventEnvelope, EventProcessor, Runtime, shard_of
from memory_service_processor.testing import LocalMemoryService
from memory_service_processor.testing.events import conversation_ids, entry_event

TARGET_2_SHARDS_X = 1.7
TARGET_DROP_US = 0.5
CONVERSATIONS = 1000


def calibrate(work_us: float) -> int:
    """Loop iterations of :func:`burn` that take about ``work_us`` microseconds here (the best
    of five timings of a 50 ms-plus run, so a busy moment does not shrink the work)."""
    n = 1000
    while True:
        t = time.perf_counter()
        burn(n)
        if time.perf_counter() - t > 0.05:
            break
        n *= 2
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        burn(n)
        best = min(best, time.perf_counter() - t)
    return max(1, int(n * work_us / (best * 1e6)))


def burn(n: int) -> int:
    """Pure-Python CPU work: holds the GIL for its whole duration."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc


class Work(EventProcessor):
    CONTENT_TYPE = "application/vnd.bench.shards+json;v=1"

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.handled = 0

    def handle(self, event: EventEnvelope) -> None:
        if self.iterations:
            burn(self.iterations)
        self.handled += 1

    def snapshot(self) -> Any:
        return {"handled": self.handled}


async def child(args: argparse.Namespace) -> None:
    iterations = args.iterations
    config = Config(
        client_id=args.client_id,
        after_cursor="start",
        shard_count=args.shard_count,
        shard_index=args.shard_index,
        checkpoint_every=1000,
    )
    processor = Work(iterations)
    runtime = Runtime(processor, config, endpoint=args.endpoint)
    print("READY", flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    cpu0 = time.thread_time()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    task = asyncio.ensure_future(runtime.run())
    while not task.done():
        stats = runtime.stats()
        if stats["watermark"] == args.last:
            break
        await asyncio.sleep(0.002)
    ended = time.monotonic()
    cpu = time.thread_time() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    process_cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    stats = runtime.stats()
    runtime.stop()
    await task
    print(json.dumps({
        "started": started, "ended": ended, "handled": processor.handled, "python_cpu": cpu, "process_cpu": process_cpu,
        "foreign": stats.get("events_foreign", 0), "received": stats["events_received"],
    }), flush=True)


def run_case(endpoint: str, last: str, shards: Sequence[Dict[str, Any]], iterations: int, case: str) -> Dict[str, Any]:
    procs = []
    for n, shard in enumerate(shards):
        argv = [sys.executable, __file__, "--child", "--endpoint", endpoint, "--last", last,
                "--client-id", f"bench-{case}-{n}-{time.monotonic_ns()}", "--iterations", str(shard.get("iterations", iterations)),
                "--shard-count", str(shard["count"]), "--shard-index", str(shard["index"])]
        procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "READY", "child did not start"
    go = time.monotonic()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("GO\n")
        p.stdin.flush()
    results = []
    for p in procs:
        assert p.stdout is not None
        out = p.stdout.readline()
        if p.wait(120) != 0 or not out:
            raise RuntimeError(f"case {case}: a processor process failed (exit {p.returncode})")
        results.append(json.loads(out))
    return {"seconds": max(r["ended"] for r in results) - go, "processes": results}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--drop-events", type=int, default=200_000, help="events of the drop-cost cases")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work-us", type=float, default=200.0)
    parser.add_argument("--quick", action="store_true", help="2,000 events, 20,000 for the drop cost, 1 repeat")
    parser.add_argument("--json", default="bench/results-shards.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--endpoint", "--last", "--client-id"):
        parser.add_argument(name, default="", help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--shard-count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--shard-index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        asyncio.run(child(args))
        return 0
    if args.quick:
        args.events, args.drop_events, args.repeat = 2_000, 20_000, 1

    convs = conversation_ids(CONVERSATIONS, 5)
    groups = conversation_ids(CONVERSATIONS, 6)
    # The drop-cost stream: only conversations of shard 0 of 2, so shard 1 owns none of it.
    own = [c for c in convs if shard_of(c, 2) == 0]
    results: Dict[str, List[Dict[str, Any]]] = {}
    cases = {
        "1 process": [{"count": 1, "index": 0}],
        "2 shards": [{"count": 2, "index": 0}, {"count": 2, "index": 1}],
    }
    drop_cases = {
        "all foreign": [{"count": 2, "index": 1, "iterations": 0}],
        "all own": [{"count": 2, "index": 0, "iterations": 0}],
    }
    # Calibrated once, here, while nothing else runs: every process of every case does the same
    # work per event.
    iterations = calibrate(args.work_us) if args.work_us > 0 else 0
    rnd = random.Random(3)
    work = LocalMemoryService()
    endpoint = work.start_sync()
    drop = LocalMemoryService()
    drop_endpoint = drop.start_sync()
    try:
        batch = []
        for i in range(args.events):
            c = rnd.randrange(CONVERSATIONS)
            batch.append(entry_event(convs[c], groups[c], i, rnd=rnd))
        last = work.publish_many(batch)[-1]
        drop_last = ""
        for start in range(0, args.drop_events, 10_000):
            chunk = []
            for i in range(start, min(args.drop_events, start + 10_000)):
                c = rnd.randrange(len(own))
                chunk.append(entry_event(own[c], groups[0], i, rnd=rnd))
            drop_last = drop.publish_many(chunk)[-1]
        for r in range(args.repeat):
            for case, shards in cases.items():
                results.setdefault(case, []).append(run_case(endpoint, last, shards, iterations, case))
            for case, shards in drop_cases.items():
                results.setdefault(case, []).append(run_case(drop_endpoint, drop_last, shards, 0, case))
            print(f"repeat {r + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    finally:
        work.stop_sync()
        drop.stop_sync()

    def median(case: str, key: str = "seconds") -> float:
        return statistics.median(run[key] for run in results[case])

    one = args.events / median("1 process")
    two = args.events / median("2 shards")
    shares = [p["handled"] for p in results["2 shards"][-1]["processes"]]
    def per_event(case: str, key: str) -> float:
        return statistics.median(run["processes"][0][key] for run in results[case]) / args.drop_events * 1e6

    handled_foreign = max(run["processes"][0]["handled"] for run in results["all foreign"])
    dropped = min(run["processes"][0]["foreign"] for run in results["all foreign"])
    drop_us = per_event("all foreign", "python_cpu")
    print(f"\nCPU-bound handler (~{args.work_us:.0f} us of pure Python per event), {args.events:,} events "
          f"over {CONVERSATIONS:,} conversations, medians of {args.repeat}, os.cpu_count()={os.cpu_count()}\n")
    print("| case | events/s | vs 1 process | target |")
    print("|---|---:|---:|---|")
    print(f"| 1 process (`shard_count=1`) | {one:,.0f} | 1.00x | |")
    verdict = "met" if two / one >= TARGET_2_SHARDS_X else "missed"
    print(f"| 2 shard processes (shares {shares[0]:,} / {shares[1]:,}) | {two:,.0f} | {two / one:.2f}x | "
          f">= {TARGET_2_SHARDS_X}x: {verdict} |")
    print(f"\nDropping foreign events: {args.drop_events:,} entry events, a no-op handler\n")
    print("| case | events/s | loop thread CPU us/event | process CPU us/event | handled in Python |")
    print("|---|---:|---:|---:|---:|")
    for case, label in (("all foreign", "none of them the shard's (dropped in the core)"), ("all own", "all of them the shard's")):
        handled = max(run["processes"][0]["handled"] for run in results[case])
        print(f"| {label} | {args.drop_events / median(case):,.0f} | {per_event(case, 'python_cpu'):.3f} | "
              f"{per_event(case, 'process_cpu'):.3f} | {handled:,} |")
    verdict = "met" if drop_us < TARGET_DROP_US and handled_foreign == 0 else "missed"
    print(f"\nDrop cost per foreign event (loop thread CPU): {drop_us:.3f} us (target < {TARGET_DROP_US} us: "
          f"{verdict}); events_foreign={dropped:,}, handled in Python={handled_foreign}")
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
