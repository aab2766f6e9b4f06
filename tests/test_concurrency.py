"""Keyed concurrency end to end against a LocalMemoryService (docs/semantics.md, sections
"Concurrency", "Retries and failed events" and "Cancellation"): per-key order and overlap,
the watermark checkpoint, restarts after a stop with a stuck handler, retries, skip/stop,
stop with handlers in flight, bad input, and the testing kit with concurrent processors."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, Dict, List, Optional, Set

import pytest

from memory_service_processor import Config, ConfigurationError, EventEnvelope, EventProcessor, Runtime
from memory_service_processor import payload as payload_helpers
from memory_service_processor import _native
from memory_service_processor._config import CONFIG_SETTINGS
from memory_service_processor.testing import ProcessorRun, run_until_handled

from conftest import cfg, run, wait_until

pytestmark = pytest.mark.timeout(90)

CT = "application/vnd.test.conc+json;v=1"


def publish(server: Any, n: int, conversations: int = 10, first: int = 0) -> List[str]:
    """``n`` entry events spread round-robin over ``conversations``; returns their cursors."""
    return server.publish_many(
        [
            ("entry", "appended", {"conversation": f"c{(first + i) % conversations}", "entry": f"e{first + i}"})
            for i in range(n)
        ]
    )


class Lanes(EventProcessor):
    """Counts events per conversation; records overlap and per-key order. The state changes
    only after the handler's last ``await`` (the rule that makes restarts exact)."""

    CONTENT_TYPE = CT

    def __init__(self, latency: float = 0.005, seed: int = 1) -> None:
        self.counts: Dict[str, int] = {}
        self.running: Set[str] = set()
        self.active = 0
        self.max_active = 0
        self.order: Dict[str, List[int]] = {}
        self.handled: List[str] = []
        self.rng = random.Random(seed)
        self.latency = latency
        self.overlaps: List[str] = []
        self.tasks: Set[Any] = set()  # the task objects that ran handlers (ids could be reused)

    def load(self, state: Any) -> None:
        self.counts = dict(state.get("counts", {}))

    async def handle(self, event: EventEnvelope) -> None:
        k = self.key(event) or ""
        if k in self.running:
            self.overlaps.append(k)
        self.running.add(k)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.order.setdefault(k, []).append(int(event.cursor or 0))
        self.tasks.add(asyncio.current_task())
        try:
            await asyncio.sleep(self.delay(event))
        finally:
            self.running.discard(k)
            self.active -= 1
        self.counts[k] = self.counts.get(k, 0) + 1
        self.handled.append(event.cursor or "")

    def delay(self, event: EventEnvelope) -> float:
        """How long the handler of ``event`` awaits: up to ``latency``, at random."""
        return self.rng.random() * self.latency

    def snapshot(self) -> Any:
        return {"counts": self.counts}


def stored(server: Any, client_id: str = "proc") -> Any:
    cp = server.checkpoint(client_id)
    return None if cp is None else cp.value


# ---------------------------------------------------------------------------------------------
# Settings


def test_settings_are_declared_once_with_flags_and_variables():
    names = {s.name: s for s in CONFIG_SETTINGS}
    for name in ("max_concurrency", "max_attempts", "retry_min", "retry_max", "on_failure"):
        s = names[name]
        assert s.flag == "--" + name.replace("_", "-")
        assert s.env == "MEMORY_SERVICE_PROCESS_" + name.upper()
    c = Config(client_id="p")
    assert (c.max_concurrency, c.max_attempts, c.retry_min, c.retry_max, c.on_failure) == (1, 1, 1.0, 30.0, "stop")
    assert Config(client_id="p", on_failure="SKIP").on_failure == "skip"


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("max_concurrency", 0, ConfigurationError),
        ("max_concurrency", -3, ConfigurationError),
        ("max_concurrency", "4", TypeError),
        ("max_concurrency", 2.5, TypeError),
        ("max_concurrency", True, TypeError),
        ("max_attempts", 0, ConfigurationError),
        ("on_failure", "ignore", ConfigurationError),
        ("retry_min", 0, ConfigurationError),
    ],
)
def test_bad_values_name_the_field(field, value, error):
    with pytest.raises(error, match=field):
        Config(client_id="p", **{field: value})


def test_retry_max_below_retry_min_is_refused():
    with pytest.raises(ConfigurationError, match="retry_max"):
        Config(client_id="p", retry_min=5, retry_max=1)


