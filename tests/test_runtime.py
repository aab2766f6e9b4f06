"""The runtime end to end (issue "The runtime"): start position, resume, content type, stream
signals, flush, metadata, checkpoint values, sync/async processors, processor failures,
threading, the documented example, and filters -- all against a real LocalMemoryService.
What they check is stated in docs/semantics.md, sections 1 to 7 and 12 to 14."""

from __future__ import annotations

import asyncio
import threading
import traceback
from typing import Any, List

import pytest

from memory_service_processor import (
    Config,
    ContentTypeMismatchError,
    EventEnvelope,
    EventProcessor,
    InMemoryCheckpointStore,
    MemoryServiceProcessorError,
    Runtime,
)
from memory_service_processor.testing import ProcessorRun, run_until_handled

from conftest import (
    ADMIN_KEY,
    API_KEYS,
    BEARER,
    CONTENT_TYPE,
    USER_KEY,
    AsyncRecorder,
    Recorder,
    Started,
    cfg,
    cursors,
    publish_entries,
    run,
    started,
    stored_cursor,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# Where a run starts


def test_first_run_from_start_handles_every_retained_event_in_order(server):
    published = publish_entries(server, 7)
    p = Recorder()

    async def main():
        async with ProcessorRun(p, server, cfg(after_cursor="start")) as r:
            await r.until_handled()
            later = publish_entries(server, 3)
            await r.until_handled()
            return later

    later = run(main())
    assert p.handled == published + later == cursors(1, 10)
    assert p.loaded == []  # first run: load is never called
    assert stored_cursor(server) == "10"
    assert server.checkpoint("proc").content_type == CONTENT_TYPE
    subscribes = [r for r in server.requests() if r.method == "SubscribeEvents"]
    assert subscribes[0].after_cursor == "start"


def test_first_run_from_an_explicit_cursor_starts_right_after_it(server):
    publish_entries(server, 6)
    p = Recorder()

    async def main():
        async with ProcessorRun(p, server, cfg(after_cursor="4")) as r:
            await r.until_handled()  # events 5 and 6
            publish_entries(server, 2)
            await r.until_handled()  # events 7 and 8

    run(main())
    assert p.handled == ["5", "6", "7", "8"]
    assert stored_cursor(server) == "8"


def test_first_run_without_after_cursor_tails_only_new_events(server):
    publish_entries(server, 5)  # before the run: never seen
    p = Recorder()

    async def main():
        async with ProcessorRun(p, server, cfg(after_cursor=None)) as r:
            await r.until_handled()  # nothing to replay: the live phase
            new = publish_entries(server, 3)
            await r.until_handled()
            return new

    new = run(main())
    assert new == ["6", "7", "8"]
    assert p.handled == new
    subscribes = [r for r in server.requests() if r.method == "SubscribeEvents"]
    assert subscribes[0].after_cursor is None
    # a tail-only subscription gets no replay phase
    assert p.signal_names()[0] == "phase"
    assert p.signals[0].data == {"phase": "live"}


def test_second_run_resumes_exactly_after_the_saved_cursor(server):
    publish_entries(server, 5)
    first = Recorder()
    run(run_until_handled(first, server, cfg(after_cursor="start")))
    assert first.handled == cursors(1, 5)
    assert server.checkpoint("proc").value == {"lastEventCursor": "5", "count": 5}

    publish_entries(server, 4)  # 6..9 while no processor runs
    second = Recorder()

    async def two():
        # after_cursor is ignored once a checkpoint exists
        async with ProcessorRun(second, server, cfg(after_cursor="start")) as r:
            await r.until_handled()  # 4 more events
            publish_entries(server, 1)
            await r.until_handled()  # one live event

    run(two())
    assert second.loaded == [{"lastEventCursor": "5", "count": 5}]
    assert second.handled == cursors(6, 10)  # nothing skipped, nothing re-handled
    assert [r.after_cursor for r in server.requests() if r.method == "SubscribeEvents"][-1] == "5"
    assert stored_cursor(server) == "10"


def test_resume_from_a_checkpoint_written_by_someone_else(server):
    """A checkpoint with the same content type (e.g. from the Go processor) is resumed from."""
    publish_entries(server, 8)
    server.put_checkpoint("proc", CONTENT_TYPE, {"lastEventCursor": "3", "count": 3, "extra": [1]})
    p = Recorder()
    run(run_until_handled(p, server, cfg(after_cursor=None)))
    assert p.loaded == [{"lastEventCursor": "3", "count": 3, "extra": [1]}]
    assert p.handled == cursors(4, 8)


def test_checkpoint_without_cursor_falls_back_to_after_cursor(server):
    publish_entries(server, 3)
    server.put_checkpoint("proc", CONTENT_TYPE, {"count": 0})
    p = Recorder()
    run(run_until_handled(p, server, cfg(after_cursor="start")))
    assert p.loaded == [{"count": 0}]
    assert p.handled == cursors(1, 3)


# ---------------------------------------------------------------------------------------------
# Content type


def test_content_type_mismatch_raises_with_both_types(server):
    server.put_checkpoint("proc", "application/vnd.other+json;v=9", {"lastEventCursor": "1"})
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)
    with pytest.raises(ContentTypeMismatchError) as info:
        run(rt.run())
    err = info.value
    assert isinstance(err, MemoryServiceProcessorError)
    assert "application/vnd.other+json;v=9" in str(err)
    assert CONTENT_TYPE in str(err)
    assert err.got == "application/vnd.other+json;v=9"
    assert err.want == CONTENT_TYPE
    assert p.loaded == [] and p.handled == []
    # nothing was overwritten
    assert server.checkpoint("proc").content_type == "application/vnd.other+json;v=9"


