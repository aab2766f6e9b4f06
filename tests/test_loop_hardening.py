"""The loop under a misbehaving processor or checkpoint (docs/semantics.md, sections
"Checkpoints", "Cancellation"): a flush slower than the interval, stored cursors that are not
strings, ``async def load``, events without a cursor, and cancellation that stays
cancellation."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, List

import pytest

from memory_service_processor import (
    ConfigurationError,
    EventEnvelope,
    EventProcessor,
    InMemoryCheckpointStore,
    Runtime,
)
from memory_service_processor.testing import ProcessorRun, run_until_handled

from conftest import CONTENT_TYPE, Recorder, Started, cfg, cursors, publish_entries, run, stored_cursor, wait_until

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# A flush slower than checkpoint_interval


class SlowFlush(Recorder):
    def flush(self) -> None:
        super().flush()
        time.sleep(0.05)  # a sync flush, five times the interval


def test_a_slow_flush_with_a_tiny_interval_lets_events_flow_and_stop_work(server):
    published = publish_entries(server, 300)
    p = SlowFlush()
    rt = Runtime(p, cfg(after_cursor="start", checkpoint_interval=0.01, max_batch=10), endpoint=server.endpoint)

    async def main():
        task = asyncio.ensure_future(rt.run())
        # A loop callback (what a SIGTERM handler does) is honoured between flushes.
        await wait_until(lambda: len(p.handled) >= 100, "events handled between flushes", timeout=30)
        asyncio.get_running_loop().call_soon(rt.stop)
        await asyncio.wait_for(task, 20)

    run(main())
    assert len(p.handled) >= 100
    assert p.flushes < len(p.handled), "flushes run back to back instead of events"
    assert p.handled == published[: len(p.handled)]


# ---------------------------------------------------------------------------------------------
# Stored cursors that are not strings


def test_an_integer_stored_cursor_resumes_after_it(server):
    publish_entries(server, 6)
    server.put_checkpoint("proc", CONTENT_TYPE, {"lastEventCursor": 4})
    p = Recorder()
    run(run_until_handled(p, server, cfg(), until_cursor="6"))
    assert p.handled == ["5", "6"]
    assert stored_cursor(server) == "6"


@pytest.mark.parametrize("bad", [4.5, "", [1], {"c": 1}, True])
def test_a_stored_cursor_of_another_type_fails_at_load_naming_it(server, bad):
    publish_entries(server, 3)
    server.put_checkpoint("proc", CONTENT_TYPE, {"lastEventCursor": bad})
    p = Recorder()
    with pytest.raises(ConfigurationError, match="client_id=proc") as err:
        run(Runtime(p, cfg(), endpoint=server.endpoint).run())
    assert "lastEventCursor" in str(err.value)
    assert p.loaded == [] and p.handled == []


def test_a_checkpoint_without_cursor_at_the_live_tail_warns(server, caplog):
    server.put_checkpoint("proc", CONTENT_TYPE, {"count": 3})
    p = Recorder()
    caplog.set_level(logging.WARNING, logger="memory_service_processor")

    async def main():
        async with ProcessorRun(p, server, cfg()):
            await wait_until(
                lambda: any("no lastEventCursor" in r.getMessage() for r in caplog.records), "the warning"
            )

    run(main())


# ---------------------------------------------------------------------------------------------
# async def load()


class AsyncLoad(Recorder):
    async def load(self, state: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        Recorder.load(self, state)
        self.count_loaded = state.get("count")


def test_async_load_is_awaited(server):
    publish_entries(server, 4)
    server.put_checkpoint("proc", CONTENT_TYPE, {"lastEventCursor": "2", "count": 2})
    p = AsyncLoad()
    run(run_until_handled(p, server, cfg(), until_cursor="4"))
    assert p.loaded == [{"lastEventCursor": "2", "count": 2}]
    assert p.count_loaded == 2
    assert p.handled == ["3", "4"]


# ---------------------------------------------------------------------------------------------
# Events without a cursor


class _Stream:
    def __init__(self, events: List[EventEnvelope]) -> None:
        self._events = list(events)

    async def recv(self) -> EventEnvelope:
        if self._events:
            return self._events.pop(0)
        await asyncio.Event().wait()
        raise StopAsyncIteration

    def close(self) -> None:
        pass


class _Events:
    """Replays a fixed list of events on every subscription; records the requests."""

    def __init__(self, events: List[EventEnvelope]) -> None:
        self.events = events
        self.requests: List[Any] = []

    async def subscribe(self, request: Any) -> _Stream:
        self.requests.append(request)
        return _Stream(self.events)


def entry(cursor: Any) -> EventEnvelope:
    return EventEnvelope("appended", "entry", b'{"conversation":"c1","entry":"e"}', cursor)


def test_an_event_without_a_cursor_never_moves_the_resume_position():
    events = _Events([entry("1"), entry("2"), entry(""), entry(None)])
    store = InMemoryCheckpointStore()
    p = Recorder()

    async def main():
        rt = Runtime(p, cfg(after_cursor="start"), events=events, checkpoints=store)
        s = Started(rt, p)
        await s.wait_handled(4)
        rt.stop()
        await asyncio.wait_for(s.task, 20)
        return await store.get("proc")

    cp = run(main())
    assert p.handled == ["1", "2", "", None]
    assert cp.value["lastEventCursor"] == "2"
    # Nothing resubscribed from an empty cursor either.
    assert all(getattr(r, "after_cursor", None) != "" for r in events.requests)


# ---------------------------------------------------------------------------------------------
# Cancellation stays cancellation


def test_wait_for_raises_timeout_after_a_graceful_stop(server):
    publish_entries(server, 3)
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start", checkpoint_every=1000), endpoint=server.endpoint)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(rt.run(), 1.5)

    run(main())
    assert p.handled == ["1", "2", "3"]
    assert p.flushes >= 1
    assert stored_cursor(server) == "3"


def test_a_cancelled_run_task_is_cancelled_and_stop_still_returns_normally(server):
    publish_entries(server, 2)
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)

    async def main():
        s = Started(rt, p)
        await s.wait_handled(2)
        s.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await s.task
        assert s.task.cancelled()
        s2 = Started(rt, p)
        await asyncio.sleep(0.1)
        rt.stop()
        assert await asyncio.wait_for(s2.task, 20) is None

    run(main())
    assert stored_cursor(server) == "2"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
def test_asyncio_timeout_works_around_run(server):
    publish_entries(server, 2)
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)

    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):  # type: ignore[attr-defined]
                await rt.run()

    run(main())
    assert stored_cursor(server) == "2"
