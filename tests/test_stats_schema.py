"""The stats schema is declared once (``_stats.Stats``): the native driver, ``Runtime.stats()``,
the Prometheus metrics and the README's table all follow it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import List

from memory_service_processor import Config, InMemoryCheckpointStore, Runtime, _native, _stats
from memory_service_processor._metrics import _COUNTERS, _GAUGES, PHASES
from memory_service_processor.testing import LocalMemoryService

README = Path(__file__).resolve().parents[1] / "README.md"


def stats_table() -> List[str]:
    """The README's rows for the stats keys, from the schema."""
    rows = ["| key | kind | meaning |", "|---|---|---|"]
    for f in _stats.FIELDS:
        rows.append(f"| `{f.name}` | {type(f.kind).__name__.lower()} | {f.doc} |")
    return rows


def test_readme_stats_table_is_the_schema() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| key | kind | meaning |")
    got = lines[start : start + len(_stats.FIELDS) + 2]
    assert got == stats_table()


def test_every_phase_is_declared_once_and_documented() -> None:
    assert PHASES == _stats.PHASES == ("connecting", "replay", "live", "streaming", "stopped")
    phase = next(f for f in _stats.FIELDS if f.name == "phase")
    for name in PHASES:
        assert name in phase.doc


def test_metrics_derive_from_the_schema() -> None:
    numeric = {f.name for f in _stats.FIELDS if not isinstance(f.kind, _stats.Info)}
    assert {k for k, _ in _COUNTERS} | {k for k, _, _ in _GAUGES} == numeric
    assert ("stream_signals", "Stream signals (kind=stream), never passed to handle().") in _COUNTERS


def test_stats_before_a_run_come_from_the_schema() -> None:
    runtime = Runtime(object.__new__(_Noop), Config(client_id="p"), checkpoints=InMemoryCheckpointStore(), events=object())
    st = runtime.stats()
    assert list(st) == [f.name for f in _stats.FIELDS]
    assert st["client_id"] == "p" and st["phase"] == "connecting"
    assert st["last_cursor"] is None and st["events_received"] == 0 and st["handle_seconds_max"] == 0.0


class _Noop:
    content_type = load = handle = snapshot = staticmethod(lambda *a: None)


def test_native_driver_stats_keys_are_the_typeddict_keys() -> None:
    async def go() -> List[str]:
        async with LocalMemoryService() as server:
            events = _native.NativeEventClient(_conn(server.endpoint))
            a, b = socket.socketpair()
            try:
                driver = _native.Driver(
                    wake_fd=b.fileno(),
                    events=events,
                    checkpoints=InMemoryCheckpointStore(),
                    content_type="application/x-test",
                    config=Config(client_id="schema"),
                )
                return list(driver.stats())
            finally:
                a.close()
                b.close()

    keys = asyncio.run(go())
    assert keys == list(_stats.Stats.__annotations__)


def _conn(endpoint: str) -> "_native.NativeConnection":
    from memory_service_processor import ConnectionOptions

    return ConnectionOptions(endpoint)._connect()