def test_empty_stored_content_type_is_accepted(server):
    """Only a non-empty stored content type is compared (docs/semantics.md#4-resume)."""
    publish_entries(server, 4)
    server.put_checkpoint("proc", "", {"lastEventCursor": "2"})
    p = Recorder()
    run(run_until_handled(p, server, cfg()))
    assert p.handled == ["3", "4"]


# ---------------------------------------------------------------------------------------------
# Stream signals


def test_stream_signals_never_reach_handle_but_reach_on_stream_event(server):
    publish_entries(server, 3)
    p = Recorder()
    result = run(run_until_handled(p, server, cfg(after_cursor="start")))
    assert p.handled == cursors(1, 3)
    assert all(e.kind != "stream" for e in p.events)
    assert [(s.kind, s.event, s.data) for s in p.signals[:2]] == [
        ("stream", "phase", {"phase": "replay"}),
        ("stream", "phase", {"phase": "live"}),
    ]
    st = result.stats
    assert st["events_handled"] == 3
    assert st["stream_signals"] >= 2
    assert st["events_received"] == st["events_handled"] + st["stream_signals"]


def test_processor_without_on_stream_event_hook_works(server):
    class Plain(EventProcessor):
        CONTENT_TYPE = CONTENT_TYPE

        def __init__(self) -> None:
            self.kinds: List[str] = []

        def handle(self, event: EventEnvelope) -> None:
            self.kinds.append(event.kind)
            super().handle(event)

    publish_entries(server, 2)
    p = Plain()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)  # unwrapped: no hook at all

    async def main():
        async with started(rt) as s:
            await s.wait(lambda: len(p.kinds) >= 2, "2 events")

    run(main())
    assert p.kinds == ["entry", "entry"]
    assert stored_cursor(server) == "2"


# ---------------------------------------------------------------------------------------------
# Flush and checkpoints


