"""Keyed concurrency: ``python bench/concurrency.py [--quick] [--concurrency 1,64,512] ...``.

A processor whose ``async def handle`` awaits 20 ms (a stand-in for a model call) and then
updates its state, over 20,000 entry events spread at random over 1,000 conversations (the
runtime's default key: one lane per conversation). One case per ``max_concurrency``, side by
side in one run, each a fresh client id replaying the same preloaded
:class:`~memory_service_processor.testing.LocalMemoryService` (in this process) from the start.

Per case: events/s, its ratio to the sequential rate and to the ideal
``min(N / 20 ms, CPU limit)`` (the CPU limit being one event per loop-thread CPU time per
event), the loop thread's CPU time per event (``time.thread_time()`` deltas taken on the loop
thread), the most handlers seen in flight at once, and the mean number in flight (the time
spent inside ``handle``, summed, over the measured time: below N, slots sat idle between a
handler's return and the next start). A second row per value, "asyncio
alone", runs the same handler over the same events with N plain asyncio workers and no
runtime (no keys, no checkpoints): the ceiling that Python's event loop sets on this machine.
Timing runs from the first ``handle``
call to the completion of the ``--events``-th one (connecting and the final checkpoint are not
timed). At ``max_concurrency=1`` a handler runs at ~50 events/s, so that case handles only
``--sequential-events`` events (default 500) and its rate is extrapolated to the rest: the
table says so. Without ``Config.max_concurrency`` (a runtime that handles one event at a
time) only the sequential case runs, and the table notes it. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as _dt
import json
import os
import platform
import sys
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence

from memory_service_processor import Config, EventEnvelope, EventProcessor, Runtime, payload
from memory_service_processor.testing import LocalMemoryService
from memory_service_processor.testing.events import synthetic_entries

#: The runtime runs several events at once (``Config.max_concurrency`` exists).
CONCURRENT = "max_concurrency" in {f.name for f in dataclasses.fields(Config)}

#: Targets (see bench/README.md): at 512, events/s and the ratio to sequential; at 64, the
#: fraction of the ideal ``64 / 20 ms``.
TARGET_512_EVENTS_PER_S = 10_000.0
TARGET_512_X_SEQUENTIAL = 200.0
TARGET_64_OF_IDEAL = 0.85


def log(msg: str) -> None:
    """Progress to stderr (the table goes to stdout)."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


class ModelCaller(EventProcessor):
    """Awaits ``delay`` seconds per event, then counts the event for its conversation (the state
    changes only after the last await). Measures from the first call to the ``target``-th
    completion, in wall time and in CPU time of the loop thread."""

    CONTENT_TYPE = "application/vnd.bench.model-caller+json;v=1"

    def __init__(self, delay: float, target: int) -> None:
        self.delay = delay
        self.target = target
        self.per_conversation: Dict[str, int] = {}
        self.done = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.busy = 0.0  # seconds spent inside handle, summed over the calls
        self.t0 = self.t1 = 0.0
        self.cpu0 = self.cpu1 = 0.0
        self.finished = asyncio.Event()

    async def handle(self, event: EventEnvelope) -> None:
        began = time.perf_counter()
        if not self.t0:
            self.t0, self.cpu0 = began, time.thread_time()
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        try:
            await asyncio.sleep(self.delay)  # the model call
        finally:
            self.in_flight -= 1
        conversation = payload.conversation_id(event) or ""
        self.per_conversation[conversation] = self.per_conversation.get(conversation, 0) + 1
        self.done += 1
        self.last_event_cursor = event.cursor
        self.busy += time.perf_counter() - began
        if self.done == self.target:
            self.t1, self.cpu1 = time.perf_counter(), time.thread_time()
            self.finished.set()

    def snapshot(self) -> Dict[str, Any]:
        """The counts and the resume position."""
        return {"perConversation": self.per_conversation, "lastEventCursor": self.last_event_cursor}


