"""One benchmark case, run in its own process: ``python bench/cases.py CASE --endpoint EP ...``.

Prints one JSON line on stdout with the case's timings and counters; the driver
(``bench/run.py``) measures the process's peak RSS with ``wait4``. Cases:

``raw``               the pure-Rust reader ``bench/raw_read.rs`` (the wire's limit), built with
                      cargo (feature ``bench``) unless ``--raw-reader`` names the executable
``sync``              a trivial sync processor (counts, keeps ``lastEventCursor``), defaults
``async``             the same with ``async def handle``
``data``              the sync processor reading ``event.data`` (JSON decode) for every event
``sync-every1000``    ``sync`` with ``checkpoint_every=1000``
``grpcio-seed``       the plain ``grpc.aio`` loop, write-every-event rules (a write after every event)
``grpcio-every1000``  the same loop writing every 1,000 events
``live``              publish-to-handle latency, our runtime with default settings
``live-grpcio``       publish-to-handle latency, the plain ``grpc.aio`` loop (write-every-event rules)
``memory``            ``sync`` over ``--events`` events, sleeping 1 ms every 1,000 events,
                      sampling the process's RSS every ``--sample-every`` events
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from memory_service_processor import Config, EventProcessor, Runtime

CONTENT_TYPE = "application/vnd.msp-bench.counter+json;v=1"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def vm_hwm_kb() -> Optional[int]:
    """Peak resident set size of this process so far (VmHWM), in KiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover
        pass
    return None


def thread_cpu_ns() -> Dict[int, Tuple[str, int]]:
    """``{tid: (name, cpu_ns)}`` for this process's live threads.

    From ``/proc/self/task/*/schedstat`` (nanosecond run time). The main thread is named
    ``main``; the Rust core's tokio threads are ``msp-core``; grpcio names its own.
    """
    out: Dict[int, Tuple[str, int]] = {}
    main_tid = os.getpid()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        t = int(tid)
        out[t] = ("main" if t == main_tid else name, ns)
    return out


def cpu_since(before: Dict[int, Tuple[str, int]]) -> Dict[str, float]:
    """CPU seconds per thread name since ``before`` (threads that exited meanwhile are lost)."""
    out: Dict[str, float] = {}
    for tid, (name, ns) in thread_cpu_ns().items():
        used = ns - before.get(tid, (name, 0))[1]
        out[name] = out.get(name, 0.0) + used / 1e9
    return out


class Counter(EventProcessor):
    """The trivial sync processor: counts events and keeps ``lastEventCursor``."""

    CONTENT_TYPE = CONTENT_TYPE

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.t_done = 0.0
        self.on_target: Callable[[], None] = lambda: None

    def load(self, state: Any) -> None:
        """Restores the cursor and the count."""
        super().load(state)
        if isinstance(state, dict):
            self.count = int(state.get("count", 0))

    def handle(self, event: Any) -> None:
        self.count += 1
        self.last_event_cursor = event.cursor
        if self.count == self.target:
            self.t_done = time.perf_counter()
            self.on_target()

    def snapshot(self) -> Dict[str, Any]:
        """``{"lastEventCursor": ..., "count": ...}``."""
        return {"lastEventCursor": self.last_event_cursor, "count": self.count}


class AsyncCounter(Counter):
    """The same with a coroutine ``handle``."""

    async def handle(self, event: Any) -> None:  # type: ignore[override]
        self.count += 1
        self.last_event_cursor = event.cursor
        if self.count == self.target:
            self.t_done = time.perf_counter()
            self.on_target()


class DataCounter(Counter):
    """Reads ``event.data`` (decoded JSON) for every event."""

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.text_chars = 0

    def handle(self, event: Any) -> None:
        data = event.data
        self.text_chars += len(data["content"][0]["text"])
        self.count += 1
        self.last_event_cursor = event.cursor
        if self.count == self.target:
            self.t_done = time.perf_counter()
            self.on_target()