def test_flush_runs_on_the_interval_and_a_checkpoint_follows(server):
    class Buffered(Recorder):
        """Commits its state only in flush: the checkpoint must reflect the flushed state."""

        def __init__(self) -> None:
            super().__init__()
            self.pending: List[str] = []
            self.committed: List[str] = []

        def handle(self, event: EventEnvelope) -> None:
            self.pending.append(event.cursor)  # type: ignore[arg-type]

        def flush(self) -> None:
            super().flush()
            self.committed.extend(self.pending)
            self.pending.clear()

        def snapshot(self) -> Any:
            return {"lastEventCursor": self.committed[-1] if self.committed else None}

    publish_entries(server, 5)
    p = Buffered()
    config = cfg(after_cursor="start", checkpoint_interval=0.1, checkpoint_every=10_000)

    async def main():
        async with ProcessorRun(p, server, config) as r:
            await r.until_handled()
            await wait_until(lambda: p.flushes >= 3, "3 interval flushes")
            await wait_until(lambda: stored_cursor(server) == "5", "a checkpoint after the flush")
            publish_entries(server, 2)
            await r.until_handled()
            await wait_until(lambda: stored_cursor(server) == "7", "the next interval checkpoint")

    run(main())
    assert p.committed == cursors(1, 7)


def test_flush_runs_on_the_interval_while_events_keep_coming(server):
    """A busy processor is still flushed (and checkpointed) on the interval, between batches."""

    class FlushProbe(AsyncRecorder):
        def __init__(self) -> None:
            super().__init__(delay=0.001)
            self.handled_at_flush: List[int] = []

        async def flush(self) -> None:  # type: ignore[override]
            self.handled_at_flush.append(len(self.handled))
            await AsyncRecorder.flush(self)

    publish_entries(server, 600)  # >= 0.6 s of work
    p = FlushProbe()
    rt = Runtime(p, cfg(after_cursor="start", checkpoint_interval=0.1, checkpoint_every=100_000, max_batch=16),
                 endpoint=server.endpoint)
    busy_checkpoints: List[str] = []

    def all_handled() -> bool:
        c = stored_cursor(server)
        if c is not None and int(c) < 600:
            busy_checkpoints.append(c)
        return len(p.handled) >= 600

    async def main():
        async with started(rt, p) as s:
            await s.wait(all_handled, "600 events")

    run(main())
    busy = [n for n in p.handled_at_flush if 0 < n < 600]
    assert len(busy) >= 3, p.handled_at_flush
    assert busy_checkpoints, "no interval checkpoint was written while handling"
    assert p.handled == cursors(1, 600)


def test_flush_and_final_checkpoint_on_stop(server):
    publish_entries(server, 3)
    p = Recorder()
    # a long interval and a large checkpoint_every: only stop() causes a flush and a write
    config = cfg(after_cursor="start", checkpoint_interval=3600, checkpoint_every=1000)

    async def main():
        async with ProcessorRun(p, server, config) as r:
            await r.until_handled()
            assert p.flushes == 0
            assert server.checkpoint("proc") is None
        return r

    r = run(main())
    assert p.flushes == 1
    assert server.checkpoint("proc").value == {"lastEventCursor": "3", "count": 3}
    assert r.runtime.stats()["phase"] == "stopped"


def test_checkpoint_after_every_event_by_default(server):
    p = Recorder()

    async def main():
        async with ProcessorRun(p, server, cfg(after_cursor="start")) as r:
            await r.until_handled()  # nothing published yet: the live phase
            for i in range(3):
                c = server.publish("entry", "appended", {"i": i})
                # checkpoint_every=1: each handled event is written without a stop or interval
                await wait_until(lambda: stored_cursor(server) == c, f"checkpoint at {c}")
        return r

    r = run(main())
    assert r.result.stats["checkpoints_written"] >= 3


def test_unchanged_snapshot_is_not_written_again(server):
    publish_entries(server, 2)
    p = Recorder()

    async def main():
        async with ProcessorRun(p, server, cfg(after_cursor="start", checkpoint_interval=0.05)) as r:
            await r.until_handled()
            await wait_until(lambda: stored_cursor(server) == "2", "checkpoint")
            await wait_until(lambda: p.flushes >= 4, "several idle flushes")
        return r

    r = run(main())
    puts = [r for r in server.requests() if r.method == "PutCheckpoint"]
    assert 1 <= len(puts) <= 2  # the idle flushes produced identical snapshots
    assert r.result.stats["checkpoints_skipped"] >= 3


def test_stop_before_run_returns_promptly_without_handling(server):
    publish_entries(server, 3)
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)
    rt.stop()
    rt.stop()  # idempotent
    run(rt.run(), timeout=20)
    assert p.handled == []


