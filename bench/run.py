"""The benchmark driver: ``python bench/run.py [--quick] [--pin|--no-pin] [--cases a,b] ...``.

Starts the package's ``LocalMemoryService`` in its own process
(``python -m memory_service_processor.testing serve --preload N``), runs every case in its
own process (``bench/cases.py``), repeats each ``--repeat`` times (interleaved) and reports
medians: one table per CPU placement (unpinned, and pinned with ``taskset``: the server on
one CPU, the processor process on another), printed and written as JSON (``--json``).
See ``bench/README.md`` for what each case measures and the latest results.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
CASES_PY = str(HERE / "cases.py")
LIVE_SERVER_PY = str(HERE / "live_server.py")

THROUGHPUT_CASES = ["raw", "sync", "async", "data", "sync-every1000", "grpcio-seed", "grpcio-every1000"]
LIVE_CASES = ["live", "live-grpcio"]
ALL_CASES = THROUGHPUT_CASES + LIVE_CASES + ["memory"]
GRPCIO_CASES = {"grpcio-seed", "grpcio-every1000", "live-grpcio"}

LABELS = {
    "raw": "raw: Rust client, read only",
    "sync": "ours: sync processor (defaults)",
    "async": "ours: async processor (defaults)",
    "data": "ours: sync, reads event.data",
    "sync-every1000": "ours: sync, checkpoint_every=1000",
    "grpcio-seed": "grpc.aio loop, write-every-event rules",
    "grpcio-every1000": "grpc.aio loop, write every 1,000",
    "live": "ours: live latency (defaults)",
    "live-grpcio": "grpc.aio loop: live latency",
    "memory": "ours: memory run (sleepy sync)",
}

TARGETS = {
    "x_seed": 50.0,
    "x_every1000": 5.0,
    "raw_fraction": 0.5,
    "live_p99_us": 2000.0,
    "memory_peak_mb": 80.0,
}


def log(msg: str) -> None:
    """Progress to stderr (the table goes to stdout)."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------
# machine


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> Dict[str, str]:
    """Installed versions of the package and the baseline's dependencies."""
    out: Dict[str, str] = {}
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return out
    for dist in ("memory-service-processor", "grpcio", "grpcio-tools", "protobuf"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine() -> Dict[str, Any]:
    """What the results were measured on."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
        "versions": versions(),
    }


# ------------------------------------------------------------------------------------------
# processes


def pinned_cmd(cmd: List[str], cpus: Optional[Sequence[int]]) -> Tuple[List[str], Any]:
    """``cmd`` restricted to ``cpus``: through ``taskset`` when installed, else ``preexec_fn``."""
    if cpus is None:
        return cmd, None
    spec = ",".join(str(c) for c in cpus)
    taskset = shutil.which("taskset")
    if taskset:
        return [taskset, "-c", spec, *cmd], None
    cpu_set = set(cpus)
    return cmd, (lambda: os.sched_setaffinity(0, cpu_set))


class Server:
    """A server process that prints ``READY <endpoint>`` once it serves."""

    def __init__(self, cmd: List[str], cpus: Optional[Sequence[int]], timeout: float = 300.0) -> None:
        full, preexec = pinned_cmd(cmd, cpus)
        self.proc = subprocess.Popen(
            full, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, preexec_fn=preexec
        )
        self.endpoint = ""
        ready: Dict[str, str] = {}

        def read_ready() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("READY "):
                    ready["endpoint"] = line.split()[1]
                    return

        t = threading.Thread(target=read_ready, daemon=True)
        t.start()
        t.join(timeout)
        if "endpoint" not in ready:
            self.stop()
            raise RuntimeError(f"server did not become ready within {timeout:.0f}s: {' '.join(cmd)}")
        self.endpoint = ready["endpoint"]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def process_cpu_ns(pid: int) -> int:
    """CPU nanoseconds used so far by the live threads of process ``pid``."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def run_child(cmd: List[str], cpus: Optional[Sequence[int]], timeout: float) -> Dict[str, Any]:
    """Runs one case process; returns its JSON line plus ``peak_rss_kb`` (``wait4``'s ru_maxrss)."""
    full, preexec = pinned_cmd(cmd, cpus)
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, preexec_fn=preexec)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except OSError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        err.seek(0)
        stderr = err.read()
    if timed_out.is_set():
        raise RuntimeError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}\n{stderr[-3000:]}")
    lines = [l for l in out.decode().splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"exit {proc.returncode}, no result: {' '.join(cmd)}\n{stderr[-3000:]}")
    result: Dict[str, Any] = json.loads(lines[-1])
    result["peak_rss_kb"] = usage.ru_maxrss  # KiB on Linux
    if proc.returncode != 0:
        # The case finished and printed its result, then the process died while the
        # interpreter shut down. Keep the measurement, but make the crash visible.
        first = next((l for l in stderr.splitlines() if l.startswith("Fatal Python error")), "")
        if not first and proc.returncode < 0:
            first = f"killed by signal {signal.Signals(-proc.returncode).name}"
        result["exit_status"] = proc.returncode
        result["exit_error"] = first
        log(f"  WARNING: the case process died at exit ({proc.returncode}) after reporting: {first}")
    return result