def test_a_sync_handle_with_max_concurrency_above_one_is_refused(server):
    class Sync(EventProcessor):
        CONTENT_TYPE = CT

        def handle(self, event: EventEnvelope) -> None:
            pass

    with pytest.raises(ConfigurationError, match="async"):
        Runtime(Sync(), cfg(max_concurrency=4), endpoint=server.endpoint)
    Runtime(Sync(), cfg(max_concurrency=1, max_attempts=3), endpoint=server.endpoint)  # fine


# ---------------------------------------------------------------------------------------------
# The default key: one implementation in Rust, the same answers in Python

KEY_TABLE = [
    ("entry", {"conversation": "c1", "conversation_group": "g1", "entry": "e"}),
    ("response", {"conversation": "c2", "recording": "c2", "status": "started"}),
    ("membership", {"conversation_group": "g1", "user": "bob"}),
    ("entry", {"id": "e1", "conversationId": "c1", "conversationGroupId": "g"}),
    ("conversation", {"id": "c9", "title": "t", "conversationGroupId": "g"}),
    ("conversation", {"conversation": "c3", "conversation_group": "g3"}),
    ("entry", {"id": "e1", "conversationGroupId": "g2"}),
    ("entry", {"entry": "e"}),
    ("entry", {"conversation": 42, "conversationId": "c7"}),
    ("entry", {"conversation": None, "conversation_group": "g8"}),
    ("entry", {"conversation": ""}),
    ("entry", ["conversation"]),
    ("stream", {"phase": "live"}),
    ("response", {"id": "r1", "conversationGroupId": "g5"}),
]


@pytest.mark.parametrize("kind, data", KEY_TABLE)
def test_python_default_key_matches_the_native_one(kind, data):
    raw = json.dumps(data).encode()
    native = _native.default_key(kind, raw)
    event = EventEnvelope("appended", kind, raw, "1")
    assert payload_helpers.default_key(event) == native
    assert EventProcessor().key(event) == native


def test_undecodable_payloads_have_no_key():
    assert _native.default_key("entry", b"b64:AAAA") is None
    assert payload_helpers.default_key(EventEnvelope("appended", "entry", b"b64:AAAA", "1")) is None


# ---------------------------------------------------------------------------------------------
# Lanes, overlap, the watermark


def test_per_key_order_never_overlaps_and_keys_overlap(server):
    cursors = publish(server, 300, conversations=12)
    p = Lanes(latency=0.01)
    run(run_until_handled(p, server, cfg(after_cursor="start", max_concurrency=16), until_cursor=cursors[-1]))
    assert p.overlaps == []
    for k, seen in p.order.items():
        assert seen == sorted(seen), f"key {k} out of stream order"
    assert 1 < p.max_active <= 16
    assert sorted(p.handled, key=int) == cursors
    v = stored(server)
    assert v["lastEventCursor"] == cursors[-1]
    assert "completedAboveWatermark" not in v
    assert sum(v["counts"].values()) == 300


def test_the_testing_kit_and_stats_work_with_concurrent_processors(server):
    cursors = publish(server, 50, conversations=5)
    p = Lanes(latency=0.002)

    async def main():
        async with ProcessorRun(p, server, cfg(after_cursor="start", max_concurrency=8)) as r:
            await r.until_handled(cursors[-1])
            stats = r.runtime.stats()
            assert stats["watermark"] == cursors[-1]
            assert stats["in_flight"] == 0
            assert stats["events_handled"] == 50
            assert stats["retries"] == 0 and stats["failed_events"] == 0

    run(main())


class Stuck(Lanes):
    """The first event of conversation ``stuck`` never finishes (until cancelled)."""

    def __init__(self, stuck_cursor: str) -> None:
        super().__init__(latency=0.001)
        self.stuck_cursor = stuck_cursor
        self.cancelled: List[str] = []

    async def handle(self, event: EventEnvelope) -> None:
        if event.cursor == self.stuck_cursor:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(event.cursor)
                raise
        await super().handle(event)