def test_stop_from_another_thread(server):
    publish_entries(server, 3)
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)

    async def main():
        async with started(rt, p) as s:
            await s.wait_handled(3)
            t = threading.Thread(target=rt.stop)
            t.start()
            await asyncio.wait_for(asyncio.shield(s.task), 20)  # this stop alone ends the run
            t.join()

    run(main())
    assert stored_cursor(server) == "3"


def test_cancelling_the_run_task_stops_gracefully(server):
    publish_entries(server, 3)
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start", checkpoint_every=1000), endpoint=server.endpoint)

    async def main():
        s = Started(rt, p)
        await s.wait_handled(3)
        s.task.cancel()
        # Graceful stop first, then cancellation stays cancellation (docs/semantics.md#13-cancellation).
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(s.task, 20)
        assert s.task.cancelled()

    run(main())
    assert p.flushes >= 1
    assert stored_cursor(server) == "3"


# ---------------------------------------------------------------------------------------------
# Metadata


def test_server_sees_the_configured_metadata_on_every_rpc(auth_server):
    server = auth_server
    publish_entries(server, 2)
    p = Recorder()

    async def main():
        async with ProcessorRun(p, server, cfg("meta-proc", after_cursor="start"), api_key=ADMIN_KEY,
                                bearer_token=BEARER) as r:
            await r.until_handled()
            await wait_until(lambda: stored_cursor(server, "meta-proc") == "2", "checkpoint")

    run(main())
    seen = {r.method: r for r in server.requests()}
    assert set(seen) >= {"GetCheckpoint", "SubscribeEvents", "PutCheckpoint"}
    for method in ("GetCheckpoint", "SubscribeEvents", "PutCheckpoint"):
        md = seen[method].metadata
        assert md.get("x-api-key") == ADMIN_KEY, method
        assert md.get("authorization") == f"Bearer {BEARER}", method
        assert md.get("x-client-id") == "meta-proc", method
    assert seen["GetCheckpoint"].client_id == "meta-proc"
    assert seen["PutCheckpoint"].client_id == "meta-proc"


def test_bearer_token_alone_authenticates(auth_server):
    server = auth_server
    publish_entries(server, 1)
    p = Recorder()
    run(run_until_handled(p, server, cfg(after_cursor="start"), bearer_token=BEARER))
    assert p.handled == ["1"]
    md = [r.metadata for r in server.requests() if r.method == "SubscribeEvents"][0]
    assert md.get("authorization") == f"Bearer {BEARER}"
    assert "x-api-key" not in md
    assert API_KEYS[BEARER] == "admin"


# ---------------------------------------------------------------------------------------------
# Checkpoint values

NESTED = {
    "lastEventCursor": "2",
    "unicode": "héllo wörld ✓ 日本語 🎉",
    "null": None,
    "floats": [0.5, -1.25, 3.0e-5, 1.7976931348623157e308],
    "ints": [0, 1, -7, 9007199254740992],
    "bools": [True, False],
    "empty": {"list": [], "obj": {}, "str": ""},
    "deep": {"a": [{"b": [{"c": None, "d": ["x", 1, 2.5, {"e": True}]}]}]},
    "quote\"key": "back\\slash\nnewline\ttab",
}


def test_nested_checkpoint_round_trips_through_the_runtime(server):
    class Nested(Recorder):
        def snapshot(self) -> Any:
            value = dict(NESTED)
            value["lastEventCursor"] = self.last_event_cursor
            return value

    publish_entries(server, 2)
    p = Nested()

    async def main():
        async with ProcessorRun(p, server, cfg(after_cursor="start")) as r:
            await r.until_handled()
            await wait_until(lambda: stored_cursor(server) == "2", "checkpoint")

    run(main())
    assert server.checkpoint("proc").value == NESTED

    # a second run loads exactly the same value
    q = Nested()
    run(run_until_handled(q, server, cfg()))
    assert q.loaded == [NESTED]


# ---------------------------------------------------------------------------------------------
# Sync and async processors