# ------------------------------------------------------------------------------------------
# running


class Bench:
    """Runs the cases of one invocation; numbers client ids so every run starts fresh."""

    def __init__(self, args: argparse.Namespace, stubs: Optional[str], raw_reader: Optional[str] = None) -> None:
        """``stubs``: root of the generated grpc stubs (None when no grpcio case runs);
        ``raw_reader``: the built Rust reader of the raw case (None: the case builds it)."""
        self.a = args
        self.stubs = stubs
        self.raw_reader = raw_reader
        self.seq = 0

    def client_id(self, case: str, mode: str) -> str:
        """A client id never used before, so each run replays from the start."""
        self.seq += 1
        return f"bench-{mode}-{case}-{os.getpid()}-{self.seq}"

    def case_cmd(self, case: str, endpoint: str, events: int, mode: str, extra: Sequence[str] = ()) -> List[str]:
        cmd = [sys.executable, "-X", "faulthandler", CASES_PY, case, "--endpoint", endpoint, "--events", str(events),
               "--client-id", self.client_id(case, mode), *extra]
        if case in GRPCIO_CASES:
            assert self.stubs is not None
            cmd += ["--stubs", self.stubs]
        if case == "raw" and self.raw_reader:
            cmd += ["--raw-reader", self.raw_reader]
        return cmd

    def events_for(self, case: str) -> int:
        """Events a case handles (``--seed-events`` may cap the slow write-every-event loop)."""
        if case == "grpcio-seed" and self.a.seed_events:
            return min(self.a.seed_events, self.a.events)
        return self.a.events

    def run_live(self, case: str, mode: str, server_cpus: Optional[List[int]], client_cpus: Optional[List[int]]) -> Dict[str, Any]:
        """One live-latency run: a fresh publisher process, then the processor process."""
        a = self.a
        count = max(1, int(a.live_rate * a.live_seconds))
        warmup = a.live_warmup
        server = Server(
            [sys.executable, LIVE_SERVER_PY, "--rate", str(a.live_rate), "--count", str(count), "--warmup", str(warmup)],
            server_cpus,
            timeout=120,
        )
        try:
            cmd = self.case_cmd(case, server.endpoint, count + warmup, mode, ["--warmup", str(warmup)])
            return run_child(cmd, client_cpus, timeout=120 + 3 * (count + warmup) / a.live_rate)
        finally:
            server.stop()

    def run_mode(self, mode: str, cases: List[str]) -> Dict[str, Any]:
        """Every case, ``--repeat`` times interleaved, with one CPU placement; summarized."""
        a = self.a
        cpus = sorted(os.sched_getaffinity(0))
        if mode == "pinned":
            server_cpus: Optional[List[int]] = [cpus[0]]
            client_cpus: Optional[List[int]] = [cpus[1] if len(cpus) > 1 else cpus[0]]
        else:
            server_cpus = client_cpus = None
        results: Dict[str, List[Dict[str, Any]]] = {c: [] for c in cases}
        errors: Dict[str, str] = {}
        needs_server = [c for c in cases if c not in LIVE_CASES]
        preload = 0
        if needs_server:
            preload = max(self.events_for(c) for c in needs_server if c != "memory") if any(
                c != "memory" for c in needs_server) else 0
            if "memory" in cases:
                preload = max(preload, a.memory_events)
        server: Optional[Server] = None
        try:
            if preload:
                log(f"[{mode}] starting LocalMemoryService with {preload:,} preloaded events ...")
                t = time.perf_counter()
                server = Server(
                    [sys.executable, "-m", "memory_service_processor.testing", "serve", "--preload", str(preload)],
                    server_cpus,
                )
                log(f"[{mode}] server ready at {server.endpoint} after {time.perf_counter() - t:.1f}s")
            for rep in range(a.repeat):
                for case in cases:
                    if case == "memory" or case in errors:
                        continue
                    try:
                        if case in LIVE_CASES:
                            r = self.run_live(case, mode, server_cpus, client_cpus)
                        else:
                            assert server is not None
                            n = self.events_for(case)
                            cpu0 = process_cpu_ns(server.proc.pid)
                            r = run_child(self.case_cmd(case, server.endpoint, n, mode), client_cpus,
                                          timeout=120 + n / 200)
                            r["server_cpu_s"] = (process_cpu_ns(server.proc.pid) - cpu0) / 1e9
                    except Exception as e:  # noqa: BLE001 - reported, the others go on
                        errors[case] = str(e)
                        log(f"[{mode}] {case}: FAILED: {e}")
                        continue
                    results[case].append(r)
                    log(f"[{mode} {rep + 1}/{a.repeat}] {case}: {describe(r)}")
            if "memory" in cases:
                assert server is not None
                try:
                    n = a.memory_events
                    cmd = self.case_cmd("memory", server.endpoint, n, mode,
                                        ["--sample-every", str(max(1, n // 20))])
                    r = run_child(cmd, client_cpus, timeout=120 + n / 500)
                    results["memory"].append(r)
                    log(f"[{mode}] memory: {describe(r)}")
                except Exception as e:  # noqa: BLE001
                    errors["memory"] = str(e)
                    log(f"[{mode}] memory: FAILED: {e}")
        finally:
            if server is not None:
                server.stop()
        return summarize(mode, cases, results, errors, server_cpus, client_cpus)


def describe(r: Dict[str, Any]) -> str:
    """One progress line for a run."""
    parts = []
    if "latency" in r:
        lat = r["latency"]
        parts.append(f"p50 {lat.get('p50_us', 0):.0f} us, p99 {lat.get('p99_us', 0):.0f} us")
    elif r.get("seconds"):
        parts.append(f"{r['handled'] / r['seconds']:,.0f} events/s")
    parts.append(f"peak RSS {r['peak_rss_kb'] / 1024:.1f} MB")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------
# summary


def median(xs: List[float]) -> Optional[float]:
    """Median, or None for no values."""
    return statistics.median(xs) if xs else None


def summarize(mode: str, cases: List[str], results: Dict[str, List[Dict[str, Any]]], errors: Dict[str, str],
              server_cpus: Optional[List[int]], client_cpus: Optional[List[int]]) -> Dict[str, Any]:
    """Medians, peak RSS, CPU per event and targets of one placement's runs."""
    out: Dict[str, Any] = {
        "placement": {"server_cpus": server_cpus, "processor_cpus": client_cpus},
        "cases": {},
        "errors": errors,
    }
    for case in cases:
        runs = results.get(case, [])
        s: Dict[str, Any] = {"runs": runs}
        if runs:
            s["events_per_s"] = median([r["handled"] / r["seconds"] for r in runs if r.get("seconds")])
            s["peak_rss_mb"] = max(r["peak_rss_kb"] for r in runs) / 1024.0
            stats: List[Dict[str, Any]] = [r["stats"] for r in runs if r.get("stats")]
            if stats:
                s["avg_batch"] = median([st["events_handled"] / st["batches"] for st in stats if st.get("batches")])
                s["checkpoints_written"] = median([st["checkpoints_written"] for st in stats])
            elif runs[0].get("checkpoints_written") is not None:
                s["checkpoints_written"] = median([r["checkpoints_written"] for r in runs])
            if "latency" in runs[0]:
                for k in ("p50_us", "p90_us", "p99_us", "max_us"):
                    vals = [r["latency"][k] for r in runs if k in r["latency"]]
                    if vals:
                        s[k] = median(vals)
                for part in ("latency_to_receipt", "latency_receipt_to_handle"):
                    for k in ("p50_us", "p99_us"):
                        vals = [r[part][k] for r in runs if k in r.get(part, {})]
                        if vals:
                            s[f"{part}_{k}"] = median(vals)
            prof = [r for r in runs if r.get("thread_cpu_s") and r.get("handled")]
            if prof:
                def per_event(f: Any) -> Optional[float]:
                    return median([f(r) * 1e6 / r["handled"] for r in prof])

                s["wall_us_per_event"] = per_event(lambda r: r["seconds"])
                s["cpu_us_per_event"] = {
                    "processor_main_thread": per_event(lambda r: r["thread_cpu_s"].get("main", 0.0)),
                    "processor_other_threads": per_event(
                        lambda r: sum(v for k, v in r["thread_cpu_s"].items() if k != "main")),
                }
                if all("server_cpu_s" in r for r in prof):
                    s["cpu_us_per_event"]["server"] = per_event(lambda r: r["server_cpu_s"])
            crashes = [r for r in runs if r.get("exit_status")]
            if crashes:
                s["exit_crashes"] = len(crashes)
                s["exit_errors"] = sorted({r.get("exit_error", "") for r in crashes})
            if "rss_samples" in runs[0]:
                samples = runs[0]["rss_samples"]
                s["rss_samples_mb"] = [[n, b / 2**20] for n, b in samples]
                n_total = samples[-1][0]
                after = [b for n, b in samples if n >= n_total * 0.2]
                if after:
                    s["rss_growth_after_20pct_mb"] = (max(after) - after[0]) / 2**20
        out["cases"][case] = s
    out["targets"] = targets(out["cases"])
    return out


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """a / b, or None when either is unknown."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def targets(c: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The issue's targets, evaluated on the medians of one placement."""
    def eps(name: str) -> Optional[float]:
        return c.get(name, {}).get("events_per_s")

    rows: List[Dict[str, Any]] = []

    def add(name: str, value: Optional[float], want: str, limit: float, ok: Optional[bool]) -> None:
        rows.append({"target": name, "value": value, "want": want, "limit": limit, "met": ok})

    x = ratio(eps("sync"), eps("grpcio-seed"))
    if x is not None:
        add("sync vs grpc.aio loop, write-every-event rules", x, ">=", TARGETS["x_seed"], x >= TARGETS["x_seed"])
    x = ratio(eps("sync"), eps("grpcio-every1000"))
    if x is not None:
        add("sync vs grpc.aio loop, write every 1,000", x, ">=", TARGETS["x_every1000"], x >= TARGETS["x_every1000"])
    x = ratio(eps("sync"), eps("raw"))
    if x is not None:
        add("sync as a fraction of the raw Rust read", x, ">=", TARGETS["raw_fraction"], x >= TARGETS["raw_fraction"])
    p99 = c.get("live", {}).get("p99_us")
    if p99 is not None:
        add("live p99 publish-to-handle (us)", p99, "<", TARGETS["live_p99_us"], p99 < TARGETS["live_p99_us"])
    mem = c.get("memory", {})
    if mem.get("peak_rss_mb") is not None:
        add("memory run peak RSS (MB)", mem["peak_rss_mb"], "<", TARGETS["memory_peak_mb"],
            mem["peak_rss_mb"] < TARGETS["memory_peak_mb"])
    if mem.get("rss_growth_after_20pct_mb") is not None:
        g = mem["rss_growth_after_20pct_mb"]
        add("memory run RSS growth from 20% to 100% of the events (MB)", g, "<", 4.0, g < 4.0)
    return rows


def fmt(v: Optional[float], spec: str, suffix: str = "") -> str:
    """Formats a number, ``-`` when unknown."""
    return "-" if v is None else format(v, spec) + suffix


def table(mode: str, summary: Dict[str, Any], cases: List[str]) -> str:
    """The Markdown table, CPU profile and targets of one placement."""
    c = summary["cases"]
    seed = c.get("grpcio-seed", {}).get("events_per_s")
    k1000 = c.get("grpcio-every1000", {}).get("events_per_s")
    raw = c.get("raw", {}).get("events_per_s")
    header = ["case", "events/s", "x py seed", "x py 1000", "% raw", "peak RSS", "notes"]
    rows = []
    for case in cases:
        s = c.get(case, {})
        if case in summary["errors"] and not s.get("runs"):
            rows.append([LABELS[case], "FAILED", "", "", "", "", summary["errors"][case].splitlines()[0][:60]])
            continue
        e = s.get("events_per_s")
        notes = []
        if case in LIVE_CASES:
            ev = "live"
            notes.append(f"p50 {fmt(s.get('p50_us'), '.0f')} us, p99 {fmt(s.get('p99_us'), '.0f')} us, "
                         f"max {fmt(s.get('max_us'), '.0f')} us")
            if s.get("latency_to_receipt_p99_us") is not None:
                notes.append(f"to Rust receipt p50/p99 {fmt(s.get('latency_to_receipt_p50_us'), '.0f')}/"
                             f"{fmt(s.get('latency_to_receipt_p99_us'), '.0f')} us, then to handle "
                             f"{fmt(s.get('latency_receipt_to_handle_p50_us'), '.0f')}/"
                             f"{fmt(s.get('latency_receipt_to_handle_p99_us'), '.0f')} us")
            xs = x1 = pr = ""
        else:
            ev = fmt(e, ",.0f")
            xs = fmt(ratio(e, seed), ".1f", "x")
            x1 = fmt(ratio(e, k1000), ".1f", "x")
            pr = fmt(None if ratio(e, raw) is None else 100 * ratio(e, raw), ".0f", "%")  # type: ignore[operator]
            if case == "memory":  # it sleeps on purpose: its rate is not comparable
                xs = x1 = pr = ""
        if s.get("avg_batch") is not None:
            notes.append(f"avg batch {s['avg_batch']:.0f}")
        if s.get("checkpoints_written") is not None and case not in LIVE_CASES:
            notes.append(f"{s['checkpoints_written']:,.0f} checkpoint writes")
        if case == "memory" and s.get("rss_samples_mb"):
            sm = s["rss_samples_mb"]
            picks = [sm[len(sm) // 5], sm[len(sm) // 2], sm[-1]]
            notes.append("RSS " + ", ".join(f"{p[1]:.1f} MB@{p[0]:,}" for p in picks))
        if s.get("exit_crashes"):
            notes.append(f"{s['exit_crashes']}/{len(s['runs'])} processes died at exit (see JSON)")
        rows.append([LABELS[case], ev, xs, x1, pr, fmt(s.get("peak_rss_mb"), ".1f", " MB"), "; ".join(notes)])
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        lines.append("| " + " | ".join((str(v).ljust(w) if i in (0, 6) else str(v).rjust(w))
                                       for i, (v, w) in enumerate(zip(r, widths))) + " |")
    prof_rows = []
    for case in cases:
        s = c.get(case, {})
        cpu = s.get("cpu_us_per_event")
        if not cpu or case in LIVE_CASES or case == "memory":
            continue
        prof_rows.append([LABELS[case], fmt(s.get("wall_us_per_event"), ".2f"),
                          fmt(cpu.get("processor_main_thread"), ".2f"),
                          fmt(cpu.get("processor_other_threads"), ".2f"), fmt(cpu.get("server"), ".2f")])
    prof_header = ["case", "wall us/event", "processor main thread", "processor other threads", "server"]
    prof_lines: List[str] = []
    if prof_rows:
        pw = [max(len(str(r[i])) for r in prof_rows + [prof_header]) for i in range(len(prof_header))]
        prof_lines = ["CPU time per event (us), medians; the processor's main thread runs Python:", "",
                      "| " + " | ".join(h.ljust(w) for h, w in zip(prof_header, pw)) + " |",
                      "|" + "|".join("-" * (w + 2) for w in pw) + "|"]
        for r in prof_rows:
            prof_lines.append("| " + " | ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                                                for i, (v, w) in enumerate(zip(r, pw))) + " |")
        prof_lines.append("")
    pl = summary["placement"]
    where = ("unpinned (the scheduler places every thread)" if pl["server_cpus"] is None else
             f"pinned with taskset: server on CPU {pl['server_cpus']}, processor on CPU {pl['processor_cpus']}")
    out = [f"### {mode}: {where}", ""] + lines + [""] + prof_lines
    for t in summary["targets"]:
        mark = "met" if t["met"] else "MISSED"
        out.append(f"- {t['target']}: {t['value']:,.2f} (target {t['want']} {t['limit']:g}): {mark}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------
# main


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Command-line options, with ``--quick`` defaults applied."""
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=None, help="preloaded events replayed per case (default 200,000)")
    p.add_argument("--repeat", type=int, default=None, help="runs per case; medians are reported (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="a short run for development: 20,000 events, 1 repeat, 100,000-event memory run, 2 s live")
    pin = p.add_mutually_exclusive_group()
    pin.add_argument("--pin", dest="pin", action="store_const", const="pinned", help="only the pinned run")
    pin.add_argument("--no-pin", dest="pin", action="store_const", const="unpinned", help="only the unpinned run")
    p.add_argument("--json", default=str(HERE / "results.json"), help="write the results here (default bench/results.json)")
    p.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma-separated subset of: {','.join(ALL_CASES)}")
    p.add_argument("--memory-events", type=int, default=None, help="events of the memory run (default 1,000,000)")
    p.add_argument("--seed-events", type=int, default=None,
                   help="cap the events of the grpc.aio write-every-event loop (default: --events; it runs at ~2k/s)")
    p.add_argument("--live-rate", type=float, default=1000.0, help="live case: events published per second")
    p.add_argument("--live-seconds", type=float, default=None, help="live case: seconds of publishing (default 5)")
    p.add_argument("--raw-reader", default=None,
                   help="raw case: an already built bench/raw_read executable (default: build it with cargo)")
    p.add_argument("--live-warmup", type=int, default=200, help="live case: first events left out of the figures")
    a = p.parse_args(argv)
    q = a.quick
    a.events = a.events if a.events is not None else (20_000 if q else 200_000)
    a.repeat = a.repeat if a.repeat is not None else (1 if q else 3)
    a.memory_events = a.memory_events if a.memory_events is not None else (100_000 if q else 1_000_000)
    a.live_seconds = a.live_seconds if a.live_seconds is not None else (2.0 if q else 5.0)
    if a.seed_events is None and q:
        a.seed_events = 5_000
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(ALL_CASES)}")
    a.case_list = [c for c in ALL_CASES if c in cases]
    if a.events < 1 or a.repeat < 1 or a.memory_events < 1:
        p.error("--events, --repeat and --memory-events must be positive")
    return a


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the benchmark; exit status 1 if a case failed."""
    a = parse_args(argv)
    cases: List[str] = a.case_list
    stubs = None
    if any(c in GRPCIO_CASES for c in cases):
        sys.path.insert(0, str(HERE))
        import grpcio_baseline

        stubs = grpcio_baseline.ensure_stubs()
    modes = [a.pin] if a.pin else ["unpinned", "pinned"]
    if "pinned" in modes and len(os.sched_getaffinity(0)) < 2:
        log("note: fewer than 2 CPUs available; the pinned run puts server and processor on one CPU")
    raw_reader = a.raw_reader
    if "raw" in cases and raw_reader is None:
        sys.path.insert(0, str(HERE))
        import cases as bench_cases

        log("building the raw case's Rust reader (cargo build --release --features bench) ...")
        try:
            raw_reader = bench_cases.build_raw_reader()
        except RuntimeError as e:  # the raw case then fails on its own, with this reason
            log(f"  {e}")
    bench = Bench(a, stubs, raw_reader)
    started = time.time()
    info = machine()
    report: Dict[str, Any] = {
        "command": " ".join(["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "settings": {
            "events": a.events, "repeat": a.repeat, "memory_events": a.memory_events,
            "seed_events": bench.events_for("grpcio-seed"), "live_rate": a.live_rate,
            "live_seconds": a.live_seconds, "live_warmup": a.live_warmup, "cases": cases,
        },
        "targets": TARGETS,
        "modes": {},
    }
    text = []
    for mode in modes:
        summary = bench.run_mode(mode, cases)
        report["modes"][mode] = summary
        text.append(table(mode, summary, cases))
    info["loadavg_end"] = list(os.getloadavg())
    report["duration_s"] = time.time() - started
    head = (f"Machine: {info['nproc']} CPUs, {info['cpu_model']}, Python {info['python']}, {info['platform']}\n"
            f"Settings: {a.events:,} preloaded entry events per case (grpc.aio seed loop: "
            f"{bench.events_for('grpcio-seed'):,}), median of {a.repeat}; memory run {a.memory_events:,} events; "
            f"live {a.live_rate:,.0f} events/s for {a.live_seconds:g} s after {a.live_warmup} warm-up events\n"
            f"Load average: {info['loadavg_start'][0]:.2f} at start, {info['loadavg_end'][0]:.2f} at the end; "
            f"{report['duration_s']:.0f} s in all\n")
    report["table"] = head + "\n" + "\n".join(text)
    print(report["table"])
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
        log(f"results written to {a.json}")
    failed = any(report["modes"][m]["errors"] for m in modes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