class SleepyCounter(Counter):
    """Sleeps 1 ms every 1,000 events and samples RSS every ``sample_every`` events."""

    def __init__(self, target: int, sample_every: int) -> None:
        super().__init__(target)
        self.sample_every = max(1, sample_every)
        self.samples: List[List[int]] = [[0, rss_bytes()]]

    def handle(self, event: Any) -> None:
        self.count += 1
        self.last_event_cursor = event.cursor
        n = self.count
        if n % 1000 == 0:
            time.sleep(0.001)
        if n % self.sample_every == 0:
            self.samples.append([n, rss_bytes()])
        if n == self.target:
            self.t_done = time.perf_counter()
            self.on_target()


class LatencyCounter(Counter):
    """Records publish-to-handle latency from the ``t_ns`` the publisher embeds in ``data``.

    Also splits it in two with the wall clock: publish to the Rust stream task's receipt
    (``event.time``, stamped when the message is decoded) and receipt to ``handle``.
    """

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.latencies_ns: List[int] = []
        self.to_receipt_ns: List[int] = []

    def handle(self, event: Any) -> None:
        now = time.perf_counter_ns()
        data = event.data
        self.latencies_ns.append(now - data["t_ns"])
        self.to_receipt_ns.append(int(event.time.timestamp() * 1e9) - data["t_wall_ns"])
        super().handle(event)


async def run_ours(endpoint: str, processor: Counter, config: Config) -> Dict[str, Any]:
    """Runs ``processor`` with our Runtime until it reached its target; returns timings/stats."""
    runtime = Runtime(processor, config, endpoint=endpoint)
    processor.on_target = runtime.stop
    t0 = time.perf_counter()
    await runtime.run()
    t_end = time.perf_counter()
    stats = runtime.stats()
    if processor.count < processor.target:
        raise RuntimeError(f"run ended after {processor.count} of {processor.target} events")
    return {
        "seconds": processor.t_done - t0,
        "total_seconds": t_end - t0,
        "handled": processor.count,
        "checkpoints_written": stats.get("checkpoints_written"),
        "stats": stats,
    }


def latency_summary(latencies_ns: List[int], warmup: int) -> Dict[str, Any]:
    """p50/p90/p99/max of the latencies after ``warmup`` events, in microseconds."""
    xs = sorted(latencies_ns[warmup:])
    if not xs:
        return {"count": 0}

    def pct(p: float) -> float:
        i = min(len(xs) - 1, max(0, int(round(p / 100.0 * len(xs) + 0.5)) - 1))
        return xs[i] / 1000.0

    return {
        "count": len(xs),
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "max_us": xs[-1] / 1000.0,
        "mean_us": sum(xs) / len(xs) / 1000.0,
    }


ROOT = Path(__file__).resolve().parent.parent


def build_raw_reader() -> str:
    """Builds ``bench/raw_read.rs`` (``cargo build --release --features bench``); returns the
    executable's path. Raises ``RuntimeError`` without cargo or when the build fails."""
    cargo = shutil.which("cargo")
    if cargo is None:
        raise RuntimeError("the raw case needs cargo (it builds the Rust reader bench/raw_read.rs)")
    r = subprocess.run(
        [cargo, "build", "--release", "--features", "bench", "--bin", "raw_read", "--message-format=json"],
        cwd=str(ROOT), capture_output=True, text=True,
    )
    if r.returncode != 0:
        raise RuntimeError(f"building bench/raw_read.rs failed:\n{r.stderr[-3000:]}")
    for line in reversed(r.stdout.splitlines()):
        msg = json.loads(line) if line.startswith("{") else {}
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "raw_read":
            return str(msg["executable"])
    raise RuntimeError("cargo built bench/raw_read.rs but named no executable")