@pytest.mark.parametrize("cls", [Recorder, AsyncRecorder], ids=["sync", "async"])
def test_sync_and_async_processors(server, cls):
    publish_entries(server, 20)
    p = cls()

    async def main():
        async with ProcessorRun(p, server, cfg(after_cursor="start", checkpoint_interval=0.05)) as r:
            await r.until_handled()  # 20 events
            await wait_until(lambda: p.flushes >= 2, "interval flushes")
            publish_entries(server, 5)
            await r.until_handled()  # 25 events
            await wait_until(lambda: len(p.signals) >= 2, "phase signals")

    run(main())
    assert p.handled == cursors(1, 25)
    assert stored_cursor(server) == "25"
    assert [s.event for s in p.signals[:2]] == ["phase", "phase"]


def test_sync_handle_returning_an_awaitable_is_awaited(server):
    class ReturnsCoroutine(Recorder):
        def handle(self, event: EventEnvelope) -> Any:  # type: ignore[override]
            async def later() -> None:
                await asyncio.sleep(0)
                Recorder.handle(self, event)

            return later()

    publish_entries(server, 5)
    p = ReturnsCoroutine()
    run(run_until_handled(p, server, cfg(after_cursor="start")))
    assert p.handled == cursors(1, 5)
    assert stored_cursor(server) == "5"


def test_many_events_exactly_once_in_order(server):
    """Batches, buffer wrap-around and coalesced checkpoint writes on a larger replay + live run."""
    for _ in range(4):
        publish_entries(server, 5000)
    p = Recorder()

    async def main():
        async with ProcessorRun(p, server, cfg(after_cursor="start", buffer_size=1000, max_batch=256)) as r:
            await r.until_handled(timeout=60)  # 20000 replayed events
            publish_entries(server, 5000)
            await r.until_handled(timeout=60)  # 5000 live events
        return r

    r = run(main(), timeout=120)
    assert p.handled == cursors(1, 25_000)
    assert stored_cursor(server) == "25000"
    st = r.result.stats
    assert st["events_handled"] == 25_000
    # writes never block handling: under load they coalesce (far fewer writes than events)
    assert 1 <= st["checkpoints_written"] < 25_000


def test_user_scope_with_a_user_key(auth_server):
    publish_entries(auth_server, 3)
    p = Recorder()
    run(run_until_handled(p, auth_server, cfg(after_cursor="start", scope="user"), api_key=USER_KEY,
                          checkpoints=InMemoryCheckpointStore()))
    assert p.handled == cursors(1, 3)


def test_async_handle_may_await_other_tasks(server):
    class Awaiting(Recorder):
        async def handle(self, event: EventEnvelope) -> None:  # type: ignore[override]
            await asyncio.sleep(0.001)
            fut = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(fut.set_result, event.cursor)
            cursor = await fut
            Recorder.handle(self, event)
            assert cursor == event.cursor

    publish_entries(server, 10)
    p = Awaiting()
    run(run_until_handled(p, server, cfg(after_cursor="start")))
    assert p.handled == cursors(1, 10)


def test_plain_object_processor_without_base_class(server):
    class Duck:
        def __init__(self) -> None:
            self.cursor = None
            self.n = 0

        def content_type(self) -> str:
            return "application/vnd.test.duck+json"

        def load(self, state: Any) -> None:
            self.cursor = state.get("lastEventCursor")

        def handle(self, event: EventEnvelope) -> None:
            self.n += 1
            self.cursor = event.cursor

        def snapshot(self) -> Any:
            return {"lastEventCursor": self.cursor, "n": self.n}

    publish_entries(server, 3)
    d = Duck()
    run(run_until_handled(d, server, cfg(after_cursor="start")))
    assert d.n == 3
    assert server.checkpoint("proc").value == {"lastEventCursor": "3", "n": 3}


def test_object_missing_methods_is_refused(server):
    class NotAProcessor:
        def content_type(self) -> str:
            return "x"

    with pytest.raises(TypeError, match="handle"):
        Runtime(NotAProcessor(), cfg(), endpoint=server.endpoint)


# ---------------------------------------------------------------------------------------------
# Processor failures


class HandlerBoom(Exception):
    pass


