"""The logging bridge (structured fields, JSON lines), runtime stats and Prometheus metrics."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import Recorder, cfg, publish_entries, run, started, wait_until
from memory_service_processor import Runtime
from memory_service_processor._logging import StructuredLogFilter, configure_logging
from memory_service_processor.testing import LocalMemoryService

REPO = Path(__file__).resolve().parents[1]


# -- structured fields ------------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []
        self.addFilter(StructuredLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_filter_types_only_package_records_and_adds_nothing() -> None:
    capture = _Capture()
    ours = logging.getLogger("memory_service_processor.stream_loop")
    theirs = logging.getLogger("someone.else")
    for lg in (ours, theirs):
        lg.addHandler(capture)
        lg.setLevel(logging.DEBUG)
    try:
        # As the Rust core sends them: every field a string, "" for no value.
        ours.info("subscribing", extra={"client_id": "a", "after_cursor": "7", "attempt": "3"})
        theirs.info("subscribing", extra={"client_id": "b", "attempt": "8"})
        ours.info("reconnecting", extra={"client_id": "c", "after_cursor": "", "reason": ""})
        ours.info("no structure here")
    finally:
        for lg in (ours, theirs):
            lg.removeHandler(capture)
            lg.setLevel(logging.NOTSET)
    first, other, empty, plain = capture.records
    assert (first.client_id, first.after_cursor, first.attempt) == ("a", "7", 3)  # type: ignore[attr-defined]
    assert other.attempt == "8"  # type: ignore[attr-defined]  # not ours: untouched
    assert (empty.client_id, empty.after_cursor, empty.reason) == ("c", None, None)  # type: ignore[attr-defined]
    assert not hasattr(empty, "cursor") and not hasattr(plain, "client_id")


def test_rust_core_records_arrive_with_structured_fields(server: LocalMemoryService) -> None:
    """The real bridge: records of the Rust core carry client_id / cursor / after_cursor."""
    capture = _Capture()
    root = logging.getLogger("memory_service_processor")
    root.addHandler(capture)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    cursors = publish_entries(server, 5)
    runtime = Runtime(Recorder(), cfg("bridge", after_cursor="start", checkpoint_interval=0.05), endpoint=server.endpoint)

    async def go() -> None:
        async with started(runtime) as s:
            await s.wait(lambda: runtime.stats()["events_handled"] == 5, "5 handled events")
            await s.wait(
                lambda: any(getattr(r, "cursor", None) == cursors[-1] for r in capture.records),
                "a checkpoint record with the last cursor",
            )

    try:
        from memory_service_processor import _native

        _native.reset_log_cache()
        run(go())
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    by_logger: Dict[str, List[logging.LogRecord]] = {}
    for r in capture.records:
        by_logger.setdefault(r.name, []).append(r)
    subscribe = [r for r in by_logger["memory_service_processor.stream_loop"] if r.getMessage().startswith("subscribing")]
    assert subscribe and subscribe[0].client_id == "bridge"  # type: ignore[attr-defined]
    assert subscribe[0].after_cursor == "start"  # type: ignore[attr-defined]
    written = [r for r in by_logger["memory_service_processor.checkpoint_writer"] if hasattr(r, "cursor")]
    assert written[-1].cursor == cursors[-1] and written[-1].client_id == "bridge"  # type: ignore[attr-defined]
    assert any(r.getMessage().startswith("stopping") for r in by_logger["memory_service_processor.driver"])


def test_json_formatter_one_object_per_line_with_fields() -> None:
    stream = io.StringIO()
    root_level = logging.getLogger().level
    handler = configure_logging("debug", "json", stream=stream)
    try:
        lg = logging.getLogger("memory_service_processor.driver")
        # Fields as the core passes them: structured, next to the human-readable text.
        lg.info("resuming client_id=%s after checkpoint cursor %s", "j1", "12", extra={"client_id": "j1", "cursor": "12"})
        lg.warning(
            "evicted client_id=j1 reason=slow consumer cursor=13: resuming",
            extra={"client_id": "j1", "reason": "slow consumer", "cursor": "13", "custom": [1, 2]},
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("user.code").exception("handler failed")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(root_level)
    lines = stream.getvalue().splitlines()
    docs = [json.loads(line) for line in lines]
    assert len(docs) == 3
    for d in docs:
        assert {"time", "level", "logger", "message"} <= set(d)
    assert docs[0]["client_id"] == "j1" and docs[0]["level"] == "INFO"
    assert docs[1]["reason"] == "slow consumer" and docs[1]["cursor"] == "13" and docs[1]["custom"] == [1, 2]
    assert docs[2]["logger"] == "user.code" and "ValueError: boom" in docs[2]["exception"]
    assert "client_id" not in docs[2]


def test_configure_logging_rejects_unknown_values() -> None:  # before touching any handler
    with pytest.raises(ValueError):
        configure_logging("loud", "text")
    with pytest.raises(ValueError):
        configure_logging("info", "xml")


# -- stats ----------------------------------------------------------------------------------------


def test_stats_counters(server: LocalMemoryService) -> None:
    cursors = publish_entries(server, 40)
    runtime = Runtime(Recorder(), cfg("stats", after_cursor="start", checkpoint_interval=0.05), endpoint=server.endpoint)
    before = runtime.stats()
    assert before["events_handled"] == 0 and before["phase"] == "connecting" and before["last_cursor"] is None

    async def go() -> Dict[str, Any]:
        async with started(runtime) as s:
            await s.wait(lambda: runtime.stats()["phase"] == "live", "the live phase")
            await s.wait(lambda: runtime.stats()["events_handled"] == 40, "40 handled events")
            await s.wait(lambda: runtime.stats()["checkpoints_written"] >= 1, "a checkpoint")
            return runtime.stats()

    live = run(go())
    assert live["events_handled"] == 40
    assert live["stream_signals"] == 2  # the replay and live phase signals
    assert live["events_received"] == 42
    assert live["last_cursor"] == cursors[-1]
    assert live["reconnects"] == 0 and live["checkpoints_failed"] == 0
    assert 1 <= live["batches"] <= 40
    assert live["buffer_depth"] == 0
    # handle_seconds_max is the largest per-batch mean, truncated to whole nanoseconds.
    assert live["handle_seconds_max"] >= live["handle_seconds_mean"] - 1e-9 >= -1e-9
    # The stream task marks "stopped" as it winds down, possibly just after run() returned.
    run(wait_until(lambda: runtime.stats()["phase"] == "stopped", "the stopped phase"))
    end = runtime.stats()
    assert end["checkpoints_written"] >= 1
    assert server.checkpoint("stats").value["lastEventCursor"] == cursors[-1]


# -- metrics --------------------------------------------------------------------------------------


def _scrape(port: int) -> Dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: Dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + ("{phase=%s}" % s.labels["phase"] if "phase" in s.labels else "")
            out[key] = s.value
            assert s.labels["client_id"] == "metrics"
    return out


def test_prometheus_collector_reads_stats_on_scrape(server: LocalMemoryService) -> None:
    pytest.importorskip("prometheus_client")
    from memory_service_processor._metrics import start_metrics_server

    publish_entries(server, 25)
    runtime = Runtime(Recorder(), cfg("metrics", after_cursor="start", checkpoint_interval=0.05), endpoint=server.endpoint)
    metrics = start_metrics_server(runtime, 0, "127.0.0.1")
    try:
        assert _scrape(metrics.port)["memory_service_processor_events_handled_total"] == 0

        async def go() -> Dict[str, float]:
            async with started(runtime) as s:
                await s.wait(lambda: runtime.stats()["events_handled"] == 25, "25 handled events")
                await s.wait(lambda: runtime.stats()["phase"] == "live", "the live phase")
                return await asyncio.get_running_loop().run_in_executor(None, _scrape, metrics.port)

        scraped = run(go())
    finally:
        metrics.close()
    assert scraped["memory_service_processor_events_handled_total"] == 25
    assert scraped["memory_service_processor_events_received_total"] == 27
    assert scraped["memory_service_processor_stream_signals_total"] == 2
    assert scraped["memory_service_processor_phase{phase=live}"] == 1
    assert scraped["memory_service_processor_phase{phase=replay}"] == 0
    assert "memory_service_processor_buffer_depth" in scraped
    assert "memory_service_processor_checkpoints_written_total" in scraped


def _env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_SERVICE_")}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_json_logs_and_metrics_port(server: LocalMemoryService, tmp_path: Path) -> None:
    """``run --log-format json --metrics-port``: JSON lines with fields, and a scrapeable endpoint."""
    pytest.importorskip("prometheus_client")
    cursors = publish_entries(server, 30)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory_service_processor", "run", "examples/entry_counter.py:EntryCounter",
         "--endpoint", server.endpoint, "--client-id", "metrics", "--after-cursor", "start",
         "--log-format", "json", "--log-level", "debug", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1"],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        async def handled() -> Dict[str, float]:
            def ready() -> Any:
                assert proc.poll() is None, proc.communicate()[1]
                try:
                    got = _scrape(port)
                except OSError:
                    return None
                return got if got.get("memory_service_processor_events_handled_total") == 30 else None

            return await wait_until(ready, "30 handled events on /metrics", interval=0.05)

        scraped = run(handled())
        assert scraped["memory_service_processor_phase{phase=live}"] == 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    docs = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(d) for d in docs)
    subscribe = [d for d in docs if d["logger"] == "memory_service_processor.stream_loop" and d["message"].startswith("subscribing")]
    assert subscribe and subscribe[0]["client_id"] == "metrics" and subscribe[0]["after_cursor"] == "start"
    assert any(d.get("cursor") == cursors[-1] for d in docs if d["logger"] == "memory_service_processor.checkpoint_writer")


def test_cli_metrics_port_without_prometheus_client(tmp_path: Path) -> None:
    """Without the extra, --metrics-port is a configuration error (2) naming the extra."""
    fake = tmp_path / "prometheus_client"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = _env(PYTHONPATH=os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p))
    r = subprocess.run(
        [sys.executable, "-m", "memory_service_processor", "run", "examples/entry_counter.py:EntryCounter",
         "--endpoint", "127.0.0.1:1", "--client-id", "m", "--metrics-port", "9999"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'memory-service-processor[prometheus]'" in lines[-1]
