"""Health endpoints (docs/semantics.md, section 18): ``/healthz`` (liveness: fails while a handler
call runs longer than the liveness timeout, or after the run failed) and ``/readyz``
(readiness: only while the stream is received), on the standalone ``--health-port`` server and
on the metrics server, and the ``busy_seconds`` stat behind them.

The runtime runs on a thread of its own here (``asyncio.run`` there), so that a handler that
blocks its event loop (a sync handler waiting on a ``threading.Event``) cannot block the test:
the probes must still be answered, from the health server's own thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from conftest import EVENTUALLY, Recorder, cfg, publish_entries
from memory_service_processor import Runtime
from memory_service_processor._health import (
    DEFAULT_LIVENESS_TIMEOUT,
    HEALTHZ_PATH,
    READY_PHASES,
    READYZ_PATH,
    HealthCheck,
    start_health_server,
)
from memory_service_processor._stats import PHASES, initial_stats
from memory_service_processor.testing import LocalMemoryService

REPO = Path(__file__).resolve().parents[1]

#: Short enough for a test, long enough that a normal batch never trips it.
TIMEOUT = 0.3
SECRET = "sk-health-test-SECRET-4711"


def probe(port: int, path: str) -> Tuple[int, Dict[str, Any]]:
    """``(status, JSON body)`` of ``GET http://127.0.0.1:port/path``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode()
    assert SECRET not in text and "127.0.0.1" not in text, text  # nothing about the connection
    body = json.loads(text)
    assert set(body) == {"ok", "reason"} and body["ok"] is (status == 200), (status, body)
    return status, body


def eventually(predicate: Callable[[], Any], what: str, timeout: float = EVENTUALLY) -> Any:
    """Polls ``predicate`` from the test's thread until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Background:
    """``runtime.run()`` on a thread with its own event loop."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._main, name="test-runtime", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            asyncio.run(self.runtime.run())
        except BaseException as e:  # noqa: B036 - handed to the test
            self.error = e

    def join(self, stop: bool = True, timeout: float = 30.0) -> None:
        if stop:
            self.runtime.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not end"


class StuckOnce(Recorder):
    """A sync handler that blocks its event loop on a ``threading.Event`` at cursor ``stuck``."""

    def __init__(self, stuck: str) -> None:
        super().__init__()
        self.stuck = stuck
        self.entered = threading.Event()
        self.release = threading.Event()

    def handle(self, event: Any) -> None:
        if event.cursor == self.stuck:
            self.entered.set()
            self.release.wait(60)
        super().handle(event)


class StuckOnceAsync(StuckOnce):
    """Async: the handler of ``stuck`` waits (without blocking the loop) until released, while
    the other conversations go on."""

    async def handle(self, event: Any) -> None:  # type: ignore[override]
        if event.cursor == self.stuck:
            self.entered.set()
            deadline = time.monotonic() + 60
            while not self.release.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        Recorder.handle(self, event)


# -- the verdicts ---------------------------------------------------------------------------------


def test_verdicts_from_stats() -> None:
    stats: Dict[str, Any] = dict(initial_stats("c"))
    check = HealthCheck(lambda: stats, liveness_timeout=600)
    assert check.answer(HEALTHZ_PATH) == (200, b'{"ok": true, "reason": "no handler busy"}\n')
    assert check.answer(READYZ_PATH)[0] == 503  # connecting: not yet
    stats["busy_seconds"] = 612.4
    status, body = check.answer(HEALTHZ_PATH + "?verbose=1")  # type: ignore[misc]
    assert status == 503
    assert json.loads(body) == {"ok": False, "reason": "handler busy for 612 s > liveness timeout 600 s"}
    stats["busy_seconds"] = 599.0
    assert check.liveness() == (True, "handler busy for 599 s (liveness timeout 600 s)")
    for phase in PHASES:
        stats["phase"] = phase
        assert check.readiness()[0] is (phase in READY_PHASES), phase
    assert set(READY_PHASES) == set(PHASES) - {"connecting", "stopped"}
    assert check.answer("/metrics") is None
    assert DEFAULT_LIVENESS_TIMEOUT == 600.0

    def broken() -> Dict[str, Any]:
        raise RuntimeError("boom")

    assert HealthCheck(broken).answer(HEALTHZ_PATH)[0] == 503  # type: ignore[index]
    with pytest.raises(TypeError):
        HealthCheck(42)


# -- real runs --------------------------------------------------------------------------------------