class Failing(Recorder):
    def handle(self, event: EventEnvelope) -> None:
        if event.cursor == self.fail_on:
            self.failure = HandlerBoom(f"boom at {event.cursor}")
            raise self.failure
        Recorder.handle(self, event)


class AsyncFailing(Recorder):
    async def handle(self, event: EventEnvelope) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        if event.cursor == self.fail_on:
            self.failure = HandlerBoom(f"boom at {event.cursor}")
            raise self.failure
        Recorder.handle(self, event)


@pytest.mark.parametrize("cls", [Failing, AsyncFailing], ids=["sync", "async"])
@pytest.mark.parametrize("live", [False, True], ids=["replayed-batch", "live"])
def test_handler_exception_stops_the_run_unchanged_and_is_not_checkpointed(server, cls, live):
    p = cls(fail_on="6")
    rt = Runtime(p, cfg(after_cursor="start", checkpoint_interval=0.05), endpoint=server.endpoint)
    if not live:
        publish_entries(server, 10)  # one replayed batch containing the failing event

    async def main():
        s = Started(rt, p, server)
        if live:
            await s.wait_live()
            for i in range(10):
                server.publish("entry", "appended", {"i": i})
                await asyncio.sleep(0.01)
        await asyncio.wait_for(s.task, 20)

    with pytest.raises(HandlerBoom) as info:
        run(main())
    assert info.value is p.failure
    frames = traceback.extract_tb(info.value.__traceback__)
    assert any(f.name == "handle" and f.filename == __file__ for f in frames), frames
    assert p.handled == cursors(1, 5)
    # the failing event's state is never checkpointed
    stored = stored_cursor(server)
    assert stored is None or int(stored) <= 5


def test_flush_exception_propagates(server):
    class FlushBoom(Recorder):
        def flush(self) -> None:
            self.failure = KeyError("flush failed")
            raise self.failure

    publish_entries(server, 2)
    p = FlushBoom()
    rt = Runtime(p, cfg(after_cursor="start", checkpoint_interval=0.05, checkpoint_every=1000), endpoint=server.endpoint)
    with pytest.raises(KeyError) as info:
        run(rt.run())
    assert info.value is p.failure
    assert any(f.name == "flush" for f in traceback.extract_tb(info.value.__traceback__))
    assert server.checkpoint("proc") is None


def test_on_stream_event_exception_propagates(server):
    class HookBoom(Recorder):
        def on_stream_event(self, event: EventEnvelope) -> None:
            self.failure = ValueError("hook failed")
            raise self.failure

    p = HookBoom()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)
    with pytest.raises(ValueError) as info:
        run(rt.run())
    assert info.value is p.failure


# ---------------------------------------------------------------------------------------------
# Threads


@pytest.mark.parametrize("cls", [Recorder, AsyncRecorder], ids=["sync", "async"])
def test_every_processor_method_runs_on_the_event_loop_thread(server, cls):
    server.put_checkpoint("proc", CONTENT_TYPE, {"lastEventCursor": "0"})
    publish_entries(server, 50)
    p = cls()
    config = cfg(after_cursor="start", checkpoint_interval=0.02, checkpoint_every=3)
    loop_thread: List[int] = []

    async def main():
        loop_thread.append(threading.get_ident())
        async with ProcessorRun(p, server, config) as r:
            await r.until_handled()  # 50 events
            await wait_until(lambda: p.flushes >= 2, "flushes")
            server.invalidate("pubsub recovery")
            await wait_until(lambda: "invalidate" in p.signal_names(), "invalidate signal")

    run(main())
    assert p.handled == cursors(1, 50)
    assert set(p.threads) >= {"content_type", "load", "handle", "snapshot", "flush", "on_stream_event"}
    for method, idents in p.threads.items():
        assert idents == {loop_thread[0]}, method


# ---------------------------------------------------------------------------------------------
# The documented example (the README quickstart's processor, with a flush)


