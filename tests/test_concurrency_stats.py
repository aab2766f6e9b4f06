"""Keyed concurrency: handler-time stats and the hand-off from a returning handler to the next
start (docs/semantics.md, section "Concurrency"; docs/architecture.md, the concurrent mode of
the driver)."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from memory_service_processor import EventEnvelope
from memory_service_processor.testing import ProcessorRun, run_until_handled

from conftest import cfg, run
from test_concurrency import Lanes, publish

pytestmark = pytest.mark.timeout(90)

CT = "application/vnd.test.conc-stats+json;v=1"


class Timed(Lanes):
    """:class:`test_concurrency.Lanes` with fixed delays: ``slow_seconds`` for the event at
    ``slow_cursor``, ``seconds`` for the others."""

    CONTENT_TYPE = CT

    def __init__(self, seconds: float, slow_cursor: str = "", slow_seconds: float = 0.0) -> None:
        super().__init__()
        self.seconds = seconds
        self.slow_cursor = slow_cursor
        self.slow_seconds = slow_seconds

    def delay(self, event: EventEnvelope) -> float:
        return self.slow_seconds if event.cursor == self.slow_cursor else self.seconds


def test_handle_seconds_are_recorded_per_call_in_concurrent_mode(server):
    """``handle_seconds_mean`` is the mean time of one handler call and ``handle_seconds_max``
    the slowest call (one per task in concurrent mode, not per batch)."""
    cursors = publish(server, 40, conversations=8)
    p = Timed(0.01, slow_cursor=cursors[5], slow_seconds=0.25)

    async def main() -> Dict[str, Any]:
        async with ProcessorRun(p, server, cfg(after_cursor="start", max_concurrency=8)) as r:
            await r.until_handled(cursors[-1])
            return dict(r.runtime.stats())

    stats = run(main())
    assert stats["events_handled"] == 40
    # The slowest call slept 0.25 s; every call is timed from its start to its report.
    assert 0.25 <= stats["handle_seconds_max"] < 2.0, stats
    # 39 calls of 0.01 s and one of 0.25 s: mean about 0.016 s (plus scheduling).
    assert 0.01 <= stats["handle_seconds_mean"] < 0.25, stats
    assert stats["handle_seconds_mean"] < stats["handle_seconds_max"]


def test_a_returning_handler_starts_the_next_event_itself_and_keeps_every_rule(server):
    """Equal latencies make handlers return together; the tasks go on with the next events
    themselves (fewer tasks than events) while per-key order, no overlap, the bound on
    handlers in flight and the exact final position still hold."""
    n, conversations, limit = 400, 40, 8
    cursors = publish(server, n, conversations)
    p = Timed(0.003)
    run(run_until_handled(p, server, cfg(after_cursor="start", max_concurrency=limit), until_cursor=cursors[-1]))
    assert p.overlaps == []
    for k, seen in p.order.items():
        assert seen == sorted(seen), f"key {k} out of stream order"
    assert 1 < p.max_active <= limit
    assert sorted(p.handled, key=int) == cursors
    assert len(p.tasks) < n, "each event got its own task: returning handlers did not go on"
    v = server.checkpoint("proc").value
    assert v["lastEventCursor"] == cursors[-1]
    assert "completedAboveWatermark" not in v
    assert sum(v["counts"].values()) == n