async def run_case(endpoint: str, concurrency: int, events: int, delay: float) -> Dict[str, Any]:
    """One case: a fresh client id replays the stream until ``events`` events are handled."""
    processor = ModelCaller(delay, events)
    options: Dict[str, Any] = {"client_id": f"bench-concurrency-{concurrency}-{uuid.uuid4().hex[:8]}", "after_cursor": "start"}
    if CONCURRENT:
        options["max_concurrency"] = concurrency
    runtime = Runtime(processor, Config(**options), endpoint=endpoint)
    task = asyncio.ensure_future(runtime.run())
    waiter = asyncio.ensure_future(processor.finished.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    runtime.stop()
    await task  # the final checkpoint (not timed); re-raises a failure of the run
    waiter.cancel()
    if processor.done < events:
        raise RuntimeError(f"max_concurrency={concurrency}: the run ended after {processor.done} of {events} events")
    seconds = processor.t1 - processor.t0
    cpu = processor.cpu1 - processor.cpu0
    return {
        "what": "runtime",
        "max_concurrency": concurrency,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "loop_cpu_us_per_event": cpu / events * 1e6,
        "peak_in_flight": processor.peak_in_flight,
        "mean_in_flight": processor.busy / seconds,
        "stats": dict(runtime.stats()),
    }


async def run_baseline(envelopes: Sequence[EventEnvelope], concurrency: int, events: int, delay: float) -> Dict[str, Any]:
    """The same handler over the same events with ``concurrency`` plain asyncio workers."""
    processor = ModelCaller(delay, events)
    todo = iter(envelopes[:events])

    async def worker() -> None:
        for event in todo:
            await processor.handle(event)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = processor.t1 - processor.t0
    return {
        "what": "asyncio alone",
        "max_concurrency": concurrency,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "loop_cpu_us_per_event": (processor.cpu1 - processor.cpu0) / events * 1e6,
        "peak_in_flight": processor.peak_in_flight,
        "mean_in_flight": processor.busy / seconds,
    }


def ideal(concurrency: int, delay: float, cpu_us: float) -> float:
    """``min(N / delay, CPU limit)``; the CPU limit is one event per loop-thread CPU time per event."""
    cpu_limit = 1e6 / cpu_us if cpu_us > 0 else float("inf")
    return min(concurrency / delay, cpu_limit)


def table(results: List[Dict[str, Any]], delay: float, total_events: int) -> str:
    """The Markdown table of the cases."""
    rows = [
        ("what", "max_concurrency", "events", "events/s", "x sequential", "ideal events/s", "x ideal", "loop CPU us/event",
         "peak in flight", "mean in flight", "notes"),
    ]
    for r in results:
        sequential = next((s for s in results if s["max_concurrency"] == 1 and s["what"] == r["what"]), None)
        n = r["max_concurrency"]
        best = ideal(n, delay, r["loop_cpu_us_per_event"])
        x_seq = f"{r['events_per_s'] / sequential['events_per_s']:.1f}x" if sequential else ""
        notes = []
        if r["events"] < total_events:
            notes.append(f"measured over the first {r['events']:,} events; "
                         f"{total_events:,} would take ~{total_events / r['events_per_s']:,.0f} s at this rate")
        if best < n / delay:
            notes.append(f"ideal bound by the loop thread's CPU (N / {delay * 1000:g} ms = {n / delay:,.0f})")
        rows.append((
            r["what"], str(n), f"{r['events']:,}", f"{r['events_per_s']:,.0f}", x_seq, f"{best:,.0f}",
            f"{r['events_per_s'] / best:.0%}", f"{r['loop_cpu_us_per_event']:.1f}", str(r["peak_in_flight"]),
            f"{r['mean_in_flight']:.1f}", "; ".join(notes),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5, 6, 7, 8, 9}

    def line(row: Sequence[str]) -> str:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(cells) + " |"

    out = [line(rows[0]), "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                                         for i, w in enumerate(widths)) + "|"]
    out += [line(row) for row in rows[1:]]
    return "\n".join(out)


def targets(results: List[Dict[str, Any]], delay: float) -> List[str]:
    """The targets, each met or missed (only for the cases that ran)."""
    by_n = {r["max_concurrency"]: r for r in results if r["what"] == "runtime"}
    lines = []
    sequential = by_n.get(1)
    if 512 in by_n:
        rate = by_n[512]["events_per_s"]
        lines.append(f"- max_concurrency=512: {rate:,.0f} events/s (target >= {TARGET_512_EVENTS_PER_S:,.0f}): "
                     + ("met" if rate >= TARGET_512_EVENTS_PER_S else "missed"))
        if sequential:
            x = rate / sequential["events_per_s"]
            lines.append(f"- max_concurrency=512 vs sequential: {x:.0f}x (target >= {TARGET_512_X_SEQUENTIAL:.0f}x): "
                         + ("met" if x >= TARGET_512_X_SEQUENTIAL else "missed"))
    if 64 in by_n:
        fraction = by_n[64]["events_per_s"] / (64 / delay)
        lines.append(f"- max_concurrency=64: {fraction:.0%} of 64 / {delay * 1000:g} ms (target >= {TARGET_64_OF_IDEAL:.0%}): "
                     + ("met" if fraction >= TARGET_64_OF_IDEAL else "missed"))
    return lines


async def main_async(args: argparse.Namespace) -> Dict[str, Any]:
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    skipped = []
    if not CONCURRENT:
        skipped = [n for n in levels if n != 1]
        levels = [1]
    envelopes: List[EventEnvelope] = []
    async with LocalMemoryService() as server:
        started = time.perf_counter()
        for chunk in synthetic_entries(args.events, conversations=args.conversations):
            for cursor, (kind, event, data) in zip(server.publish_many(chunk), chunk):
                envelopes.append(EventEnvelope(event, kind, json.dumps(data).encode(), cursor))
        log(f"published {args.events:,} entry events over {args.conversations:,} conversations "
            f"in {time.perf_counter() - started:.1f}s")
        results = []
        for n in levels:
            events = min(args.events, args.sequential_events) if n == 1 else args.events
            log(f"max_concurrency={n}: {events:,} events, handler awaits {args.delay * 1000:g} ms ...")
            result = await run_case(server.endpoint, n, events, args.delay)
            log(f"  {result['events_per_s']:,.0f} events/s, loop CPU {result['loop_cpu_us_per_event']:.1f} us/event, "
                f"peak in flight {result['peak_in_flight']}, mean {result['mean_in_flight']:.1f}")
            results.append(result)
        if not args.no_baseline:
            for n in sorted(set(levels) | set(skipped)):
                events = min(args.events, args.sequential_events) if n == 1 else args.events
                log(f"asyncio alone, {n} workers: {events:,} events ...")
                results.append(await run_baseline(envelopes, n, events, args.delay))
    return {"results": results, "skipped": skipped}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="entry events (default 20,000)")
    parser.add_argument("--conversations", type=int, default=1_000, help="conversations (keys) (default 1,000)")
    parser.add_argument("--delay", type=float, default=0.020, help="seconds each handler awaits (default 0.020)")
    parser.add_argument("--concurrency", default="1,64,512", help="max_concurrency values (default 1,64,512)")
    parser.add_argument("--sequential-events", type=int, default=500,
                        help="events handled at max_concurrency=1, extrapolated (default 500)")
    parser.add_argument("--quick", action="store_true", help="a short run: 2,000 events, 100 at max_concurrency=1")
    parser.add_argument("--no-baseline", action="store_true", help="leave out the asyncio-alone rows")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.sequential_events = min(args.events, 2_000), min(args.sequential_events, 100)

    began = _dt.datetime.now(_dt.timezone.utc)
    load = os.getloadavg()
    report = asyncio.run(main_async(args))
    results = report["results"]
    print(f"Keyed concurrency: {args.events:,} entry events over {args.conversations:,} conversations, "
          f"handler awaits {args.delay * 1000:g} ms then updates its state")
    print(f"Machine: {os.cpu_count()} CPUs, CPython {platform.python_version()}, {platform.platform()}; "
          f"{began:%Y-%m-%d %H:%M} UTC, load average {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print()
    print(table(results, args.delay, args.events))
    print()
    if report["skipped"]:
        print(f"Not run: max_concurrency {', '.join(map(str, report['skipped']))}: this runtime has no "
              "Config.max_concurrency (it handles one event at a time).")
    for line in targets(results, args.delay):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "concurrent_runtime": CONCURRENT, **report}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