class EntryCounter(EventProcessor):
    def __init__(self) -> None:
        self.count = 0
        self.last_event_cursor = None

    def content_type(self) -> str:
        return "application/vnd.example.entry-counter+json;v=1"

    def load(self, state) -> None:            # state: the decoded JSON of the last checkpoint
        self.count = state["count"]
        self.last_event_cursor = state.get("lastEventCursor")

    async def handle(self, event: EventEnvelope) -> None:   # `def handle` works as well
        self.count += 1
        self.last_event_cursor = event.cursor

    def snapshot(self):                       # any JSON value; resume reads "lastEventCursor"
        return {"count": self.count, "lastEventCursor": self.last_event_cursor}

    async def flush(self) -> None:            # optional; `def flush` works as well
        ...


def test_the_documented_example_processor(server):
    server.publish_many(
        [("entry", "appended", {"conversation": "c", "entry": f"e{i}"}) for i in range(4)]
        + [("conversation", "created", {"conversation": "c"})]
    )
    config = Config(client_id="entry-counter", kinds=["entry"], scope="admin",
                    checkpoint_interval=5.0, after_cursor="start")
    counter = EntryCounter()
    run(run_until_handled(counter, server, config, api_key="unused-without-auth"))
    assert counter.count == 4
    assert server.checkpoint("entry-counter").value == {"count": 4, "lastEventCursor": "4"}
    assert server.checkpoint("entry-counter").content_type == "application/vnd.example.entry-counter+json;v=1"

    server.publish("entry", "appended", {"conversation": "c", "entry": "e5"})
    again = EntryCounter()
    run(run_until_handled(again, server, config))  # the counter continues from the checkpoint
    assert again.count == 5
    assert server.checkpoint("entry-counter").value == {"count": 5, "lastEventCursor": "6"}


# ---------------------------------------------------------------------------------------------
# Filters


def _mixed(server):
    return server.publish_many(
        [
            ("conversation", "created", {"conversation": "c1"}),  # 1
            ("entry", "appended", {"conversation": "c1", "entry": "a", "entry_role": "USER"}),  # 2
            ("entry", "appended", {"conversation": "c1", "entry": "b", "entry_role": "AI"}),  # 3
            ("entry", "appended", {"conversation": "c2", "entry": "c", "entry_role": "USER", "entry_channel": "memory"}),  # 4
            ("membership", "added", {"conversation_group": "g", "user": "u"}),  # 5
            ("entry", "appended", {"conversation": "c2", "entry": "d", "entry_role": "AI", "entry_channel": "history",
                                   "entry_content_type": "text/markdown"}),  # 6
            ("response", "started", {"conversation": "c1", "recording": "r"}),  # 7
            ("entry", "appended", {"conversation": "c2", "entry": "e", "entry_role": "USER", "entry_channel": "memory",
                                   "entry_content_type": "text/plain"}),  # 8
        ]
    )


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, ["1", "2", "3", "5", "6", "7"]),  # server default channel: history
        ({"kinds": ["entry"]}, ["2", "3", "6"]),
        ({"kinds": ["conversation", "response"]}, ["1", "7"]),
        ({"kinds": ["entry"], "entry_roles": ["user"]}, ["2"]),
        ({"kinds": ["entry"], "entry_channels": ["memory"]}, ["4", "8"]),
        ({"kinds": ["entry"], "entry_channels": ["history", "MEMORY"], "entry_roles": ["USER"]}, ["2", "4", "8"]),
        ({"kinds": ["entry"], "entry_channels": ["memory", "history"], "entry_content_types": ["text/plain"]}, ["8"]),
        ({"conversation_ids": ["c2"], "entry_channels": ["memory", "history"]}, ["4", "6", "8"]),
    ],
    ids=["default", "kinds-entry", "kinds-two", "roles", "channels", "channels+roles", "content-types", "conversations"],
)
def test_filters(server, options, expected):
    _mixed(server)
    p = Recorder()
    # signals and events share one ordered buffer: once the processor has seen the "live" phase
    # (what run_until_handled waits for here), every replayed event before it was handled
    result = run(run_until_handled(p, server, cfg(after_cursor="start", **options)))
    assert {"phase": "live"} in [s.data for s in result.signals]
    assert p.handled == expected
    if expected:
        assert stored_cursor(server) == expected[-1]
