"""Smoke run of the benchmark (``bench/run.py``) with a few hundred events.

Checks that every case runs end to end against a real LocalMemoryService process and reports
sane counts; makes no assertion about speed (the real benchmark is ``python bench/run.py``,
outside the test suite).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"

OURS = ["sync", "async", "data", "sync-every1000"]
GRPCIO = ["grpcio-seed", "grpcio-every1000", "live-grpcio"]


def _raw_reader() -> "str | None":
    """The raw case's Rust reader, when one was built beforehand (``MSP_BENCH_RAW_READER``).

    The smoke run does not build it: a release build of ``bench/raw_read.rs`` takes minutes on a
    fresh machine. ``.ci/run`` compiles the reader (``cargo build --features bench``) so it cannot
    rot; ``python bench/run.py`` builds and runs it for real.
    """
    path = os.environ.get("MSP_BENCH_RAW_READER")
    return path if path and os.access(path, os.X_OK) else None


def _have_grpcio() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("grpc", "grpc_tools", "google.protobuf"))


@pytest.mark.timeout(300)
def test_bench_smoke_run_reports_every_case(tmp_path: Path) -> None:
    reader = _raw_reader()
    raw = ["raw"] if reader else []
    cases = [*raw, *OURS, "live", "memory"]
    if _have_grpcio():
        cases += GRPCIO
    out = tmp_path / "results.json"
    events = 300
    proc = subprocess.run(
        [
            sys.executable, str(RUN),
            "--events", str(events), "--repeat", "1", "--no-pin",
            "--memory-events", "3000", "--live-seconds", "0.3", "--live-warmup", "20",
            "--cases", ",".join(cases), "--json", str(out),
            *(["--raw-reader", reader] if reader else []),
        ],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    if raw:
        assert "raw: Rust client, read only" in proc.stdout

    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"unpinned"}
    mode = report["modes"]["unpinned"]
    assert mode["errors"] == {}
    results = mode["cases"]
    assert set(results) == set(cases)
    assert report["machine"]["nproc"] >= 1

    for case in [*raw, *OURS] + (["grpcio-seed", "grpcio-every1000"] if _have_grpcio() else []):
        (run,) = results[case]["runs"]
        assert run["handled"] >= events, case
        assert run["seconds"] > 0, case
        assert results[case]["events_per_s"] > 0, case
        assert results[case]["peak_rss_mb"] > 0, case

    for case in OURS:
        stats = results[case]["runs"][0]["stats"]
        assert stats["events_handled"] >= events
        assert stats["checkpoints_written"] >= 1
        assert stats["checkpoints_failed"] == 0
        assert stats["batches"] >= 1
    # The write-every-event rules write a checkpoint after every event.
    if _have_grpcio():
        assert results["grpcio-seed"]["runs"][0]["checkpoints_written"] >= events

    live = results["live"]["runs"][0]
    assert live["latency"]["count"] == live["handled"] - 20
    assert live["latency"]["p50_us"] > 0

    memory = results["memory"]
    assert memory["runs"][0]["handled"] >= 3000
    samples = memory["runs"][0]["rss_samples"]
    assert samples[0][0] == 0 and samples[-1][0] >= 3000
    assert memory["peak_rss_mb"] > 0

    # Ratios and targets are computed from the medians.
    names = {t["target"] for t in mode["targets"]}
    if raw:
        assert "sync as a fraction of the raw Rust read" in names
    assert "live p99 publish-to-handle (us)" in names


CONCURRENCY = ROOT / "bench" / "concurrency.py"


@pytest.mark.timeout(60)
def test_concurrency_bench_smoke_run(tmp_path: Path) -> None:
    """``bench/concurrency.py`` end to end on a tiny stream: every case that the runtime supports
    handles its events and lands in the table (no assertion about speed)."""
    out = tmp_path / "concurrency.json"
    proc = subprocess.run(
        [
            sys.executable, str(CONCURRENCY),
            "--events", "160", "--conversations", "20", "--sequential-events", "20",
            "--concurrency", "1,8", "--json", str(out),
        ],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=55,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    ran = {r["max_concurrency"]: r for r in report["results"] if r["what"] == "runtime"}
    alone = {r["max_concurrency"]: r for r in report["results"] if r["what"] == "asyncio alone"}
    assert ran[1]["events"] == alone[1]["events"] == 20
    assert alone[8]["events"] == 160 and alone[8]["peak_in_flight"] == 8
    if report["concurrent_runtime"]:
        assert ran[8]["events"] == 160 and 1 <= ran[8]["peak_in_flight"] <= 8
    else:
        assert set(ran) == {1} and report["skipped"] == [8]
        assert "Not run: max_concurrency 8" in proc.stdout
    for r in report["results"]:
        assert r["events_per_s"] > 0 and r["loop_cpu_us_per_event"] > 0
        assert f"| {r['what']} " in proc.stdout
    assert ran[1]["peak_in_flight"] == alone[1]["peak_in_flight"] == 1


SHARDS = ROOT / "bench" / "shards.py"


@pytest.mark.timeout(240)
def test_shards_bench_smoke_run(tmp_path: Path) -> None:
    """``bench/shards.py`` end to end on a tiny stream: both scaling cases and both drop-cost
    cases run, the two shards split the events between them, and the all-foreign shard hands
    nothing to Python (its events are counted as foreign). No timing is asserted."""
    out = tmp_path / "shards.json"
    proc = subprocess.run(
        [sys.executable, str(SHARDS), "--events", "400", "--drop-events", "3000", "--repeat", "1",
         "--work-us", "20", "--json", str(out)],
        cwd=str(ROOT), capture_output=True, text=True, timeout=220,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert {p["handled"] for p in results["1 process"][0]["processes"]} == {400}
    shares = [p["handled"] for p in results["2 shards"][0]["processes"]]
    assert sum(shares) == 400 and min(shares) > 0
    foreign = results["all foreign"][0]["processes"][0]
    assert foreign["handled"] == 0 and foreign["foreign"] == 3000
    assert results["all own"][0]["processes"][0]["handled"] == 3000
    assert "2 shard processes" in proc.stdout and "Drop cost per foreign event" in proc.stdout