def test_sync_handler_stuck_fails_liveness_then_recovers(server: LocalMemoryService) -> None:
    """A sync handler blocking the event loop: /healthz turns 503 after the liveness timeout
    (answered from the health server's thread meanwhile), 200 again once it is released;
    /readyz is 503 before the start, 200 while streaming, 503 while the server is away and
    after the run."""
    cursors = publish_entries(server, 20)
    processor = StuckOnce(stuck=cursors[4])
    runtime = Runtime(processor, cfg("health", after_cursor="start"), endpoint=server.endpoint,
                      api_key=SECRET)
    health = start_health_server(runtime, 0, "127.0.0.1", liveness_timeout=TIMEOUT)
    try:
        assert probe(health.port, READYZ_PATH) == (503, {"ok": False, "reason": "phase connecting: not receiving the stream"})
        assert probe(health.port, HEALTHZ_PATH)[0] == 200
        bg = Background(runtime)
        try:
            assert processor.entered.wait(EVENTUALLY)
            status, body = eventually(
                lambda: (lambda r: r if r[0] == 503 else None)(probe(health.port, HEALTHZ_PATH)), "/healthz 503"
            )
            assert body["reason"].startswith("handler busy for ") and f"> liveness timeout {TIMEOUT:g} s" in body["reason"]
            assert runtime.stats()["busy_seconds"] > TIMEOUT
            assert probe(health.port, READYZ_PATH)[0] == 200  # still receiving the stream
            processor.release.set()
            eventually(lambda: processor.handled[-1:] == cursors[-1:], "all 20 events handled")
            eventually(lambda: probe(health.port, HEALTHZ_PATH)[0] == 200, "/healthz 200 again")
            assert runtime.stats()["busy_seconds"] < TIMEOUT
            eventually(lambda: runtime.stats()["phase"] == "live", "the live phase")
            assert probe(health.port, READYZ_PATH) == (200, {"ok": True, "reason": "phase live"})
            # The server goes away: reconnecting is not ready (still alive), back when it returns.
            server.stop_sync()
            eventually(lambda: probe(health.port, READYZ_PATH)[0] == 503, "/readyz 503 while the server is away")
            assert probe(health.port, HEALTHZ_PATH)[0] == 200
            server.start_sync()
            eventually(lambda: probe(health.port, READYZ_PATH)[0] == 200, "/readyz 200 after the server returned")
        finally:
            processor.release.set()
            bg.join()
        assert bg.error is None, bg.error
        eventually(lambda: runtime.stats()["phase"] == "stopped", "the stopped phase")
        assert probe(health.port, READYZ_PATH) == (503, {"ok": False, "reason": "phase stopped: not receiving the stream"})
        assert probe(health.port, HEALTHZ_PATH) == (200, {"ok": True, "reason": "no handler busy"})
    finally:
        health.close()
    with pytest.raises(OSError):
        probe(health.port, HEALTHZ_PATH)


def test_concurrent_oldest_task_fails_liveness_on_the_metrics_server(server: LocalMemoryService) -> None:
    """max_concurrency=4: one conversation's handler is stuck while the others go on;
    busy_seconds is the oldest task's age; the metrics server answers the probes too."""
    pytest.importorskip("prometheus_client")
    from memory_service_processor._metrics import start_metrics_server

    cursors = server.publish_many(
        [("entry", "appended", {"conversation": f"c{i % 5}", "entry": f"e{i}"}) for i in range(50)]
    )
    processor = StuckOnceAsync(stuck=cursors[0])
    runtime = Runtime(processor, cfg("health-conc", after_cursor="start", max_concurrency=4), endpoint=server.endpoint)
    metrics = start_metrics_server(runtime, 0, "127.0.0.1", liveness_timeout=TIMEOUT)
    try:
        bg = Background(runtime)
        try:
            assert processor.entered.wait(EVENTUALLY)
            # The other four conversations finish (40 events) while c0's first event is stuck.
            eventually(lambda: len(processor.handled) >= 40, "the other conversations handled")
            assert cursors[0] not in processor.handled
            status, body = eventually(
                lambda: (lambda r: r if r[0] == 503 else None)(probe(metrics.port, HEALTHZ_PATH)), "/healthz 503"
            )
            assert "liveness timeout 0.3 s" in body["reason"]
            stats = runtime.stats()
            assert stats["in_flight"] == 1 and stats["busy_seconds"] > TIMEOUT
            processor.release.set()
            eventually(lambda: len(processor.handled) == 50, "all 50 events handled")
            eventually(lambda: probe(metrics.port, HEALTHZ_PATH)[0] == 200, "/healthz 200 again")
            assert runtime.stats()["busy_seconds"] == 0.0
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10) as r:
                assert b"memory_service_processor_busy_seconds" in r.read()
        finally:
            processor.release.set()
            bg.join()
        assert bg.error is None, bg.error
    finally:
        metrics.close()


