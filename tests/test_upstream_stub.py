"""The runtime and the ``payload`` helpers against an independent grpcio Memory Service stub
serving hand-written payloads, in both detail modes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any, Dict, Iterator, List, Optional

import grpc
import pytest

from memory_service_processor import (
    Config,
    EventEnvelope,
    EventProcessor,
    GrpcCheckpointClient,
    GrpcEventClient,
    Runtime,
    StaleCursorError,
    SubscribeRequest,
    payload,
)

from upstream_stub import C1, G1, SCENARIO, SCENARIO_CURSORS, SCENARIO_ROLES, StubEvent, UpstreamStub


class RoleCounter(EventProcessor):
    """Counts entries per role and per conversation with the ``payload`` helpers."""

    CONTENT_TYPE = "application/vnd.test.role-counter+json;v=1"

    def __init__(self) -> None:
        self.by_role: Dict[str, int] = {}
        self.by_conversation: Dict[str, int] = {}
        self.texts: List[str] = []
        self.keys: List[Optional[str]] = []
        self.handled: List[Optional[str]] = []
        self.last_event_cursor = None

    def load(self, state: Any) -> None:
        super().load(state)
        state = state if isinstance(state, dict) else {}
        self.by_role = {k: int(v) for k, v in (state.get("byRole") or {}).items()}
        self.by_conversation = {k: int(v) for k, v in (state.get("byConversation") or {}).items()}

    def handle(self, event: EventEnvelope) -> None:
        self.keys.append(payload.default_key(event))
        self.handled.append(event.cursor)
        if event.kind == "entry":
            role = payload.role(event) or "unknown"
            self.by_role[role] = self.by_role.get(role, 0) + 1
            conv = payload.conversation_id(event) or "?"
            self.by_conversation[conv] = self.by_conversation.get(conv, 0) + 1
            text = payload.text(event)
            if text is not None:
                self.texts.append(text)
        super().handle(event)

    def snapshot(self) -> Dict[str, Any]:
        return {
            "byRole": dict(self.by_role),
            "byConversation": dict(self.by_conversation),
            "lastEventCursor": self.last_event_cursor,
        }


class SummaryEvents:
    """An event client that asks for summary payloads (the runtime asks for ``full``)."""

    def __init__(self, endpoint: str) -> None:
        self.inner = GrpcEventClient(endpoint)

    async def subscribe(self, request: SubscribeRequest) -> Any:
        return await self.inner.subscribe(dataclasses.replace(request, detail="summary"))


def make_runtime(processor: Any, stub: UpstreamStub, mode: str, **config: Any) -> Runtime:
    config.setdefault("after_cursor", "start")
    cfg = Config(client_id="roles", reconnect_min=0.02, reconnect_max=0.2, checkpoint_interval=30.0, **config)
    if mode == "full":
        return Runtime(processor, cfg, endpoint=stub.endpoint)
    return Runtime(processor, cfg, events=SummaryEvents(stub.endpoint), checkpoints=GrpcCheckpointClient(stub.endpoint))


async def run_until(runtime: Runtime, done: Any, timeout: float = 20.0) -> None:
    """Runs ``runtime`` until ``done()`` holds, then stops it and awaits the end of the run."""
    task = asyncio.ensure_future(runtime.run())
    deadline = time.monotonic() + timeout
    try:
        while not done():
            if task.done():
                task.result()  # raises the run's error
                raise AssertionError("the run ended early")
            assert time.monotonic() < deadline, "timed out waiting for the processor"
            await asyncio.sleep(0.01)
    finally:
        runtime.stop()
        await asyncio.wait_for(asyncio.shield(task), 20)


@pytest.fixture
def stub() -> Iterator[UpstreamStub]:
    with UpstreamStub(events=SCENARIO) as s:
        yield s


@pytest.mark.parametrize("mode", ["summary", "full"])
def test_role_counts_and_checkpoint_in_both_modes(stub: UpstreamStub, mode: str) -> None:
    proc = RoleCounter()
    last = SCENARIO_CURSORS[mode][-1]
    asyncio.run(run_until(make_runtime(proc, stub, mode), lambda: proc.last_event_cursor == last))

    assert stub.requests[0]["detail"] == mode
    assert proc.handled == SCENARIO_CURSORS[mode]
    assert proc.by_role == SCENARIO_ROLES[mode]
    stored = stub.checkpoint_value("roles")
    assert stored["lastEventCursor"] == last
    assert stored["byRole"] == SCENARIO_ROLES[mode]
    if mode == "full":
        assert proc.by_conversation == {C1: 5}
        assert proc.texts == ["Hello", "Hi! Where to?", "Rome,\nin May", "(attachment)"]
        # conversation events are keyed by the entity's id, memberships by the group
        assert proc.keys == [C1, C1, C1, C1, C1, G1, C1, C1, C1, C1, G1]
    else:
        assert proc.by_conversation == {C1: 5, "7b1d6c2e-4f0a-4c1e-9a55-1d2f3e4a5b02": 2}
        assert proc.texts == []
        assert proc.keys.count(G1) == 2 and None not in proc.keys


@pytest.mark.parametrize("mode", ["summary", "full"])
def test_restart_resumes_from_the_checkpoint_and_sees_live_events(stub: UpstreamStub, mode: str) -> None:
    first = RoleCounter()
    last = SCENARIO_CURSORS[mode][-1]
    asyncio.run(run_until(make_runtime(first, stub, mode), lambda: first.last_event_cursor == last))

    later = StubEvent(
        "entry",
        "created",
        {"conversation": C1, "conversation_group": G1, "entry": "6a90f1d2-3b4c-4d5e-8f6a-7b8c9d0e1fff",
         "entry_channel": "history", "entry_content_type": "history", "entry_role": "AI"},
        {"id": "6a90f1d2-3b4c-4d5e-8f6a-7b8c9d0e1fff", "conversationId": C1, "userId": "alice",
         "channel": "history", "epoch": 1, "seq": 7, "contentType": "history",
         "content": [{"role": "AI", "text": "May is lovely."}],
         "createdAt": "2026-05-19T12:01:00.000Z", "conversationGroupId": G1},
    )
    second = RoleCounter()

    async def scenario() -> None:
        runtime = make_runtime(second, stub, mode)
        published: List[str] = []

        def live_then_publish() -> bool:
            if not published and runtime.stats()["phase"] == "live":
                published.extend(stub.publish(later))
            return second.last_event_cursor == "18"

        await run_until(runtime, live_then_publish)

    asyncio.run(scenario())
    # the second run replayed nothing already counted and continued the counts
    assert stub.requests[-1]["after_cursor"] == last
    assert second.handled == ["18"]
    expected = dict(SCENARIO_ROLES[mode])
    expected["AI"] += 1
    assert second.by_role == expected
    assert stub.checkpoint_value("roles")["byRole"] == expected
    if mode == "full":
        assert second.texts == ["May is lovely."]


def test_a_non_numeric_cursor_is_stale(stub: UpstreamStub) -> None:
    proc = RoleCounter()
    runtime = make_runtime(proc, stub, "full", after_cursor="not-a-cursor")
    with pytest.raises(StaleCursorError):
        asyncio.run(asyncio.wait_for(runtime.run(), 20))
    assert proc.handled == []


def _raw_subscribe(stub: UpstreamStub, **fields: Any) -> List[Any]:
    """The notifications of a replay, read with plain grpcio up to the live phase."""
    channel = grpc.insecure_channel(stub.endpoint)
    try:
        call = channel.unary_stream(
            "/memory.v1.EventStreamService/SubscribeEvents",
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=stub._pb.EventNotification.FromString,
        )
        out = []
        stream = call(stub._pb.SubscribeEventsRequest(**fields), timeout=10)
        for n in stream:
            out.append(n)
            if n.kind == "stream" and json.loads(n.data) == {"phase": "live"}:
                stream.cancel()
                break
        return out
    finally:
        channel.close()


def test_stub_filters_and_signals(stub: UpstreamStub) -> None:
    notes = _raw_subscribe(stub, after_cursor="start", detail="full", kinds=["entry"], entry_roles=["user"])
    assert [(n.kind, n.event, n.cursor or None) for n in notes] == [
        ("stream", "phase", None),
        ("entry", "created", "2"),
        ("entry", "created", "9"),
        ("stream", "phase", None),
    ]
    assert json.loads(notes[1].data)["content"] == [{"role": "USER", "text": "Hello"}]
    notes = _raw_subscribe(stub, after_cursor="1", entry_channels=["CONTEXT"], kinds=["entry"])
    assert [n.cursor for n in notes if n.kind == "entry"] == ["6"]
    notes = _raw_subscribe(stub, after_cursor="2", entry_content_types=["IMAGE/PNG", "image/png"], kinds=["entry"])
    assert [n.cursor for n in notes if n.kind == "entry"] == ["10"]
    with pytest.raises(grpc.RpcError) as err:
        _raw_subscribe(stub, detail="everything")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