def test_watermark_never_passes_a_stuck_key_and_a_restart_redoes_only_it(server):
    first = server.publish_many([("entry", "appended", {"conversation": "stuck", "entry": "s"})])
    cursors = first + publish(server, 40, conversations=4)
    p = Stuck(first[0])
    config = cfg(after_cursor="start", max_concurrency=8, stop_timeout=0.3, checkpoint_interval=0.05)
    rt = Runtime(p, config, endpoint=server.endpoint)

    async def main():
        task = asyncio.ensure_future(rt.run())
        await wait_until(lambda: len(p.handled) == 40, "the other keys")
        await wait_until(lambda: (stored(server) or {}).get("completedAboveWatermark"), "a checkpoint")
        v = stored(server)
        assert v.get("lastEventCursor") is None, "no event completed before the stuck one"
        assert rt.stats()["watermark"] is None
        rt.stop()
        await asyncio.wait_for(task, 20)

    run(main())
    assert p.cancelled == [first[0]]
    v = stored(server)
    assert sorted(v["completedAboveWatermark"], key=int) == cursors[1:]
    assert sum(v["counts"].values()) == 40

    p2 = Lanes(latency=0.001)
    run(run_until_handled(p2, server, config, until_cursor=cursors[-1]))
    assert p2.handled == [first[0]], "only the unfinished event is redone"
    v = stored(server)
    assert v["lastEventCursor"] == cursors[-1] and "completedAboveWatermark" not in v
    assert v["counts"] == {"stuck": 1, "c0": 10, "c1": 10, "c2": 10, "c3": 10}


def test_stop_waits_for_the_handlers_in_flight(server):
    cursors = publish(server, 8, conversations=8)
    finished: List[str] = []
    started: List[str] = []

    class Slow(EventProcessor):
        CONTENT_TYPE = CT

        async def handle(self, event: EventEnvelope) -> None:
            started.append(event.cursor or "")
            await asyncio.sleep(0.3)
            finished.append(event.cursor or "")

    rt = Runtime(Slow(), cfg(after_cursor="start", max_concurrency=8, stop_timeout=10), endpoint=server.endpoint)

    async def main():
        task = asyncio.ensure_future(rt.run())
        await wait_until(lambda: len(started) == 8, "all started")
        rt.stop()
        await asyncio.wait_for(task, 20)

    run(main())
    assert sorted(finished, key=int) == cursors
    assert stored(server)["lastEventCursor"] == cursors[-1]


# ---------------------------------------------------------------------------------------------
# Retries, skip, stop


class Flaky(Lanes):
    def __init__(self, failures: Dict[str, int]) -> None:
        super().__init__(latency=0.001)
        self.failures = dict(failures)
        self.tries: Dict[str, int] = {}
        self.hooked: List[Any] = []

    async def handle(self, event: EventEnvelope) -> None:
        c = event.cursor or ""
        self.tries[c] = self.tries.get(c, 0) + 1
        if self.tries[c] <= self.failures.get(c, 0):
            await asyncio.sleep(0)
            raise RuntimeError(f"boom {c}")
        await super().handle(event)

    async def on_failure(self, event: EventEnvelope, error: BaseException) -> None:
        self.hooked.append((event.cursor, str(error)))


def test_retries_keep_key_order(server):
    cursors = publish(server, 30, conversations=3)
    p = Flaky({cursors[3]: 2})  # conversation c0, fails twice then succeeds
    config = cfg(after_cursor="start", max_concurrency=4, max_attempts=3, retry_min=0.02, retry_max=0.05)

    async def main():
        async with ProcessorRun(p, server, config) as r:
            await r.until_handled(cursors[-1])
            assert r.runtime.stats()["retries"] == 2

    run(main())
    assert p.tries[cursors[3]] == 3
    assert p.order["c0"] == sorted(p.order["c0"])
    # The later events of c0 ran after the retried one succeeded.
    assert p.handled.index(cursors[3]) < p.handled.index(cursors[6])
    assert stored(server)["lastEventCursor"] == cursors[-1]


def test_skip_calls_the_hook_once_and_goes_on(server):
    cursors = publish(server, 20, conversations=4)
    p = Flaky({cursors[5]: 99})
    config = cfg(after_cursor="start", max_concurrency=4, max_attempts=2, retry_min=0.01, retry_max=0.02, on_failure="skip")

    async def main():
        async with ProcessorRun(p, server, config) as r:
            await r.until_handled(cursors[-1])
            await wait_until(lambda: r.runtime.stats()["watermark"] == cursors[-1], "the watermark")
            assert r.runtime.stats()["failed_events"] == 1

    run(main())
    assert p.hooked == [(cursors[5], f"boom {cursors[5]}")]
    assert p.tries[cursors[5]] == 2
    assert stored(server)["lastEventCursor"] == cursors[-1]