def test_a_failed_run_is_not_alive(server: LocalMemoryService) -> None:
    cursors = publish_entries(server, 5)
    processor = Recorder(fail_on=cursors[2])
    runtime = Runtime(processor, cfg("health-fail", after_cursor="start"), endpoint=server.endpoint, api_key=SECRET)
    with start_health_server(runtime, 0, "127.0.0.1") as health:
        bg = Background(runtime)
        bg.join(stop=False)
        assert isinstance(bg.error, RuntimeError)
        assert probe(health.port, HEALTHZ_PATH) == (503, {"ok": False, "reason": "the run ended with an error (RuntimeError)"})
        assert probe(health.port, READYZ_PATH)[0] == 503
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{health.port}/other", timeout=10)
        assert e.value.code == 404


# -- the command line --------------------------------------------------------------------------------


def _env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_SERVICE_")}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(args: List[str], env: Dict[str, str]) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [sys.executable, "-m", "memory_service_processor", "run", "examples/entry_counter.py:EntryCounter", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_cli_health_port_from_the_variable(server: LocalMemoryService) -> None:
    """``run`` with ``MEMORY_SERVICE_PROCESS_HEALTH_PORT`` (no prometheus-client needed) and
    ``--liveness-timeout``: ready once streaming, alive, exit 0 on SIGTERM."""
    publish_entries(server, 10)
    port = _free_port()
    proc = _cli(
        ["--endpoint", server.endpoint, "--client-id", "health-cli", "--after-cursor", "start",
         "--metrics-addr", "127.0.0.1", "--liveness-timeout", "2s", "--api-key", SECRET],
        _env(MEMORY_SERVICE_PROCESS_HEALTH_PORT=str(port)),
    )
    try:
        def ready() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return probe(port, READYZ_PATH)[0] == 200
            except OSError:
                return False

        eventually(ready, "/readyz 200 from the CLI's health server")
        assert probe(port, HEALTHZ_PATH) == (200, {"ok": True, "reason": "no handler busy"})
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert SECRET not in err


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--liveness-timeout", "1ms"], {}, "--liveness-timeout: liveness_timeout must be at least 10ms"),
        (["--liveness-timeout", "0"], {}, "--liveness-timeout: liveness_timeout must be a positive duration"),
        (["--liveness-timeout", "soon"], {}, "--liveness-timeout"),
        ([], {"MEMORY_SERVICE_PROCESS_LIVENESS_TIMEOUT": "-1s"}, "MEMORY_SERVICE_PROCESS_LIVENESS_TIMEOUT"),
        (["--health-port", "70000"], {}, "--health-port: health_port must be at most 65535"),
        ([], {"MEMORY_SERVICE_PROCESS_HEALTH_PORT": "http"}, "MEMORY_SERVICE_PROCESS_HEALTH_PORT: must be a whole number"),
    ],
)
def test_cli_health_options_refuse_bad_values(args: List[str], env: Dict[str, str], message: str) -> None:
    from memory_service_processor._cli import build_parser
    from memory_service_processor._cli.errors import UsageError
    from memory_service_processor._cli.options import resolve_options

    parsed = build_parser().parse_args(["run", "x.py:X", *args])
    with pytest.raises(UsageError) as e:
        resolve_options(parsed, env)
    assert message in str(e.value)


def test_cli_health_port_in_use_is_a_usage_error(server: LocalMemoryService) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "memory_service_processor", "run", "examples/entry_counter.py:EntryCounter",
             "--endpoint", server.endpoint, "--client-id", "h", "--health-port", str(port), "--metrics-addr", "127.0.0.1"],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60,
        )
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert f"--health-port {port}: cannot listen" in lines[-1]


def test_cli_help_lists_the_health_options() -> None:
    from memory_service_processor._cli import build_parser

    parser = build_parser()
    run_parser = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    text = run_parser.format_help()
    for needle in ("--health-port", "MEMORY_SERVICE_PROCESS_HEALTH_PORT", "--liveness-timeout",
                   "MEMORY_SERVICE_PROCESS_LIVENESS_TIMEOUT", "(default 10m)"):
        assert needle in text.replace("\n", " ").replace("  ", " ") or needle in text, needle
