"""The gRPC clients on their own (GrpcEventClient / GrpcCheckpointClient), the client protocols,
the built-in checkpoint stores and the event envelope -- against a real LocalMemoryService."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, List

import pytest

from memory_service_processor import (
    Checkpoint,
    CheckpointClient,
    CheckpointNotFoundError,
    ConnectionOptions,
    EventClient,
    EventEnvelope,
    EventStream,
    FileCheckpointStore,
    GrpcCheckpointClient,
    GrpcEventClient,
    InMemoryCheckpointStore,
    ServerStatusError,
    SubscribeRequest,
)

from memory_service_processor.testing import run_until_handled

from conftest import ADMIN_KEY, BEARER, USER_KEY, Recorder, cfg, publish_entries, run
from test_runtime import NESTED

pytestmark = pytest.mark.timeout(60)


def test_event_client_subscribe_and_async_for(server):
    published = publish_entries(server, 5)

    async def main() -> List[EventEnvelope]:
        client = GrpcEventClient(server.endpoint)
        assert isinstance(client, EventClient)
        stream = await client.subscribe(SubscribeRequest(kinds=["entry"], after_cursor="start"))
        assert isinstance(stream, EventStream)
        got: List[EventEnvelope] = []
        async for event in stream:
            got.append(event)
            if event.kind == "stream" and event.event == "phase" and event.data == {"phase": "live"}:
                break
        server.publish("entry", "appended", {"conversation": "c1", "entry": "live"})
        got.append(await stream.recv())
        stream.close()
        return got

    got = run(main())
    assert [(e.kind, e.event) for e in got[:1]] == [("stream", "phase")]
    assert got[0].data == {"phase": "replay"}
    business = [e for e in got if e.kind != "stream"]
    assert [e.cursor for e in business] == published + ["6"]
    assert all(e.event == "appended" for e in business)
    assert business[0].data == {"conversation": "c1", "entry": "e0"}
    assert business[-1].data["entry"] == "live"
    for e in got:
        assert e.time.tzinfo is not None and e.time.utcoffset() == dt.timedelta(0)


def test_event_stream_ends_with_stop_async_iteration_on_clean_end(server):
    """A stale cursor gets invalidate and then a clean end: the async for finishes."""
    publish_entries(server, 5)
    server.purge(3)

    async def main() -> List[EventEnvelope]:
        stream = await GrpcEventClient(server.endpoint).subscribe(SubscribeRequest(after_cursor="1"))
        got = [e async for e in stream]
        with pytest.raises(StopAsyncIteration):
            await stream.recv()
        return got

    got = run(main())
    assert [(e.kind, e.event) for e in got] == [("stream", "phase"), ("stream", "invalidate")]
    assert got[1].data == {"reason": "cursor beyond retention window"}


def test_event_client_filters_and_metadata(auth_server):
    server = auth_server
    server.publish_many(
        [
            ("entry", "appended", {"conversation": "c1", "entry": "a", "entry_role": "USER"}),
            ("entry", "appended", {"conversation": "c1", "entry": "b", "entry_role": "AI"}),
            ("conversation", "created", {"conversation": "c1"}),
        ]
    )

    async def main() -> List[EventEnvelope]:
        client = GrpcEventClient(server.endpoint, api_key=ADMIN_KEY, bearer_token=BEARER, client_id="standalone")
        stream = await client.subscribe(
            SubscribeRequest(kinds=["entry"], entry_roles=["AI"], after_cursor="start", justification="audit")
        )
        got = []
        async for e in stream:
            got.append(e)
            if e.event == "phase" and e.data == {"phase": "live"}:
                break
        stream.close()
        return got

    got = run(main())
    assert [e.cursor for e in got if e.kind != "stream"] == ["2"]
    md = [r.metadata for r in server.requests() if r.method == "SubscribeEvents"][-1]
    assert md == {"x-api-key": ADMIN_KEY, "authorization": f"Bearer {BEARER}", "x-client-id": "standalone"}


def test_event_client_fatal_status_is_server_status_error(auth_server):
    async def main() -> None:
        client = GrpcEventClient(auth_server.endpoint, api_key=USER_KEY)
        stream = await client.subscribe(SubscribeRequest(scope="admin", after_cursor="start"))
        await stream.recv()

    with pytest.raises(ServerStatusError) as info:
        run(main())
    assert info.value.code == "PERMISSION_DENIED"
    assert "PERMISSION_DENIED" in str(info.value)
    assert USER_KEY not in str(info.value)


def test_event_client_user_scope_is_allowed_for_a_user_key(auth_server):
    publish_entries(auth_server, 1)

    async def main() -> EventEnvelope:
        client = GrpcEventClient(auth_server.endpoint, api_key=USER_KEY)
        stream = await client.subscribe(SubscribeRequest(scope="user", after_cursor="start"))
        first = await stream.recv()
        second = await stream.recv()
        stream.close()
        return second if first.kind == "stream" else first

    assert run(main()).cursor == "1"


def test_checkpoint_client_get_missing_raises_not_found(server):
    async def main() -> None:
        client = GrpcCheckpointClient(server.endpoint)
        assert isinstance(client, CheckpointClient)
        await client.get("nobody")

    with pytest.raises(CheckpointNotFoundError) as info:
        run(main())
    assert isinstance(info.value, LookupError)


def test_checkpoint_client_put_get_round_trip_nested_value(server):
    async def main() -> Any:
        client = GrpcCheckpointClient(server.endpoint)
        put = await client.put("cp-client", "application/x-test+json", NESTED)
        got = await client.get("cp-client")
        return put, got

    put, got = run(main())
    for cp in (put, got):
        assert isinstance(cp, Checkpoint)
        assert cp.client_id == "cp-client"
        assert cp.content_type == "application/x-test+json"
        assert cp.value == NESTED
        assert cp.updated_at is not None and cp.updated_at.tzinfo is not None
    assert server.checkpoint("cp-client").value == NESTED


@pytest.mark.parametrize("value", [None, 1.5, "text", [1, "two", None], True, {}], ids=repr)
def test_checkpoint_client_accepts_any_json_value(server, value):
    async def main() -> Any:
        client = GrpcCheckpointClient(server.endpoint)
        await client.put("any", "t", value)
        return (await client.get("any")).value

    assert run(main()) == value


def test_checkpoint_client_refuses_non_json_values(server):
    async def main() -> None:
        await GrpcCheckpointClient(server.endpoint).put("x", "t", {"nan": float("nan")})

    with pytest.raises(ValueError):
        run(main())

    async def main2() -> None:
        await GrpcCheckpointClient(server.endpoint).put("x", "t", {"obj": object()})

    with pytest.raises(TypeError):
        run(main2())


def test_checkpoint_client_permission_denied_for_user_key(auth_server):
    async def main() -> None:
        await GrpcCheckpointClient(auth_server.endpoint, api_key=USER_KEY).get("x")

    with pytest.raises(ServerStatusError) as info:
        run(main())
    assert info.value.code == "PERMISSION_DENIED"
    assert info.value.method.endswith("GetCheckpoint")


def test_checkpoint_client_with_connection_options(auth_server):
    opts = ConnectionOptions(auth_server.endpoint, api_key=ADMIN_KEY, client_id="opt")

    async def main() -> Any:
        client = GrpcCheckpointClient(opts)
        await client.put("opt", "t", {"a": 1})
        return await client.get("opt")

    assert run(main()).value == {"a": 1}
    md = [r.metadata for r in auth_server.requests() if r.method == "PutCheckpoint"][-1]
    assert md == {"x-api-key": ADMIN_KEY, "x-client-id": "opt"}


def test_clients_transient_error_when_unreachable(server):
    from memory_service_processor import TransientError

    port = server.port
    server.stop_sync()

    async def main() -> None:
        await GrpcCheckpointClient(f"127.0.0.1:{port}", connect_timeout=2.0).get("x")

    with pytest.raises(TransientError):
        run(main())
    server.start_sync()


def test_runtime_accepts_standalone_clients_as_injected(server):
    publish_entries(server, 3)
    p = Recorder()
    run(run_until_handled(p, None, cfg(after_cursor="start"), events=GrpcEventClient(server.endpoint),
                          checkpoints=GrpcCheckpointClient(server.endpoint)))
    assert p.handled == ["1", "2", "3"]
    assert server.checkpoint("proc").value["lastEventCursor"] == "3"


@pytest.mark.parametrize("store_kind", ["memory", "file"])
def test_runtime_with_builtin_checkpoint_stores(server, tmp_path, store_kind):
    store = InMemoryCheckpointStore() if store_kind == "memory" else FileCheckpointStore(tmp_path)
    publish_entries(server, 4)
    p = Recorder()
    first = run(run_until_handled(p, server, cfg(after_cursor="start"), checkpoints=store))
    assert p.handled == ["1", "2", "3", "4"]
    cp = run(store.get("proc"))
    assert cp.value == {"lastEventCursor": "4", "count": 4}
    assert first.checkpoint is not None and first.checkpoint.value == cp.value
    assert server.checkpoint("proc") is None  # the server's store was not used

    publish_entries(server, 2)
    q = Recorder()
    run(run_until_handled(q, server, cfg(after_cursor="start"), checkpoints=store))
    assert q.handled == ["5", "6"]
    if store_kind == "file":
        assert FileCheckpointStore(tmp_path).path_for("proc").exists()
        assert run(FileCheckpointStore(tmp_path).get("proc")).value["lastEventCursor"] == "6"


def test_envelope_data_that_is_not_json_raises_on_access_only(server):
    bad = server.publish("entry", "appended", b"\xff\xfenot json{")
    good = server.publish("entry", "appended", {"ok": True})
    results: List[Any] = []

    class Probe(Recorder):
        def handle(self, event: EventEnvelope) -> None:
            raw = event.raw_data
            try:
                results.append(("data", event.data, raw))
            except ValueError as e:
                results.append(("error", str(e), raw))
            Recorder.handle(self, event)

    p = Probe()
    run(run_until_handled(p, server, cfg(after_cursor="start")))
    assert p.handled == [bad, good]
    kind, message, raw = results[0]
    assert kind == "error"
    assert bad in message and "cursor" in message
    assert raw == b"\xff\xfenot json{"
    assert results[1] == ("data", {"ok": True}, b'{"ok":true}')


def test_envelope_constructed_by_user_code():
    e = EventEnvelope("appended", "entry", b'{"a": [1, 2]}', cursor="42")
    assert (e.event, e.kind, e.cursor, e.raw_data, e.data) == ("appended", "entry", "42", b'{"a": [1, 2]}', {"a": [1, 2]})
    assert e.time.tzinfo is not None
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    e2 = EventEnvelope(event="x", kind="stream", raw_data=b"nope", time=when)
    assert e2.cursor is None and e2.time == when
    with pytest.raises(ValueError):
        e2.data
    with pytest.raises(AttributeError):
        e.cursor = "1"  # type: ignore[misc]


def test_checkpoint_dataclass_is_immutable():
    cp = Checkpoint("c", "t", {"a": 1})
    assert cp.updated_at is None
    with pytest.raises(Exception):
        cp.value = {}  # type: ignore[misc]
    with pytest.raises(ValueError):
        Checkpoint("c", "t", {}, dt.datetime(2024, 1, 1))  # naive datetime


def test_custom_python_clients_drive_the_runtime():
    """Any objects following the client protocols drive the runtime (docs/semantics.md#1-the-run)."""

    class ListStream:
        def __init__(self, events: List[EventEnvelope]) -> None:
            self.events = list(events)
            self.closed = asyncio.Event()

        async def recv(self) -> EventEnvelope:
            if self.events:
                return self.events.pop(0)
            await self.closed.wait()  # stay open (live) until the test ends
            raise StopAsyncIteration

    class ListSource:
        def __init__(self) -> None:
            self.requests: List[SubscribeRequest] = []

        async def subscribe(self, request: SubscribeRequest) -> ListStream:
            self.requests.append(request)
            start = 0 if request.after_cursor in (None, "start") else int(request.after_cursor)
            evs = [EventEnvelope("phase", "stream", b'{"phase":"live"}')]
            evs += [EventEnvelope("appended", "entry", b"{}", cursor=str(i)) for i in range(start + 1, 6)]
            return ListStream(evs)

    store = InMemoryCheckpointStore()
    source = ListSource()
    p = Recorder()
    # this source sends the live phase first: wait for the last cursor instead
    run(run_until_handled(p, None, cfg(after_cursor="start", kinds=["entry"]), events=source, checkpoints=store,
                          until_cursor="5"))
    assert p.handled == ["1", "2", "3", "4", "5"]
    assert source.requests[0].after_cursor == "start"
    assert list(source.requests[0].kinds) == ["entry"]
    assert source.requests[0].detail == "full"
    assert run(store.get("proc")).value["lastEventCursor"] == "5"
