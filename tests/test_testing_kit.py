"""The testing kit (issue "Pluggable clients and a testing kit", item 3):
``run_until_handled`` / ``ProcessorRun`` run the real runtime until the processor has handled
what was published, with no sleeps or polling in the test, then hand back its state and stored
checkpoint; ``InMemoryEventClient`` is an event source without a server.

The first tests are written the way a processor author would write them (see the README's "Testing your processor").
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, List, Optional

import pytest

from conftest import ADMIN_KEY, AsyncRecorder, Recorder, cfg, run
from memory_service_processor import (
    Checkpoint,
    Config,
    EventEnvelope,
    FileCheckpointStore,
    InMemoryCheckpointStore,
    ServerStatusError,
    SubscribeRequest,
    TransientError,
)
from memory_service_processor.testing import (
    InMemoryEventClient,
    LocalMemoryService,
    ProcessorRun,
    RunResult,
    run_until_handled,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from entry_counter import EntryCounter  # noqa: E402
from turn_counter import TurnCounter  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def entry(conversation: str = "c1", role: str = "USER", **extra: Any) -> tuple:
    """An ``entry/created`` event with a summary payload."""
    return ("entry", "created", dict({"conversation": conversation, "entry_role": role}, **extra))


# ----------------------------------------------------------------------------------------------
# As a processor author uses it
# ----------------------------------------------------------------------------------------------


def test_entry_counter_counts_and_checkpoints():
    async def main() -> None:
        async with LocalMemoryService() as server:
            result = await run_until_handled(
                EntryCounter(), server, "entry-counter",
                publish=[entry(role="USER"), entry(role="AI"), ("conversation", "created", {"conversation": "c1"})],
            )
            assert result.processor.count == 2
            assert result.processor.by_role == {"USER": 1, "AI": 1}
            assert result.cursors == ["1", "2", "3"]
            assert result.checkpoint.value == {"count": 2, "byRole": {"USER": 1, "AI": 1}, "lastEventCursor": "3"}
            assert result.state == result.checkpoint.value
            assert result.checkpoint.content_type == EntryCounter.CONTENT_TYPE

            # A restart resumes from the checkpoint: only the new event is handled.
            result = await run_until_handled(EntryCounter(), server, "entry-counter", publish=[entry(role="AI")])
            assert result.cursors == ["4"]
            assert result.processor.count == 3
            assert result.state["lastEventCursor"] == "4"

    run(main())


def test_turn_counter_with_an_in_memory_source_and_no_server():
    source = InMemoryEventClient(
        [
            # a full conversation payload (the stored entity), then summary-shaped ones
            ("conversation", "created", {"id": "c1", "conversationGroupId": "g1", "title": "Trip"}),
            ("membership", "created", {"conversation_group": "g1", "user": "bob", "role": "reader"}),
            entry("c1", "USER"),
            entry("c1", "AI"),
            entry("c1", "AI", entry_channel="context"),
            entry("c2", "USER"),
            ("conversation", "deleted", {"conversation": "c2", "conversation_group": "g2", "members": []}),
        ]
    )
    # the notes' channel is asked for, as the example's docstring runs it (the default is history)
    config = cfg("turn-counter", after_cursor="start", entry_channels=["history", "context"])
    result = run(run_until_handled(TurnCounter(), source, config))
    counter = result.processor
    assert [s.conversation for s in counter.busiest()] == ["c1"]
    (c1,) = counter.busiest()
    assert (c1.title, c1.user_turns, c1.assistant_turns, c1.notes) == ("Trip", 1, 1, 1)
    assert counter.member_count(c1) == 1
    assert result.state["lastEventCursor"] == "7"
    # The in-memory checkpoints are handed back for the next run.
    source.publish_many([entry("c1", "USER")])
    again = run(run_until_handled(TurnCounter(), source, config, checkpoints=result.checkpoints))
    assert again.cursors == ["8"]
    assert again.processor.busiest()[0].user_turns == 2


# ----------------------------------------------------------------------------------------------
# run_until_handled: when is "handled everything"?
# ----------------------------------------------------------------------------------------------


def test_events_the_config_filters_out_do_not_make_it_wait(server):
    """The last published event is not an entry: the run ends when the stream goes live."""
    server.publish_many([entry(), entry(), ("conversation", "created", {"conversation": "c1"})])
    p = Recorder()
    result = run(run_until_handled(p, server, Config(client_id="proc", kinds=["entry"], after_cursor="start")))
    assert result.cursors == ["1", "2"] and p.handled == ["1", "2"]
    assert result.stats["events_handled"] == 2
    assert result.state["lastEventCursor"] == "2"


def test_a_checkpoint_past_the_published_events_ends_at_once(server):
    server.publish_many([entry()] * 3)
    server.put_checkpoint("proc", Recorder.CONTENT_TYPE, {"lastEventCursor": "3", "count": 3})
    p = Recorder()
    result = run(run_until_handled(p, server, "proc"))
    assert result.events == [] and p.loaded == [{"lastEventCursor": "3", "count": 3}]
    assert result.state["lastEventCursor"] == "3"


def test_tail_only_ends_at_once_without_events(server):
    server.publish_many([entry()] * 2)
    result = run(run_until_handled(Recorder(), server, "proc", after_cursor=None))
    assert result.events == []
    assert [s.data for s in result.signals] == [{"phase": "live"}]


def test_nothing_published_ends_at_once(server):
    result = run(run_until_handled(Recorder(), server, "proc"))
    assert result.events == []


def test_async_processor_and_its_own_stream_hook():
    p = AsyncRecorder()
    source = InMemoryEventClient([entry()] * 3)
    result = run(run_until_handled(p, source, "proc"))
    assert p.handled == ["1", "2", "3"]
    # The processor's own hook still gets every signal (the run may stop before "live").
    assert p.signals and p.signals[0].data == {"phase": "replay"}
    assert [s.data for s in result.signals] == [s.data for s in p.signals]
    assert result.processor is p


def test_any_object_with_the_five_methods_is_a_processor():
    class Plain:
        def __init__(self) -> None:
            self.seen: List[str] = []
            self.cursor: Optional[str] = None

        def content_type(self) -> str:
            return "application/x-plain"

        def load(self, state: Any) -> None:
            self.cursor = state["lastEventCursor"]

        async def handle(self, event: EventEnvelope) -> None:
            self.seen.append(event.data["conversation"])
            self.cursor = event.cursor

        def snapshot(self) -> Any:
            return {"lastEventCursor": self.cursor}

        def flush(self) -> None:
            pass

    source = InMemoryEventClient([entry("a"), entry("b")])
    result = run(run_until_handled(Plain(), source, "plain"))
    assert result.processor.seen == ["a", "b"]
    assert result.state == {"lastEventCursor": "2"}


def test_runtime_messages_name_the_processor_class_not_a_wrapper():
    class BadSnapshot(Recorder):
        def snapshot(self) -> Any:
            return {"when": object()}

    with pytest.raises(TypeError, match=r"BadSnapshot\.snapshot\(\)"):
        run(run_until_handled(BadSnapshot(), InMemoryEventClient([entry()]), "proc"))


def test_a_config_keeps_its_fields_and_after_cursor_overrides(server):
    server.publish_many([entry()] * 4)
    config = cfg(after_cursor="2", checkpoint_every=100)
    result = run(run_until_handled(Recorder(), server, config))
    assert result.cursors == ["3", "4"]
    result = run(run_until_handled(Recorder(), server, cfg(client_id="other"), after_cursor="start"))
    assert result.cursors == ["1", "2", "3", "4"]


def test_processor_exception_propagates_unchanged_and_is_not_checkpointed(server):
    server.publish_many([entry()] * 3)
    p = Recorder(fail_on="2")
    with pytest.raises(RuntimeError, match="cursor 2") as info:
        run(run_until_handled(p, server, "proc"))
    assert info.value is p.failure
    assert p.handled == ["1"]
    assert (server.checkpoint("proc") or Checkpoint("proc", "", {})).value.get("lastEventCursor") in (None, "1")


def test_timeout_names_what_was_awaited_and_stops_the_runtime():
    source = InMemoryEventClient([entry()] * 2)
    with pytest.raises(TimeoutError) as info:
        run(run_until_handled(Recorder(), source, "proc", until_cursor="99", timeout=0.2))
    text = str(info.value)
    assert "cursor 99" in text and "'2'" in text


def test_api_key_and_other_runtime_options_pass_through(auth_server):
    auth_server.publish_many([entry()] * 2)
    result = run(run_until_handled(Recorder(), auth_server, "proc", api_key=ADMIN_KEY))
    assert result.cursors == ["1", "2"]
    with pytest.raises(ServerStatusError) as info:
        run(run_until_handled(Recorder(), auth_server, "proc"))  # no key
    assert info.value.code == "UNAUTHENTICATED"


def test_server_events_with_a_file_checkpoint_store(server, tmp_path):
    server.publish_many([entry()] * 3)
    result = run(run_until_handled(Recorder(), server, "proc", checkpoints=FileCheckpointStore(tmp_path)))
    assert result.state["lastEventCursor"] == "3"
    assert server.checkpoint("proc") is None
    assert isinstance(result.checkpoints, FileCheckpointStore)
    assert run(FileCheckpointStore(tmp_path).get("proc")).value["lastEventCursor"] == "3"


def test_a_user_written_event_client_with_until_cursor():
    """A custom client that sends no phase signals: say which cursor ends the run."""

    class Stream:
        def __init__(self, events: List[EventEnvelope]) -> None:
            self.events = events

        async def recv(self) -> EventEnvelope:
            if not self.events:
                self.idle = asyncio.get_running_loop().create_future()
                await self.idle  # live, nothing new
            return self.events.pop(0)

    class Client:
        async def subscribe(self, request: SubscribeRequest) -> Stream:
            return Stream([EventEnvelope("appended", "entry", b"{}", f"tok-{i}") for i in "abc"])

    result = run(run_until_handled(Recorder(), None, "proc", events=Client(), until_cursor="tok-c"))
    assert result.cursors == ["tok-a", "tok-b", "tok-c"]
    assert isinstance(result.checkpoints, InMemoryCheckpointStore)
    assert result.state["lastEventCursor"] == "tok-c"


def test_argument_errors():
    with pytest.raises(TypeError, match="LocalMemoryService"):
        ProcessorRun(Recorder(), object(), "proc")
    with pytest.raises(TypeError, match="events="):
        ProcessorRun(Recorder(), None, "proc")
    with pytest.raises(TypeError, match="not both"):
        ProcessorRun(Recorder(), InMemoryEventClient(), "proc", events=InMemoryEventClient())
    with pytest.raises(TypeError, match="Config"):
        ProcessorRun(Recorder(), InMemoryEventClient(), 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="publish_many"):
        run(run_until_handled(Recorder(), None, "proc", events=InMemoryEventClient(), publish=[entry()]))


# ----------------------------------------------------------------------------------------------
# ProcessorRun: several rounds while the processor keeps running
# ----------------------------------------------------------------------------------------------


def test_rounds_of_publishing_with_a_dropped_connection_in_between(server):
    p = Recorder()

    async def main() -> RunResult:
        async with ProcessorRun(p, server, cfg()) as prun:  # after_cursor=None: live tail
            await prun.until_handled()  # live, nothing yet
            server.publish_many([entry()] * 3)
            await prun.until_handled()
            assert p.handled == ["1", "2", "3"]
            server.drop_streams()  # UNAVAILABLE: the runtime reconnects after "3"
            server.publish_many([entry()] * 2)
            await prun.until_handled()
            assert p.handled == ["1", "2", "3", "4", "5"]
        assert prun.result is not None
        return prun.result

    result = run(main())
    assert result.cursors == ["1", "2", "3", "4", "5"]
    assert result.state["lastEventCursor"] == "5"
    assert result.stats["reconnects"] >= 1


def test_until_handled_raises_the_run_failure_at_once():
    source = InMemoryEventClient([entry()])
    error = RuntimeError("backend gone")

    async def main() -> None:
        async with ProcessorRun(Recorder(), source, "proc") as prun:
            await prun.until_handled()
            source.break_streams(error)
            source.publish("entry", "appended", {})
            await prun.until_handled(timeout=30)

    with pytest.raises(RuntimeError, match="backend gone") as info:
        run(main())
    assert info.value is error


def test_until_handled_needs_a_started_run():
    prun = ProcessorRun(Recorder(), InMemoryEventClient(), "proc")
    with pytest.raises(RuntimeError, match="start"):
        run(prun.until_handled())
    with pytest.raises(RuntimeError, match="not started"):
        run(prun.stop())


# ----------------------------------------------------------------------------------------------
# InMemoryEventClient
# ----------------------------------------------------------------------------------------------


def _read(stream: Any, n: int) -> List[EventEnvelope]:
    async def main() -> List[EventEnvelope]:
        return [await stream.recv() for _ in range(n)]

    return run(main())


def test_in_memory_client_replay_live_and_filters():
    source = InMemoryEventClient(
        [
            entry("c1", "USER"),
            ("conversation", "created", {"conversation": "c1"}),
            entry("c2", "AI"),
            entry("c1", "AI", entry_channel="memory"),
        ]
    )
    assert source.last_cursor == "4"

    async def main() -> None:
        both = ["history", "memory"]  # the default is history only, as on the server
        stream = await source.subscribe(SubscribeRequest(after_cursor="start", entry_channels=both))
        got = [await stream.recv() for _ in range(6)]
        assert [(e.kind, e.event, e.cursor) for e in got] == [
            ("stream", "phase", None),
            ("entry", "created", "1"),
            ("conversation", "created", "2"),
            ("entry", "created", "3"),
            ("entry", "created", "4"),
            ("stream", "phase", None),
        ]
        assert got[0].data == {"phase": "replay"} and got[-1].data == {"phase": "live"}
        # Live: a publish from another thread wakes the waiting recv.
        pending = asyncio.ensure_future(stream.recv())
        await asyncio.get_running_loop().run_in_executor(None, source.publish, "entry", "appended", {"conversation": "c9"})
        assert (await pending).cursor == "5"

        filtered = await source.subscribe(
            SubscribeRequest(kinds=["ENTRY"], after_cursor="1", entry_roles=["ai"], conversation_ids=["c1", "c2"], entry_channels=both)
        )
        got = [await filtered.recv() for _ in range(4)]
        assert [e.cursor for e in got] == [None, "3", "4", None]
        channel = await source.subscribe(SubscribeRequest(after_cursor="start", entry_channels=["memory"], kinds=["entry"]))
        got = [await channel.recv() for _ in range(3)]
        assert [e.cursor for e in got] == [None, "4", None]
        tail = await source.subscribe(SubscribeRequest())
        assert (await tail.recv()).data == {"phase": "live"}
        source.publish("membership", "added", {})
        assert (await tail.recv()).cursor == "6"

        # `async for` until the stream ends.
        short = InMemoryEventClient([entry(), entry()])
        stream = await short.subscribe(SubscribeRequest(after_cursor="start"))
        short.break_streams()
        assert [(e.event, e.cursor) async for e in stream] == [("phase", None), ("created", "1"), ("created", "2"), ("phase", None)]

    run(main())
    assert [r.after_cursor for r in source.requests] == ["start", "1", "start", None]


def test_in_memory_client_stale_cursor_and_faults():
    source = InMemoryEventClient([entry()] * 5)
    source.purge("3")

    async def main() -> None:
        stale = await source.subscribe(SubscribeRequest(after_cursor="1"))
        assert [(await stale.recv()).event for _ in range(2)] == ["phase", "invalidate"]
        with pytest.raises(StopAsyncIteration):
            await stale.recv()
        ok = await source.subscribe(SubscribeRequest(after_cursor="3"))
        assert [e.cursor for e in [await ok.recv() for _ in range(4)]] == [None, "4", "5", None]
        start = await source.subscribe(SubscribeRequest(after_cursor="start"))
        assert (await start.recv()).event == "phase" and (await start.recv()).cursor == "4"

        source.fail(TransientError("down"), count=2)
        for _ in range(2):
            with pytest.raises(TransientError):
                await source.subscribe(SubscribeRequest())
        live = await source.subscribe(SubscribeRequest(after_cursor="5"))
        assert (await live.recv()).data == {"phase": "replay"}
        assert (await live.recv()).data == {"phase": "live"}
        source.break_streams()  # a clean end for every open stream
        with pytest.raises(StopAsyncIteration):
            await live.recv()
        # a cursor that is not decimal is stale, as upstream treats it
        stale = await source.subscribe(SubscribeRequest(after_cursor="abc"))
        assert (await stale.recv()).data == {"phase": "replay"}
        assert (await stale.recv()).data == {"reason": "cursor beyond retention window"}
        with pytest.raises(StopAsyncIteration):
            await stale.recv()

    run(main())


def test_runtime_retries_the_in_memory_faults_and_resumes_without_loss():
    source = InMemoryEventClient([entry()] * 3)
    source.fail(TransientError("starting up"))
    p = Recorder()

    async def main() -> None:
        async with ProcessorRun(p, source, "proc") as prun:
            await prun.until_handled()
            source.break_streams(TransientError("connection reset"))
            source.publish_many([entry()] * 2)
            await prun.until_handled()
            source.break_streams()  # clean end: resubscribe after the backoff
            source.publish("entry", "appended", {})
            await prun.until_handled()

    run(main())
    assert p.handled == ["1", "2", "3", "4", "5", "6"]
    assert [r.after_cursor for r in source.requests][:2] == ["start", "start"]
    assert "3" in [r.after_cursor for r in source.requests]


def test_the_documented_example_runs_as_written():
    """The README's "Testing your processor" section: its code block is a working test, under 20 lines."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    text = readme[readme.index("## Testing your processor"):]
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) < 20
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    namespace["test_counts_entries_and_resumes"]()