def raw_read(executable: str, endpoint: str, events: int) -> Dict[str, Any]:
    """Runs the Rust reader; its JSON line (``seconds``, ``handled``, ``vm_hwm_kb``,
    ``thread_cpu_s``, measured in its own process)."""
    r = subprocess.run([executable, endpoint, str(events)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"raw_read failed ({r.returncode}): {r.stderr[-3000:]}")
    result: Dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def main(argv: Optional[List[str]] = None) -> int:
    """Runs one case and prints its JSON line."""
    p = argparse.ArgumentParser(prog="bench/cases.py")
    p.add_argument("case")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--events", type=int, required=True, help="business events to handle")
    p.add_argument("--client-id", default=f"bench-{os.getpid()}")
    p.add_argument("--stubs", help="root of the generated grpc stubs (grpcio cases)")
    p.add_argument("--sample-every", type=int, default=50_000, help="memory case: RSS sample period")
    p.add_argument("--warmup", type=int, default=0, help="live cases: events left out of the latency figures")
    p.add_argument("--raw-reader", help="raw case: the built bench/raw_read executable (default: build it)")
    a = p.parse_args(argv)
    n = a.events
    cid = a.client_id
    out: Dict[str, Any] = {"case": a.case, "events": n}
    if a.case in ("grpcio-seed", "grpcio-every1000", "live-grpcio"):
        if not a.stubs:
            p.error("--stubs is required for the grpcio cases")
        import importlib

        import grpcio_baseline as gb

        importlib.import_module("grpc")  # imported before the CPU accounting starts

        gb.load_stubs(a.stubs)
    if a.case == "raw":
        # The reader measures itself (time, peak RSS, CPU per thread) in its own process.
        out.update(raw_read(a.raw_reader or build_raw_reader(), a.endpoint, n))
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
        return 0
    cpu0 = thread_cpu_ns()

    if a.case in ("sync", "async", "data", "sync-every1000"):
        proc = {"sync": Counter, "sync-every1000": Counter, "async": AsyncCounter, "data": DataCounter}[a.case](n)
        every = 1000 if a.case == "sync-every1000" else 1
        cfg = Config(client_id=cid, after_cursor="start", checkpoint_every=every)
        out.update(asyncio.run(run_ours(a.endpoint, proc, cfg)))
    elif a.case == "memory":
        proc = SleepyCounter(n, a.sample_every)
        cfg = Config(client_id=cid, after_cursor="start")
        out.update(asyncio.run(run_ours(a.endpoint, proc, cfg)))
        proc.samples.append([proc.count, rss_bytes()])
        out["rss_samples"] = proc.samples
    elif a.case == "live":
        proc = LatencyCounter(n)
        cfg = Config(client_id=cid)  # no after_cursor: tail only, as a live processor would
        out.update(asyncio.run(run_ours(a.endpoint, proc, cfg)))
        out["latency"] = latency_summary(proc.latencies_ns, a.warmup)
        out["latency_to_receipt"] = latency_summary(proc.to_receipt_ns, a.warmup)
        out["latency_receipt_to_handle"] = latency_summary(
            [t - r for t, r in zip(proc.latencies_ns, proc.to_receipt_ns)], a.warmup)
    elif a.case in ("grpcio-seed", "grpcio-every1000", "live-grpcio"):
        if a.case == "live-grpcio":
            lproc = gb.LatencyCounter(n, lambda: None)
            out.update(asyncio.run(gb.run_loop(a.endpoint, lproc, cid, stubs_root=a.stubs, every=1, after_cursor=None)))
            out["latency"] = latency_summary(lproc.latencies_ns, a.warmup)
        else:
            every = 1000 if a.case == "grpcio-every1000" else 1
            out.update(asyncio.run(gb.run_loop(a.endpoint, gb.Counter(n, lambda: None), cid, stubs_root=a.stubs, every=every)))
    else:
        p.error(f"unknown case {a.case!r}")
    out["vm_hwm_kb"] = vm_hwm_kb()
    out["thread_cpu_s"] = cpu_since(cpu0)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
