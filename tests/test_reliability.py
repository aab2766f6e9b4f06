"""Never lose an event (issue 3): transient faults, dropped streams, server restarts, fatal
codes, stale cursors, eviction, mid-stream invalidate, checkpoint write failures, processor
errors, reachability and secrets -- against a real LocalMemoryService with injected faults.
What they check is stated in docs/semantics.md, sections 8 to 14."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, List

import pytest

from memory_service_processor import (
    Config,
    ConfigurationError,
    EventEnvelope,
    GrpcCheckpointClient,
    GrpcEventClient,
    InMemoryCheckpointStore,
    MemoryServiceProcessorError,
    Runtime,
    ServerStatusError,
    StaleCursorError,
    SubscribeRequest,
)
from memory_service_processor.testing import LocalMemoryService, ProcessorRun, run_until_handled

from conftest import (
    ADMIN_KEY,
    API_KEYS,
    BEARER,
    USER_KEY,
    AsyncRecorder,
    Recorder,
    cfg,
    cursors,
    publish_entries,
    Started,
    run,
    started,
    stored_cursor,
)

pytestmark = pytest.mark.timeout(90)


def count(server: LocalMemoryService, method: str) -> int:
    return len([r for r in server.requests() if r.method == method])


def assert_exactly_once(handled: List[str], last: int, first: int = 1) -> None:
    """Every cursor first..last handled exactly once, in order."""
    assert handled == cursors(first, last), _describe(handled, first, last)


def _describe(handled: List[str], first: int, last: int) -> str:
    want = set(cursors(first, last))
    missing = sorted(want - set(handled), key=int)
    dups = sorted({c for c in handled if handled.count(c) > 1}, key=int)
    return f"{len(handled)} handled; missing={missing[:20]} duplicates={dups[:20]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Transient faults


@pytest.mark.parametrize("code", ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL", "ABORTED"])
def test_transient_subscribe_failures_are_retried(server, code):
    publish_entries(server, 10)
    server.fail("SubscribeEvents", code, 2)
    p = Recorder()

    async def main():
        async with ProcessorRun(p, server, cfg(after_cursor="start")) as r:
            await r.until_handled()  # 10 events
            publish_entries(server, 2)
            await r.until_handled()  # 12 events
        return r

    r = run(main())
    assert_exactly_once(p.handled, 12)
    assert count(server, "SubscribeEvents") == 3
    assert r.result.stats["reconnects"] >= 2
    assert stored_cursor(server) == "12"


def test_transient_get_checkpoint_failures_are_retried(server):
    publish_entries(server, 3)
    server.put_checkpoint("proc", Recorder.CONTENT_TYPE, {"lastEventCursor": "1"})
    server.fail("GetCheckpoint", "UNAVAILABLE", 2)
    p = Recorder()

    async def main() -> int:
        async with ProcessorRun(p, server, cfg()) as r:
            await r.until_handled()
            # Counted before the stop: a final write after it may be preceded by a read-back
            # (also a GetCheckpoint), depending on whether both events came in one batch.
            return count(server, "GetCheckpoint")

    loads = run(main())
    assert p.loaded == [{"lastEventCursor": "1"}]
    assert p.handled == ["2", "3"]
    assert loads == 3


@pytest.mark.parametrize("cls", [Recorder, AsyncRecorder], ids=["sync", "async"])
def test_dropped_streams_resume_without_loss_or_duplicates(server, cls):
    p = cls(delay=0.0005)
    rt = Runtime(p, cfg(after_cursor="start", buffer_size=16, max_batch=8), endpoint=server.endpoint)
    publish_entries(server, 300)

    async def main():
        async with started(rt, p, server) as s:
            # drop while the replay is in progress, then while live, several times
            for n in (40, 120, 200):
                await s.wait_handled(n)
                await s.wait(lambda: server.subscriber_count == 1, "a subscription")
                server.drop_streams("connection reset by test")
            await s.wait_handled(300)
            for _ in range(3):
                await s.wait_live()
                publish_entries(server, 20)
                server.drop_streams()
                publish_entries(server, 20)  # while reconnecting
            await s.wait_handled(420)

    run(main())
    assert_exactly_once(p.handled, 420)
    assert rt.stats()["reconnects"] >= 6
    assert stored_cursor(server) == "420"


def test_server_stop_start_mid_stream_resumes(server):
    p = Recorder(delay=0.0005)
    rt = Runtime(p, cfg(after_cursor="start", buffer_size=16, max_batch=8), endpoint=server.endpoint)
    publish_entries(server, 200)

    async def main():
        async with started(rt, p, server) as s:
            await s.wait_handled(50)
            await server.stop()
            publish_entries(server, 50)  # published while the server is down
            await server.start()
            await s.wait_handled(250)
            await s.wait_live()
            await server.stop()
            await server.start()
            await s.wait_live()
            publish_entries(server, 10)
            await s.wait_handled(260)

    run(main())
    assert_exactly_once(p.handled, 260)
    assert rt.stats()["reconnects"] >= 2
    assert stored_cursor(server) == "260"


def test_server_down_before_the_first_connection_is_waited_for():
    port = free_port()
    server = LocalMemoryService(port=port)
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start", reconnect_max=0.1), endpoint=f"127.0.0.1:{port}")

    async def main():
        async with started(rt, p, server) as s:
            await asyncio.sleep(0.3)  # let it fail a few times (not an assertion)
            await server.start()
            try:
                publish_entries(server, 3)
                await s.wait_handled(3)
            finally:
                rt.stop()
        await server.stop()

    run(main())
    assert p.handled == ["1", "2", "3"]


# ---------------------------------------------------------------------------------------------
# Fatal codes


def test_wrong_api_key_fails_fast_with_unauthenticated(auth_server):
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start", reconnect_min=5.0, reconnect_max=10.0),
                 endpoint=auth_server.endpoint, api_key="wrong-key-SEKRIT-zzz")
    with pytest.raises(ServerStatusError) as info:
        run(rt.run(), timeout=4.0)  # one attempt: far less than reconnect_min
    err = info.value
    assert err.code == "UNAUTHENTICATED"
    assert "UNAUTHENTICATED" in str(err)
    assert "wrong-key-SEKRIT-zzz" not in str(err)
    assert count(auth_server, "GetCheckpoint") == 1
    assert count(auth_server, "SubscribeEvents") == 0


def test_user_key_with_admin_scope_fails_fast_with_permission_denied(auth_server):
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start", scope="admin", reconnect_min=5.0, reconnect_max=10.0),
                 endpoint=auth_server.endpoint, api_key=USER_KEY)
    with pytest.raises(ServerStatusError) as info:
        run(rt.run(), timeout=4.0)
    assert info.value.code == "PERMISSION_DENIED"
    assert "PERMISSION_DENIED" in str(info.value)
    attempts = count(auth_server, "GetCheckpoint") + count(auth_server, "SubscribeEvents")
    assert attempts == 1


def test_user_key_with_admin_scope_on_subscribe(auth_server):
    """Checkpoints in a local store, so the subscription itself is what the server refuses."""
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start", scope="admin", reconnect_min=5.0, reconnect_max=10.0),
                 endpoint=auth_server.endpoint, api_key=USER_KEY, checkpoints=InMemoryCheckpointStore())
    with pytest.raises(ServerStatusError) as info:
        run(rt.run(), timeout=4.0)
    assert info.value.code == "PERMISSION_DENIED"
    assert "SubscribeEvents" in info.value.method
    assert "admin" in info.value.server_message
    assert count(auth_server, "SubscribeEvents") == 1


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "UNIMPLEMENTED", "PERMISSION_DENIED", "UNAUTHENTICATED"])
def test_fatal_subscribe_codes_are_not_retried(server, code):
    publish_entries(server, 3)
    server.fail("SubscribeEvents", code, 1, message="refused by test")
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start", reconnect_min=5.0, reconnect_max=10.0), endpoint=server.endpoint)
    with pytest.raises(ServerStatusError) as info:
        run(rt.run(), timeout=4.0)
    assert info.value.code == code
    assert code in str(info.value) and "refused by test" in str(info.value)
    assert info.value.server_message == "refused by test"
    assert count(server, "SubscribeEvents") == 1


def test_fatal_code_mid_run_keeps_what_was_handled(server):
    """A fatal subscribe error after a reconnect: the events handled before are checkpointed."""
    publish_entries(server, 5)
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start", checkpoint_every=1000), endpoint=server.endpoint)

    async def main():
        s = Started(rt, p, server)
        await s.wait_handled(5)
        server.fail("SubscribeEvents", "PERMISSION_DENIED", 1)
        server.drop_streams()
        await asyncio.wait_for(s.task, 20)

    with pytest.raises(ServerStatusError) as info:
        run(main())
    assert info.value.code == "PERMISSION_DENIED"
    assert stored_cursor(server) == "5"


# ---------------------------------------------------------------------------------------------
# Stale cursors


def _stale_setup(server: LocalMemoryService) -> None:
    publish_entries(server, 10)
    server.put_checkpoint("proc", Recorder.CONTENT_TYPE, {"lastEventCursor": "3"})
    server.purge(6)  # retained: 7..10


def test_stale_cursor_policy_fail(server):
    _stale_setup(server)
    p = Recorder()
    rt = Runtime(p, cfg(stale_cursor="fail", reconnect_min=5.0, reconnect_max=10.0), endpoint=server.endpoint)
    with pytest.raises(StaleCursorError) as info:
        run(rt.run(), timeout=4.0)
    err = info.value
    assert isinstance(err, MemoryServiceProcessorError)
    assert err.cursor == "3"
    assert err.reason == "cursor beyond retention window"
    assert "3" in str(err) and "retention" in str(err)
    assert p.handled == []
    assert count(server, "SubscribeEvents") == 1
    assert stored_cursor(server) == "3"  # untouched


def test_stale_cursor_policy_restart(server):
    _stale_setup(server)
    p = Recorder()

    async def main():
        async with ProcessorRun(p, server, cfg(stale_cursor="restart")) as r:
            await r.until_handled()  # the retained events 7..10
            publish_entries(server, 1)
            await r.until_handled()  # a live event

    run(main())
    assert p.handled == cursors(7, 11)
    assert "invalidate" in p.signal_names()
    inv = [s for s in p.signals if s.event == "invalidate"][0]
    assert inv.data == {"reason": "cursor beyond retention window"}
    assert [r.after_cursor for r in server.requests() if r.method == "SubscribeEvents"][:2] == ["3", "start"]
    assert stored_cursor(server) == "11"


def test_stale_cursor_policy_tail(server):
    _stale_setup(server)
    p = Recorder()
    rt = Runtime(p, cfg(stale_cursor="tail"), endpoint=server.endpoint)

    async def main():
        async with started(rt, p, server) as s:
            await s.wait_live()
            await s.wait_signal("invalidate")
            new = publish_entries(server, 3)
            await s.wait_handled(3)
            return new

    new = run(main())
    assert p.handled == new == ["11", "12", "13"]
    assert [r.after_cursor for r in server.requests() if r.method == "SubscribeEvents"][:2] == ["3", None]


def test_stale_after_cursor_on_a_first_run(server):
    publish_entries(server, 10)
    server.purge(5)
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="2", stale_cursor="fail"), endpoint=server.endpoint)
    with pytest.raises(StaleCursorError) as info:
        run(rt.run(), timeout=10)
    assert info.value.cursor == "2"


def test_stale_cursor_is_logged(server, caplog):
    _stale_setup(server)
    caplog.set_level(logging.INFO, logger="memory_service_processor")
    p = Recorder()
    run(run_until_handled(p, server, cfg(stale_cursor="restart")))
    assert p.handled == cursors(7, 10)  # the retained events
    assert any("stale" in r.getMessage().lower() and r.levelno >= logging.WARNING for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# Eviction and mid-stream invalidate


def test_slow_consumer_eviction_resumes_with_nothing_lost():
    server = LocalMemoryService(queue_capacity=2)
    server.start_sync()
    try:
        p = AsyncRecorder(delay=0.0005)
        rt = Runtime(p, cfg(after_cursor="start", buffer_size=8, max_batch=4), endpoint=server.endpoint)

        async def main():
            async with started(rt, p, server) as s:
                await s.wait_live()
                for _ in range(6):
                    publish_entries(server, 200)
                    await asyncio.sleep(0.01)
                await s.wait_handled(1200, timeout=60)

        run(main(), timeout=80)
        assert_exactly_once(p.handled, 1200)
        evictions = [s for s in p.signals if s.event == "evicted"]
        assert evictions, "the scenario never evicted the runtime: make the consumer slower"
        assert evictions[0].data == {"reason": "slow consumer"}
        assert stored_cursor(server) == "1200"
    finally:
        server.stop_sync()


def test_evict_all_resumes_immediately_with_nothing_lost(server):
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start", reconnect_min=5.0, reconnect_max=10.0), endpoint=server.endpoint)

    async def main():
        async with started(rt, p, server) as s:
            await s.wait_live()
            publish_entries(server, 10)
            await s.wait_handled(10)
            server.evict_all("too many connections")
            publish_entries(server, 10)  # possibly while reconnecting
            # resumed immediately: well before the 5 s backoff a clean end would cost
            await s.wait_handled(20, timeout=4.0)
            await s.wait_live()

    run(main())
    assert_exactly_once(p.handled, 20)
    ev = [s for s in p.signals if s.event == "evicted"]
    assert ev and ev[0].data == {"reason": "too many connections"} and ev[0].cursor == "10"
    assert [r.after_cursor for r in server.requests() if r.method == "SubscribeEvents"][-1] == "10"


def test_mid_stream_invalidate_reaches_the_hook_and_nothing_is_lost(server):
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)

    async def main():
        async with started(rt, p, server) as s:
            await s.wait_live()
            publish_entries(server, 10)
            await s.wait_handled(10)
            server.invalidate("pubsub recovery")
            publish_entries(server, 10)
            await s.wait_signal("invalidate")
            await s.wait_handled(20)
            await s.wait_live()
            publish_entries(server, 5)
            await s.wait_handled(25)

    run(main())
    assert_exactly_once(p.handled, 25)
    inv = [s for s in p.signals if s.event == "invalidate"]
    assert inv[0].data == {"reason": "pubsub recovery"}
    assert inv[0].kind == "stream"


def test_mid_stream_invalidate_in_tail_mode_keeps_running(server):
    """No cursor yet (tail-only, nothing received): the runtime keeps its stream."""
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor=None), endpoint=server.endpoint)

    async def main():
        async with started(rt, p, server) as s:
            await s.wait_live()
            server.invalidate("pubsub recovery")
            await s.wait_signal("invalidate")
            publish_entries(server, 3)
            await s.wait_handled(3)

    run(main())
    assert p.handled == ["1", "2", "3"]


# ---------------------------------------------------------------------------------------------
# Checkpoint writes


def test_transient_put_checkpoint_failures_are_retried_without_blocking(server):
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start", reconnect_min=0.05, reconnect_max=0.1), endpoint=server.endpoint)

    async def main():
        async with started(rt, p, server) as s:
            await s.wait_live()
            server.fail("PutCheckpoint", "UNAVAILABLE", 3)
            publish_entries(server, 30)
            await s.wait_handled(30)  # handling went on
            await s.wait(lambda: stored_cursor(server) == "30", "the newest checkpoint")
            assert rt.stats()["checkpoints_failed"] >= 3

    run(main())
    assert_exactly_once(p.handled, 30)
    assert server.checkpoint("proc").value == {"lastEventCursor": "30", "count": 30}


def test_put_checkpoint_failing_at_stop_is_retried_within_stop_timeout(server):
    publish_entries(server, 5)
    p = Recorder()

    async def main():
        async with ProcessorRun(p, server, cfg(after_cursor="start", checkpoint_every=1000, stop_timeout=5.0)) as r:
            await r.until_handled()  # 5 events
            server.fail("PutCheckpoint", "UNAVAILABLE", 2)

    run(main())
    assert stored_cursor(server) == "5"


def test_stop_while_the_server_is_down_returns_within_stop_timeout(server):
    """The final checkpoint cannot be written: stop() still returns normally (bounded), and the
    last completed write stands."""
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start", checkpoint_every=3, stop_timeout=0.5), endpoint=server.endpoint)

    async def main():
        async with started(rt, p, server) as s:
            publish_entries(server, 3)
            await s.wait(lambda: stored_cursor(server) == "3", "the checkpoint after 3 events")
            publish_entries(server, 2)  # 2 < checkpoint_every: not written until stop
            await s.wait_handled(5)
            await server.stop()
        await server.start()

    run(main(), timeout=40)
    assert p.flushes >= 1
    assert stored_cursor(server) == "3"


def test_fatal_put_checkpoint_error_stops_the_run(server):
    publish_entries(server, 5)
    server.fail("PutCheckpoint", "PERMISSION_DENIED", 1, message="no checkpoints for you")
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)
    with pytest.raises(ServerStatusError) as info:
        run(rt.run(), timeout=20)
    assert info.value.code == "PERMISSION_DENIED"
    assert "PutCheckpoint" in info.value.method
    assert "no checkpoints for you" in str(info.value)
    assert server.checkpoint("proc") is None


# ---------------------------------------------------------------------------------------------
# Processor-side errors


def test_snapshot_not_json_serializable_names_the_processor(server):
    class BadSnapshot(Recorder):
        def snapshot(self) -> Any:
            return {"lastEventCursor": self.last_event_cursor, "when": object()}

    publish_entries(server, 2)
    p = BadSnapshot()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)
    with pytest.raises(TypeError) as info:
        run(rt.run(), timeout=20)
    assert "BadSnapshot" in str(info.value)
    assert "JSON" in str(info.value)
    assert server.checkpoint("proc") is None


def test_snapshot_with_nan_is_refused(server):
    class NanSnapshot(Recorder):
        def snapshot(self) -> Any:
            return {"lastEventCursor": self.last_event_cursor, "x": float("nan")}

    publish_entries(server, 1)
    p = NanSnapshot()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)
    with pytest.raises((TypeError, ValueError)) as info:
        run(rt.run(), timeout=20)
    assert "NanSnapshot" in str(info.value)


def test_load_exception_propagates_unchanged(server):
    class LoadBoom(Recorder):
        def load(self, state: Any) -> None:
            self.failure = LookupError("cannot restore")
            raise self.failure

    server.put_checkpoint("proc", Recorder.CONTENT_TYPE, {"lastEventCursor": "1"})
    p = LoadBoom()
    rt = Runtime(p, cfg(), endpoint=server.endpoint)
    with pytest.raises(LookupError) as info:
        run(rt.run(), timeout=20)
    assert info.value is p.failure
    assert count(server, "SubscribeEvents") == 0


def test_content_type_raising_propagates(server):
    class CTBoom(Recorder):
        def content_type(self) -> str:
            raise NotImplementedError("no content type")

    with pytest.raises(NotImplementedError):
        run(Runtime(CTBoom(), cfg(), endpoint=server.endpoint).run(), timeout=20)


def test_undecodable_event_data_only_fails_on_access(server):
    publish_entries(server, 1)
    bad = server.publish("entry", "appended", b"<html>not json</html>")
    publish_entries(server, 1)
    seen: List[Any] = []

    class Lazy(Recorder):
        def handle(self, event: EventEnvelope) -> None:
            Recorder.handle(self, event)
            if event.cursor == bad:
                seen.append(event.raw_data)
                try:
                    event.data
                except ValueError as e:
                    seen.append(str(e))

    p = Lazy()
    run(run_until_handled(p, server, cfg(after_cursor="start")))
    assert p.handled == ["1", "2", "3"]
    assert seen[0] == b"<html>not json</html>"
    assert bad in seen[1]


def test_processor_error_in_handle_during_reconnects_is_not_masked(server):
    """A handler failure while faults are being injected still surfaces as itself."""
    p = Recorder(fail_on="15")
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)

    async def main():
        s = Started(rt, p, server)
        await s.wait_live()
        for i in range(3):
            publish_entries(server, 5)
            if i == 0:
                # A checkpoint exists before the failure (else there would be none to check).
                deadline = asyncio.get_running_loop().time() + 10
                while stored_cursor(server) != "5" and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.005)
            server.drop_streams()
            await asyncio.sleep(0.02)
        await asyncio.wait_for(s.task, 20)

    with pytest.raises(RuntimeError) as info:
        run(main())
    assert info.value is p.failure
    assert p.handled == cursors(1, 14)
    stored = stored_cursor(server)
    assert stored is not None and 5 <= int(stored) <= 14


# ---------------------------------------------------------------------------------------------
# Unreachable endpoint


def test_unreachable_endpoint_retries_and_stops_cleanly(caplog):
    caplog.set_level(logging.DEBUG, logger="memory_service_processor")
    port = free_port()
    p = Recorder()
    rt = Runtime(p, cfg(reconnect_min=0.02, reconnect_max=0.05), endpoint=f"127.0.0.1:{port}",
                 checkpoints=InMemoryCheckpointStore())

    async def main():
        async with started(rt, p) as s:
            await s.wait(lambda: rt.stats()["reconnects"] >= 3, "3 reconnects")

    run(main(), timeout=30)  # returns normally: stop() ends the retrying cleanly
    failures = [r for r in caplog.records if "subscribe failed" in r.getMessage()]
    assert len(failures) >= 3
    attempts = [r for r in caplog.records if "subscribing" in r.getMessage()]
    assert len(attempts) >= 3
    # one warning per failed attempt, no more (the attempt that stop() interrupted may not log)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("memory_service_processor")]
    assert warnings == failures
    assert len(attempts) - 1 <= len(failures) <= len(attempts)
    assert rt.stats()["phase"] == "stopped"
    assert p.handled == []


def test_unreachable_endpoint_while_loading_the_checkpoint_stops_cleanly(caplog):
    """The first RPC (GetCheckpoint) is retried; stop() during those retries returns normally."""
    caplog.set_level(logging.DEBUG, logger="memory_service_processor")
    port = free_port()
    p = Recorder()
    rt = Runtime(p, cfg(reconnect_min=0.02, reconnect_max=0.05), endpoint=f"127.0.0.1:{port}")

    def load_failures() -> int:
        return len([r for r in caplog.records if "loading checkpoint failed" in r.getMessage()])

    async def main():
        async with started(rt, p) as s:
            await s.wait(lambda: load_failures() >= 3, "3 logged attempts")

    run(main(), timeout=30)
    assert load_failures() >= 3
    assert p.loaded == [] and p.handled == []


def test_cancelling_while_the_endpoint_is_unreachable_ends_cancelled():
    port = free_port()
    p = Recorder()
    rt = Runtime(p, cfg(reconnect_min=0.02, reconnect_max=0.05), endpoint=f"127.0.0.1:{port}")

    async def main():
        s = Started(rt, p)
        await asyncio.sleep(0.2)  # a few failed attempts (not an assertion)
        s.task.cancel()
        # No other error: the run ends cancelled (docs/semantics.md#13-cancellation).
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(s.task, 10)
        assert s.task.cancelled()

    run(main(), timeout=20)
    assert p.handled == []


# ---------------------------------------------------------------------------------------------
# Secrets


SECRETS = [ADMIN_KEY, BEARER, USER_KEY, "wrong-key-SEKRIT-zzz"]


def _assert_no_secret(text: str, where: str) -> None:
    for s in SECRETS:
        assert s not in text, f"secret leaked in {where}: {text!r}"
    assert "SEKRIT" not in text, f"secret fragment leaked in {where}: {text!r}"


def test_secrets_never_appear_in_logs_reprs_or_errors(caplog):
    caplog.set_level(1)  # everything, including TRACE records forwarded from the native layer
    server = LocalMemoryService(api_keys=API_KEYS)
    server.start_sync()
    texts: List[Any] = []
    try:
        publish_entries(server, 20)
        p = Recorder()
        rt = Runtime(p, cfg(after_cursor="start", checkpoint_interval=0.05), endpoint=server.endpoint,
                     api_key=ADMIN_KEY, bearer_token=BEARER)
        texts += [("repr(runtime)", repr(rt)), ("str(runtime)", str(rt))]

        async def main():
            async with started(rt, p, server) as s:
                await s.wait_handled(20)
                server.fail("PutCheckpoint", "UNAVAILABLE", 2)
                server.fail("SubscribeEvents", "UNAVAILABLE", 2)
                server.drop_streams("reset")
                publish_entries(server, 5)
                await s.wait_handled(25)
                await s.wait(lambda: stored_cursor(server) == "25", "checkpoint")
                server.evict_all()
                server.invalidate()
                publish_entries(server, 1)
                await s.wait_handled(26)

        run(main())
        texts.append(("stats", str(rt.stats())))

        for key, kw in (
            ("wrong-key-SEKRIT-zzz", {"api_key": "wrong-key-SEKRIT-zzz"}),
            (USER_KEY, {"api_key": USER_KEY}),
            (USER_KEY, {"bearer_token": USER_KEY}),
        ):
            bad = Runtime(Recorder(), cfg(after_cursor="start"), endpoint=server.endpoint, **kw)
            texts.append(("repr(bad runtime)", repr(bad)))
            with pytest.raises(ServerStatusError) as info:
                run(bad.run(), timeout=20)
            e = info.value
            texts += [("str(exc)", str(e)), ("repr(exc)", repr(e)), ("exc.args", repr(e.args)),
                      ("exc attrs", repr(vars(e)))]

        ec = GrpcEventClient(server.endpoint, api_key=ADMIN_KEY, bearer_token=BEARER)
        cc = GrpcCheckpointClient(server.endpoint, api_key=ADMIN_KEY, bearer_token=BEARER)
        texts += [("repr(event client)", repr(ec)), ("repr(checkpoint client)", repr(cc)),
                  ("repr(options)", repr(ec.options)), ("repr(native)", repr(ec._native)),
                  ("repr(native cp)", repr(cc._native))]

        async def standalone():
            stream = await GrpcEventClient(server.endpoint, api_key=USER_KEY).subscribe(SubscribeRequest(after_cursor="start"))
            await stream.recv()

        with pytest.raises(ServerStatusError) as info:
            run(standalone())
        texts.append(("standalone exc", str(info.value)))
    finally:
        server.stop_sync()

    for where, text in texts:
        _assert_no_secret(text, where)
    assert caplog.records, "expected log records at DEBUG"
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    for r in caplog.records:
        _assert_no_secret(r.getMessage(), f"log record {r.name}")
        _assert_no_secret(repr(r.args), f"log record args {r.name}")
        for k, v in vars(r).items():
            if k not in ("msg", "args", "message"):
                _assert_no_secret(repr(v), f"log record attribute {k}")
    # the failures were logged (one line per attempt), without the secrets
    assert any("PutCheckpoint" in r.getMessage() or "checkpoint write failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["api_key", "bearer_token"])
def test_secrets_with_bad_characters_are_refused_without_echo(server, name):
    bad = "SEKRIT\nvalue"
    with pytest.raises(ConfigurationError) as info:
        Runtime(Recorder(), cfg(), endpoint=server.endpoint, **{name: bad})
    assert "SEKRIT" not in str(info.value)
    assert name in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        GrpcEventClient(server.endpoint, **{name: bad})
    assert "SEKRIT" not in str(info.value) and name in str(info.value)


def test_config_repr_has_no_secret():
    c = Config(client_id="x", justification="because")
    assert "SEKRIT" not in repr(c)