def test_default_stop_raises_and_never_checkpoints_the_failed_event(server):
    cursors = publish(server, 20, conversations=4)
    p = Flaky({cursors[7]: 99})
    config = cfg(after_cursor="start", max_concurrency=4, checkpoint_interval=0.02)
    with pytest.raises(RuntimeError, match=f"boom {cursors[7]}"):
        run(Runtime(p, config, endpoint=server.endpoint).run())
    v = stored(server)
    if v is not None:
        assert v["lastEventCursor"] is None or int(v["lastEventCursor"]) < int(cursors[7])
        assert cursors[7] not in v.get("completedAboveWatermark", [])


# ---------------------------------------------------------------------------------------------
# Custom keys


def test_a_custom_key_is_used_and_a_raising_one_stops_the_run(server):
    cursors = publish(server, 12, conversations=3)

    class ByParity(Lanes):
        def key(self, event: EventEnvelope) -> Optional[str]:
            return str(int(event.cursor or 0) % 2)

    p = ByParity()
    run(run_until_handled(p, server, cfg(after_cursor="start", max_concurrency=4), until_cursor=cursors[-1]))
    assert set(p.order) == {"0", "1"}

    class Raising(Lanes):
        def key(self, event: EventEnvelope) -> Optional[str]:
            if event.cursor == cursors[4]:
                raise LookupError("no key here")
            return "k"

    with pytest.raises(LookupError, match="no key here"):
        run(Runtime(Raising(), cfg("raising", after_cursor="start", max_concurrency=4), endpoint=server.endpoint).run())
    v = stored(server, "raising")
    assert v is None or v["lastEventCursor"] is None or int(v["lastEventCursor"]) < int(cursors[4])


def test_a_key_that_is_not_a_string_names_the_cursor(server):
    cursors = publish(server, 3)

    class IntKey(Lanes):
        def key(self, event: EventEnvelope) -> Any:
            return 7

    with pytest.raises(TypeError, match=f"cursor '{cursors[0]}'"):
        run(Runtime(IntKey(), cfg(after_cursor="start", max_concurrency=2), endpoint=server.endpoint).run())


def test_a_snapshot_that_is_not_an_object_is_refused_in_concurrent_mode(server):
    publish(server, 3)

    class ListState(Lanes):
        def snapshot(self) -> Any:
            return [1, 2]

    with pytest.raises(ValueError, match="JSON object"):
        run(Runtime(ListState(), cfg(after_cursor="start", max_concurrency=2), endpoint=server.endpoint).run())


def test_a_failing_skip_hook_stops_the_run_with_its_exception(server):
    cursors = publish(server, 10, conversations=2)

    class BadHook(Flaky):
        async def on_failure(self, event: EventEnvelope, error: BaseException) -> None:
            raise KeyError(f"hook failed for {event.cursor}")

    p = BadHook({cursors[2]: 99})
    config = cfg(after_cursor="start", max_concurrency=2, on_failure="skip", checkpoint_interval=0.02)
    with pytest.raises(KeyError, match=f"hook failed for {cursors[2]}"):
        run(Runtime(p, config, endpoint=server.endpoint).run())
    v = stored(server)
    assert v is None or cursors[2] not in v.get("completedAboveWatermark", [])
    assert v is None or v.get("lastEventCursor") is None or int(v["lastEventCursor"]) < int(cursors[2])


def test_a_processor_that_is_not_a_subclass_gets_the_default_key(server):
    cursors = publish(server, 40, conversations=4)
    running: Set[str] = set()
    overlaps: List[str] = []
    seen: Dict[str, List[int]] = {}

    class Plain:
        def content_type(self) -> str:
            return CT

        def load(self, state: Any) -> None:
            pass

        async def handle(self, event: EventEnvelope) -> None:
            k = event.data["conversation"]
            if k in running:
                overlaps.append(k)
            running.add(k)
            seen.setdefault(k, []).append(int(event.cursor or 0))
            await asyncio.sleep(0.002)
            running.discard(k)

        def snapshot(self) -> Any:
            return {}

    run(run_until_handled(Plain(), server, cfg(after_cursor="start", max_concurrency=8), until_cursor=cursors[-1]))
    assert overlaps == []
    assert sorted(seen) == ["c0", "c1", "c2", "c3"]
    assert all(v == sorted(v) for v in seen.values())
    assert stored(server)["lastEventCursor"] == cursors[-1]
