"""Pluggable clients (issue "Pluggable clients and a testing kit", items 1, 2 and 4).

Pure-Python event and checkpoint clients, written here the way a user would (no base class,
just the protocol methods), drive the real runtime: the same Rust loop, backoff, stale-cursor
policy and checkpoint writer as the gRPC clients. Errors they raise are classified:
``CheckpointNotFoundError`` = first run, ``TransientError`` = retry with backoff, anything else
= fatal, propagated unchanged. Also: the built-in stores chosen by spec
(``grpc | file:PATH | memory``), and the typing.Protocol definitions.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

from conftest import ADMIN_KEY, USER_KEY, Recorder, cfg, run, started
from memory_service_processor import (
    Checkpoint,
    CheckpointClient,
    CheckpointNotFoundError,
    ConfigurationError,
    ConnectionOptions,
    ContentTypeMismatchError,
    EventClient,
    EventEnvelope,
    EventStream,
    FileCheckpointStore,
    GrpcCheckpointClient,
    GrpcEventClient,
    InMemoryCheckpointStore,
    MemoryServiceProcessorError,
    Runtime,
    StaleCursorError,
    SubscribeRequest,
    TransientError,
)
from memory_service_processor._stores import checkpoint_store_from_spec
from memory_service_processor.testing import InMemoryEventClient, ProcessorRun, run_until_handled

pytestmark = pytest.mark.timeout(60)

END = object()  # a script item: the stream ends cleanly (StopAsyncIteration)


def ev(cursor: int, kind: str = "entry") -> EventEnvelope:
    return EventEnvelope("appended", kind, b'{"conversation":"c1"}', cursor=str(cursor))


def signal(event: str, **data: Any) -> EventEnvelope:
    import json

    return EventEnvelope(event, "stream", json.dumps(data).encode())


class ScriptedStream:
    """A user-written EventStream: returns / raises the script's items in order, then stays
    open (as a live stream with nothing new) until the runtime stops."""

    def __init__(self, source: "ScriptedSource", items: Sequence[Any]) -> None:
        self.source = source
        self.items = list(items)
        self.idle: Optional["asyncio.Future[None]"] = None

    async def recv(self) -> EventEnvelope:
        self.source.threads.add(threading.get_ident())
        self.source.loops.add(id(asyncio.get_running_loop()))
        if not self.items:
            # Live, nothing new: wait on a future the stream holds (as a real client waits on its
            # connection), until the runtime stops.
            self.idle = asyncio.get_running_loop().create_future()
            await self.idle
        item = self.items.pop(0)
        if item is END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]


class ScriptedSource:
    """A user-written EventClient: subscription ``i`` raises ``subscribe_errors[i]`` if there is
    one, else gets the next script from ``scripts``."""

    def __init__(self, scripts: Sequence[Sequence[Any]], subscribe_errors: Sequence[Optional[BaseException]] = ()) -> None:
        self.scripts = [list(s) for s in scripts]
        self.subscribe_errors = list(subscribe_errors)
        self.requests: List[SubscribeRequest] = []
        self.threads: set = set()
        self.loops: set = set()

    async def subscribe(self, request: SubscribeRequest) -> ScriptedStream:
        self.threads.add(threading.get_ident())
        self.loops.add(id(asyncio.get_running_loop()))
        self.requests.append(request)
        if self.subscribe_errors:
            error = self.subscribe_errors.pop(0)
            if error is not None:
                raise error
        return ScriptedStream(self, self.scripts.pop(0) if self.scripts else [])

    @property
    def after_cursors(self) -> List[Optional[str]]:
        return [r.after_cursor for r in self.requests]


class DictStore:
    """A user-written CheckpointClient over a dict, with scripted failures."""

    def __init__(self, get_errors: Sequence[BaseException] = (), put_errors: Sequence[BaseException] = ()) -> None:
        self.items: Dict[str, Checkpoint] = {}
        self.get_errors = list(get_errors)
        self.put_errors = list(put_errors)
        self.gets = 0
        self.puts: List[Any] = []
        self.threads: set = set()
        self.loops: set = set()

    async def get(self, client_id: str) -> Checkpoint:
        self.threads.add(threading.get_ident())
        self.loops.add(id(asyncio.get_running_loop()))
        self.gets += 1
        if self.get_errors:
            raise self.get_errors.pop(0)
        if client_id not in self.items:
            raise CheckpointNotFoundError(client_id=client_id)
        return self.items[client_id]

    async def put(self, client_id: str, content_type: str, value: Any) -> Checkpoint:
        self.threads.add(threading.get_ident())
        self.loops.add(id(asyncio.get_running_loop()))
        self.puts.append(value)
        if self.put_errors:
            raise self.put_errors.pop(0)
        self.items[client_id] = Checkpoint(client_id, content_type, value)
        return self.items[client_id]

    def cursor(self, client_id: str = "proc") -> Optional[str]:
        cp = self.items.get(client_id)
        return None if cp is None else cp.value.get("lastEventCursor")


class Boom(Exception):
    """A user exception: fatal when raised by a client."""


# ----------------------------------------------------------------------------------------------
# Protocols
# ----------------------------------------------------------------------------------------------


def test_protocols_accept_user_and_builtin_implementations(tmp_path):
    source = ScriptedSource([])
    assert isinstance(source, EventClient)
    assert isinstance(ScriptedStream(source, []), EventStream)
    assert isinstance(DictStore(), CheckpointClient)
    assert isinstance(InMemoryCheckpointStore(), CheckpointClient)
    assert isinstance(FileCheckpointStore(tmp_path), CheckpointClient)
    assert isinstance(InMemoryEventClient(), EventClient)
    assert isinstance(GrpcEventClient("localhost:1"), EventClient)
    assert isinstance(GrpcCheckpointClient("localhost:1"), CheckpointClient)
    assert not isinstance(DictStore(), EventClient)
    assert not isinstance(source, CheckpointClient)


def test_type_checker_accepts_user_implementations(tmp_path):
    """mypy (a test extra) accepts hand-written clients where the protocols are expected and
    rejects one with a wrong signature."""
    pytest.importorskip("mypy")
    good = tmp_path / "good.py"
    good.write_text(
        textwrap.dedent(
            """
            from typing import Any, List
            from memory_service_processor import (
                Checkpoint, CheckpointClient, CheckpointNotFoundError, Config, EventClient,
                EventEnvelope, EventStream, FileCheckpointStore, InMemoryCheckpointStore,
                Runtime, SubscribeRequest,
            )
            from memory_service_processor.testing import InMemoryEventClient

            class MyStream:
                def __init__(self, events: List[EventEnvelope]) -> None:
                    self.events = events
                async def recv(self) -> EventEnvelope:
                    if not self.events:
                        raise StopAsyncIteration
                    return self.events.pop(0)

            class MyEvents:
                async def subscribe(self, request: SubscribeRequest) -> MyStream:
                    return MyStream([EventEnvelope("appended", "entry", b"{}", "1")])

            class MyStore:
                async def get(self, client_id: str) -> Checkpoint:
                    raise CheckpointNotFoundError(client_id=client_id)
                async def put(self, client_id: str, content_type: str, value: Any) -> Checkpoint:
                    return Checkpoint(client_id, content_type, value)

            events: EventClient = MyEvents()
            stream: EventStream = MyStream([])
            store: CheckpointClient = MyStore()
            stores: List[CheckpointClient] = [InMemoryCheckpointStore(), FileCheckpointStore("/tmp/x")]
            sources: List[EventClient] = [InMemoryEventClient()]
            """
        )
    )
    bad = tmp_path / "bad.py"
    bad.write_text(
        textwrap.dedent(
            """
            from memory_service_processor import Checkpoint, CheckpointClient

            class NotAStore:
                async def get(self, client_id: str) -> Checkpoint:
                    raise LookupError(client_id)
                def put(self, client_id: str) -> None:   # wrong: sync, wrong arity
                    pass

            store: CheckpointClient = NotAStore()
            """
        )
    )
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "c")]
    ok = subprocess.run(mypy + [str(good)], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ko = subprocess.run(mypy + [str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert ko.returncode == 1, ko.stdout + ko.stderr
    assert "CheckpointClient" in ko.stdout and "put" in ko.stdout, ko.stdout


# ----------------------------------------------------------------------------------------------
# The same loop, driven by Python clients
# ----------------------------------------------------------------------------------------------


def test_user_clients_drive_the_runtime_in_order_with_checkpoints():
    source = ScriptedSource([[signal("phase", phase="replay"), ev(1), ev(2), signal("phase", phase="live"), ev(3)]])
    store = DictStore()
    p = Recorder()
    config = cfg(kinds=["entry"], entry_roles=["USER"], after_cursor="start", justification="audit", conversation_ids=["c1"])

    # Not the testing kit: its final read of the checkpoint would count in store.gets.
    rt = Runtime(p, config, events=source, checkpoints=store)

    async def main() -> None:
        async with started(rt, p) as s:
            await s.wait_handled(3)
        # The Python clients' coroutines ran on the loop (and thread) that awaited run().
        assert source.threads == store.threads == {threading.get_ident()}
        assert source.loops == store.loops == {id(asyncio.get_running_loop())}

    run(main())
    assert p.handled == ["1", "2", "3"]
    assert p.signal_names() == ["phase", "phase"]
    assert store.cursor() == "3"
    assert store.items["proc"].content_type == Recorder.CONTENT_TYPE
    assert store.items["proc"].value == {"lastEventCursor": "3", "count": 3}
    assert store.gets == 1
    (request,) = source.requests
    assert isinstance(request, SubscribeRequest)
    assert (request.after_cursor, request.detail, request.scope, request.justification) == ("start", "full", "admin", "audit")
    assert list(request.kinds) == ["entry"] and list(request.entry_roles) == ["USER"]
    assert list(request.conversation_ids) == ["c1"]
    stats = rt.stats()
    assert stats["events_handled"] == 3 and stats["stream_signals"] == 2 and stats["reconnects"] == 0
    assert stats["checkpoints_written"] >= 1 and stats["checkpoints_failed"] == 0


def test_resume_from_a_user_store_loads_state_and_subscribes_after_its_cursor():
    store = DictStore()
    store.items["proc"] = Checkpoint("proc", Recorder.CONTENT_TYPE, {"lastEventCursor": "7", "count": 7})
    source = ScriptedSource([[ev(8), ev(9)]])
    p = Recorder()
    run(run_until_handled(p, None, cfg(after_cursor="start"), events=source, checkpoints=store, until_cursor="9"))
    assert p.loaded == [{"lastEventCursor": "7", "count": 7}]
    assert source.after_cursors == ["7"]
    assert p.handled == ["8", "9"] and store.cursor() == "9"


def test_checkpoint_not_found_means_first_run_from_the_configured_cursor():
    source = ScriptedSource([[ev(1)]])
    store = DictStore()
    p = Recorder()
    run(run_until_handled(p, None, cfg(), events=source, checkpoints=store, until_cursor="1"))  # after_cursor=None: live tail
    assert p.loaded == []  # load() is not called on a first run
    assert source.after_cursors == [None]


def test_a_stored_checkpoint_of_another_processor_is_refused():
    store = DictStore()
    store.items["proc"] = Checkpoint("proc", "application/other+json", {"lastEventCursor": "1"})
    source = ScriptedSource([[ev(2)]])
    with pytest.raises(ContentTypeMismatchError) as info:
        run(Runtime(Recorder(), cfg(), events=source, checkpoints=store).run())
    assert info.value.got == "application/other+json" and info.value.want == Recorder.CONTENT_TYPE
    assert source.requests == []


# -- transient errors: retried ----------------------------------------------------------------


def test_transient_subscribe_errors_are_retried_with_backoff():
    source = ScriptedSource([[ev(1), ev(2)]], subscribe_errors=[TransientError("down"), TransientError("still down")])
    store = DictStore()
    p = Recorder()
    result = run(run_until_handled(p, None, cfg(after_cursor="start"), events=source, checkpoints=store, until_cursor="2"))
    assert source.after_cursors == ["start", "start", "start"]
    assert result.stats["reconnects"] == 2
    assert p.handled == ["1", "2"] and store.cursor() == "2"


def test_a_transient_error_subclass_is_retried_too():
    class RateLimited(TransientError):
        pass

    source = ScriptedSource([[ev(1)]], subscribe_errors=[RateLimited("slow down")])
    p = Recorder()
    run(run_until_handled(p, None, cfg(after_cursor="start"), events=source, checkpoints=DictStore(), until_cursor="1"))
    assert len(source.requests) == 2


def test_transient_recv_error_resumes_after_the_last_event_without_loss_or_duplicates():
    source = ScriptedSource(
        [
            [ev(1), ev(2), ev(3), TransientError("connection reset")],
            [ev(4), ev(5), END],  # a clean end: resubscribe after the backoff
            [ev(6)],
        ]
    )
    store = DictStore()
    p = Recorder()
    result = run(run_until_handled(p, None, cfg(after_cursor="start"), events=source, checkpoints=store, until_cursor="6"))
    assert p.handled == ["1", "2", "3", "4", "5", "6"]
    assert source.after_cursors == ["start", "3", "5"]
    assert result.stats["reconnects"] == 2
    assert store.cursor() == "6"


def test_transient_checkpoint_get_errors_are_retried():
    store = DictStore(get_errors=[TransientError("store busy"), TransientError("store busy")])
    source = ScriptedSource([[ev(1)]])
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start"), events=source, checkpoints=store)

    async def main() -> None:
        async with started(rt, p) as s:  # not the kit: its final read would count in store.gets
            await s.wait_handled(1)

    run(main())
    assert store.gets == 3
    assert p.handled == ["1"]


def test_transient_checkpoint_put_errors_are_retried_and_the_state_written_later():
    store = DictStore(put_errors=[TransientError("store busy")] * 3)
    source = ScriptedSource([[ev(1), ev(2), ev(3)]])
    p = Recorder()
    result = run(run_until_handled(p, None, cfg(after_cursor="start"), events=source, checkpoints=store, until_cursor="3"))
    assert result.stats["checkpoints_failed"] == 3
    assert store.cursor() == "3"  # the final state reached the store in the end
    assert p.handled == ["1", "2", "3"]


# -- anything else: fatal, propagated unchanged ---------------------------------------------


def _frames(error: BaseException) -> List[str]:
    return [f.name for f in traceback.extract_tb(error.__traceback__)]


def test_fatal_subscribe_error_propagates_unchanged_with_its_traceback():
    error = Boom("no such tenant")
    source = ScriptedSource([], subscribe_errors=[error])
    p = Recorder()
    with pytest.raises(Boom) as info:
        run(Runtime(p, cfg(after_cursor="start"), events=source, checkpoints=DictStore()).run())
    assert info.value is error
    assert "subscribe" in _frames(info.value)
    assert len(source.requests) == 1  # not retried
    assert p.handled == []


def test_fatal_recv_error_propagates_after_the_handled_events():
    error = ValueError("corrupt frame")
    source = ScriptedSource([[ev(1), ev(2), error]])
    store = DictStore()
    p = Recorder()
    with pytest.raises(ValueError) as info:
        run(Runtime(p, cfg(after_cursor="start"), events=source, checkpoints=store).run())
    assert info.value is error
    assert "recv" in _frames(info.value)
    assert len(source.requests) == 1
    assert p.handled == ["1", "2"]
    # Never ahead of what was handled.
    assert store.cursor() in (None, "1", "2")


def test_fatal_checkpoint_get_error_propagates_before_subscribing():
    error = PermissionError("store says no")
    store = DictStore(get_errors=[error])
    source = ScriptedSource([[ev(1)]])
    with pytest.raises(PermissionError) as info:
        run(Runtime(Recorder(), cfg(), events=source, checkpoints=store).run())
    assert info.value is error
    assert store.gets == 1 and source.requests == []


def test_fatal_checkpoint_put_error_propagates():
    error = Boom("disk full")
    store = DictStore(put_errors=[error])
    source = ScriptedSource([[ev(1), ev(2), ev(3)]])
    p = Recorder()
    with pytest.raises(Boom) as info:
        run(Runtime(p, cfg(after_cursor="start"), events=source, checkpoints=store).run())
    assert info.value is error
    assert len(store.puts) == 1  # not retried
    assert store.items == {}


def test_a_memory_service_processor_error_that_is_not_transient_is_fatal():
    error = MemoryServiceProcessorError("misconfigured backend")
    source = ScriptedSource([], subscribe_errors=[error])
    with pytest.raises(MemoryServiceProcessorError) as info:
        run(Runtime(Recorder(), cfg(), events=source, checkpoints=DictStore()).run())
    assert info.value is error
    assert len(source.requests) == 1


def test_recv_returning_something_else_than_an_envelope_is_a_type_error():
    source = ScriptedSource([[{"event": "appended"}]])
    with pytest.raises(TypeError, match="EventEnvelope"):
        run(Runtime(Recorder(), cfg(), events=source, checkpoints=DictStore()).run())


def test_objects_without_the_protocol_methods_are_refused():
    class NoRecv:
        async def subscribe(self, request: SubscribeRequest) -> object:
            return object()

    with pytest.raises(TypeError, match="recv"):
        run(Runtime(Recorder(), cfg(), events=NoRecv(), checkpoints=DictStore()).run())
    class GetOnly:
        async def get(self, client_id: str) -> Checkpoint:
            raise CheckpointNotFoundError(client_id=client_id)

    with pytest.raises(TypeError, match="put"):
        run(Runtime(Recorder(), cfg(), events=ScriptedSource([]), checkpoints=GetOnly()).run())


# -- stream semantics with a Python source: stale cursor policy, eviction ---------------------


def _stale_source() -> InMemoryEventClient:
    source = InMemoryEventClient([("entry", "appended", {"conversation": "c1"})] * 6)
    source.purge(4)  # 1..4 fall out of retention
    return source


def _stored_at_2() -> InMemoryCheckpointStore:
    store = InMemoryCheckpointStore()
    run(store.put("proc", Recorder.CONTENT_TYPE, {"lastEventCursor": "2", "count": 2}))
    return store


def test_stale_cursor_policy_fail_with_a_python_source():
    source = _stale_source()
    p = Recorder()
    with pytest.raises(StaleCursorError) as info:
        run(Runtime(p, cfg(), events=source, checkpoints=_stored_at_2()).run())
    assert info.value.cursor == "2"
    assert p.handled == []


def test_stale_cursor_policy_restart_with_a_python_source():
    source = _stale_source()
    p = Recorder()
    store = _stored_at_2()
    run(run_until_handled(p, None, cfg(stale_cursor="restart"), events=source, checkpoints=store, until_cursor="6"))
    assert [r.after_cursor for r in source.requests] == ["2", "start"]
    assert p.handled == ["5", "6"]
    assert "invalidate" in p.signal_names()
    assert run(store.get("proc")).value["lastEventCursor"] == "6"


def test_stale_cursor_policy_tail_with_a_python_source():
    source = _stale_source()
    p = Recorder()
    store = _stored_at_2()

    async def main() -> None:
        async with ProcessorRun(p, source, cfg(stale_cursor="tail"), checkpoints=store) as prun:
            await prun.until_handled()  # the stream went live at the tail
            cursor = source.publish("entry", "appended", {"conversation": "c1"})
            await prun.until_handled(cursor)

    run(main())
    assert [r.after_cursor for r in source.requests] == ["2", None]
    assert p.handled == ["7"]


def test_eviction_resumes_immediately_not_after_the_backoff():
    """With a one-hour backoff the run could only finish if the resubscribe is immediate."""
    source = ScriptedSource([[ev(1), ev(2), signal("evicted", reason="slow consumer"), END], [ev(3)]])
    p = Recorder()
    config = cfg(after_cursor="start", reconnect_min=3600.0, reconnect_max=3600.0)
    run(run_until_handled(p, None, config, events=source, checkpoints=DictStore(), until_cursor="3"))
    assert source.after_cursors == ["start", "2"]
    assert p.handled == ["1", "2", "3"]


# ----------------------------------------------------------------------------------------------
# Mixing: gRPC events with a local checkpoint store (no admin account needed)
# ----------------------------------------------------------------------------------------------


def test_user_key_with_a_file_store_needs_no_admin_checkpoint_service(auth_server, tmp_path):
    auth_server.publish_many([("entry", "appended", {"conversation": "c1"})] * 3)
    store = checkpoint_store_from_spec(f"file:{tmp_path}")
    p = Recorder()
    run(run_until_handled(p, auth_server, cfg(scope="user", after_cursor="start"), api_key=USER_KEY, checkpoints=store,
                          until_cursor="3"))
    assert p.handled == ["1", "2", "3"]
    assert run(store.get("proc")).value["lastEventCursor"] == "3"
    methods = {r.method for r in auth_server.requests()}
    assert not any("Checkpoint" in m for m in methods), methods
    assert auth_server.checkpoint("proc") is None

    # A restart resumes from the file.
    auth_server.publish("entry", "appended", {"conversation": "c1"})
    p2 = Recorder()
    run(run_until_handled(p2, auth_server, cfg(scope="user", after_cursor="start"), api_key=USER_KEY,
                          checkpoints=FileCheckpointStore(tmp_path), until_cursor="4"))
    assert p2.handled == ["4"]


def test_python_events_with_the_grpc_checkpoint_service(server):
    source = ScriptedSource([[ev(1), ev(2)]])
    p = Recorder()
    # the server as source: its gRPC checkpoint service stores the checkpoints
    run(run_until_handled(p, server, cfg(after_cursor="start"), events=source, until_cursor="2"))
    assert server.checkpoint("proc").value["lastEventCursor"] == "2"


# ----------------------------------------------------------------------------------------------
# checkpoint_store_from_spec (the CLI's --checkpoint-store)
# ----------------------------------------------------------------------------------------------


def test_store_spec_grpc(auth_server):
    options = ConnectionOptions(auth_server.endpoint, api_key=ADMIN_KEY)
    for spec in ("grpc", "GRPC", " grpc ", None, ""):
        store = checkpoint_store_from_spec(spec, options)
        assert isinstance(store, GrpcCheckpointClient)
    run(store.put("proc", "t/x", {"a": 1}))
    assert auth_server.checkpoint("proc").value == {"a": 1}
    assert isinstance(checkpoint_store_from_spec("grpc", auth_server.endpoint), GrpcCheckpointClient)
    with pytest.raises(ConfigurationError, match="endpoint"):
        checkpoint_store_from_spec("grpc", None)


def test_store_spec_memory_and_file(tmp_path, monkeypatch):
    assert isinstance(checkpoint_store_from_spec("memory"), InMemoryCheckpointStore)
    assert isinstance(checkpoint_store_from_spec("Memory", None), InMemoryCheckpointStore)
    store = checkpoint_store_from_spec(f"file:{tmp_path / 'cp'}")
    assert isinstance(store, FileCheckpointStore) and store.directory == tmp_path / "cp"
    assert (tmp_path / "cp").is_dir()
    assert checkpoint_store_from_spec(f"file://{tmp_path}").directory == tmp_path  # type: ignore[attr-defined]
    assert checkpoint_store_from_spec(f"FILE:{tmp_path}").directory == tmp_path  # type: ignore[attr-defined]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert checkpoint_store_from_spec("file:~/state").directory == tmp_path / "state"  # type: ignore[attr-defined]
    monkeypatch.chdir(tmp_path)
    assert checkpoint_store_from_spec("file:./rel").directory == Path("./rel")  # type: ignore[attr-defined]
    assert (tmp_path / "rel").is_dir()


@pytest.mark.parametrize("spec", ["file:", "file:  ", "file://relative", "redis://x", "memory:x", "grpc:x", "files:/x", "s3"])
def test_store_spec_errors_name_the_accepted_forms(spec):
    with pytest.raises(ConfigurationError) as info:
        checkpoint_store_from_spec(spec, "localhost:1")
    assert isinstance(info.value, ValueError)
    text = str(info.value)
    assert "file:" in text


def test_store_spec_file_path_that_is_a_file(tmp_path):
    f = tmp_path / "plain"
    f.write_text("x")
    with pytest.raises(ConfigurationError, match="not a directory"):
        checkpoint_store_from_spec(f"file:{f}")


def test_a_pending_recv_is_kept_alive_while_the_runtime_waits_on_it():
    import gc

    class Stream:
        def __init__(self) -> None:
            self.sent = False

        async def recv(self) -> EventEnvelope:
            if not self.sent:
                self.sent = True
                return ev(1)
            await asyncio.get_running_loop().create_future()  # only this frame holds it
            raise AssertionError("unreachable")

    class Source:
        async def subscribe(self, request: SubscribeRequest) -> Stream:
            return Stream()

    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start"), events=Source(), checkpoints=DictStore())

    async def main() -> None:
        task = asyncio.ensure_future(rt.run())
        reached = asyncio.get_running_loop().create_future()
        original = p.handle

        def handle(event: EventEnvelope) -> None:
            original(event)
            reached.set_result(None)

        p.handle = handle  # type: ignore[method-assign]
        await reached
        for _ in range(3):  # let the runtime ask for the next event, then collect garbage
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0.05)  # give a (wrong) failure the chance to surface
        assert not task.done(), "the run ended on its own"
        rt.stop()
        await task

    run(main())
    assert p.handled == ["1"]
