"""Interop: the shipped examples against an independent Memory Service stub (``upstream_stub``,
plain grpcio serving hand-written payloads), in both detail modes, and ``LocalMemoryService``'s
scenario API against the same hand-written payloads.

Nothing here trusts our own server: if ``LocalMemoryService`` drifted from what a real server
sends, the examples would still have to count right against the stub, and the drift test
below would fail."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, List, Tuple

import pytest

from conftest import SummaryEvents, run
from conftest import load_example as _load
from memory_service_processor import Config, GrpcCheckpointClient, GrpcEventClient, SubscribeRequest
from memory_service_processor.testing import LocalMemoryService, run_until_handled
from upstream_stub import C1, C2, G1, SCENARIO, SCENARIO_CURSORS, UpstreamStub

MODES = pytest.mark.parametrize("mode", ["full", "summary"])


def load_example(name: str) -> ModuleType:
    return _load(name, prefix="upstream_example")








@pytest.fixture
def stub() -> Iterator[UpstreamStub]:
    with UpstreamStub(events=SCENARIO) as s:
        yield s


def run_on_stub(processor: Any, stub: UpstreamStub, mode: str, client_id: str, **config: Any) -> Any:
    """Runs ``processor`` against the stub until it has handled the scenario's last event it
    is sent, then stops it gracefully; returns the stored checkpoint value."""
    events = GrpcEventClient(stub.endpoint) if mode == "full" else SummaryEvents(stub.endpoint)
    cfg = Config(client_id=client_id, after_cursor="start", reconnect_min=0.02, reconnect_max=0.2,
                 checkpoint_interval=30.0, **config)
    last = SCENARIO_CURSORS[mode][-1]
    run(run_until_handled(processor, None, cfg, until_cursor=last, events=events,
                          checkpoints=GrpcCheckpointClient(stub.endpoint)))
    assert stub.requests[-1]["detail"] == mode
    value = stub.checkpoint_value(client_id)
    assert value["lastEventCursor"] == last
    return value


# -- the examples on hand-written upstream payloads ------------------------------------------

#: History entries per role: the context entry is filtered out by the default channels, and in
#: full mode the hard-deleted C2's entries are not delivered; content without a role is
#: "unknown" (the image, and the item without a role).
ENTRY_COUNTS = {
    "full": (5, {"USER": 2, "AI": 1, "unknown": 2}),
    "summary": (7, {"USER": 3, "AI": 1, "unknown": 3}),
}


@MODES
def test_entry_counter_on_upstream_payloads(stub: UpstreamStub, mode: str) -> None:
    counter = load_example("entry_counter").EntryCounter()
    value = run_on_stub(counter, stub, mode, "entry-counter")
    count, by_role = ENTRY_COUNTS[mode]
    assert (counter.count, counter.by_role) == (count, by_role)
    assert (value["count"], value["byRole"]) == (count, by_role)


@MODES
def test_turn_counter_on_upstream_payloads(stub: UpstreamStub, mode: str) -> None:
    counter = load_example("turn_counter").TurnCounter()
    run_on_stub(counter, stub, mode, "turn-counter", entry_channels=("history", "context"))
    c1 = counter.conversations[C1]
    # USER: "Hello" and "Rome, in May"; assistant: "Hi!", the image and the item without a role
    assert (c1.user_turns, c1.assistant_turns, c1.notes, c1.responses) == (2, 3, 1, 1)
    assert c1.group == G1 and not c1.deleted and not c1.archived
    assert counter.members == {G1: []}  # bob joined, then left
    if mode == "full":
        assert c1.title == "Trip to Rome"
        assert set(counter.conversations) == {C1}  # C2 was hard-deleted: none of its events is sent
        assert counter.events_seen == len(SCENARIO_CURSORS["full"]) + 1  # and the context entry
    else:
        assert c1.title == ""  # summaries carry no title
        c2 = counter.conversations[C2]
        assert (c2.user_turns, c2.assistant_turns, c2.archived, c2.deleted) == (1, 1, True, True)
        assert counter.busiest(5) == [c1]
        assert counter.events_seen == len(SCENARIO)  # nothing filtered out


@MODES
def test_sqlite_projection_on_upstream_payloads(stub: UpstreamStub, mode: str, tmp_path: Path) -> None:
    projection = load_example("sqlite_projection").SqliteProjection(str(tmp_path / "p.sqlite3"))
    run_on_stub(projection, stub, mode, "sqlite")
    rows = projection.db.execute(
        "SELECT cursor, conversation, role, channel, text, created_at FROM entries ORDER BY CAST(cursor AS INTEGER)"
    ).fetchall()
    projection.close()
    if mode == "full":
        assert rows == [
            ("2", C1, "USER", "history", "Hello", "2026-05-19T12:00:01.000Z"),
            ("4", C1, "AI", "history", "Hi! Where to?", "2026-05-19T12:00:02.000Z"),
            ("9", C1, "USER", "history", "Rome,\nin May", "2026-05-19T12:00:04.000Z"),
            ("10", C1, None, "history", None, "2026-05-19T12:00:05.000Z"),
            ("11", C1, None, "history", "(attachment)", "2026-05-19T12:00:00.000Z"),
        ]
    else:
        assert [(c, conv, role, ch) for c, conv, role, ch, _, _ in rows] == [
            ("2", C1, "USER", "history"), ("4", C1, "AI", "history"), ("9", C1, "USER", "history"),
            ("10", C1, None, "history"), ("11", C1, None, "history"),
            ("13", C2, "USER", "history"), ("14", C2, None, "history"),
        ]
        assert all(text is None and at is None for *_, text, at in rows)
    with sqlite3.connect(str(tmp_path / "p.sqlite3")) as db:
        stats = dict((c, (n, u)) for c, n, u in db.execute("SELECT * FROM conversation_stats"))
    assert stats[C1] == (5, 2)


# -- LocalMemoryService's scenario API sends what the stub's hand-written payloads say --------

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def shape(value: Any) -> Any:
    """``value`` with UUIDs and timestamps replaced by placeholders (they differ by design)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, str) and _UUID.match(value):
        return "<uuid>"
    if isinstance(value, str) and _TIME.match(value):
        return "<time>"
    return value


def same_scenario(server: LocalMemoryService) -> None:
    """The stub's scenario, made with the scenario API (cursors 1..17 in the same order)."""
    agent = {"client_id": "agent-a", "agent_id": "a1"}
    c1 = server.create_conversation(owner="alice", title="Trip", agent_id="a1")
    server.append_entry(c1, [{"role": "USER", "text": "Hello"}], **agent)
    server.start_response(c1)
    server.append_entry(c1, [{"role": "AI", "text": "Hi! Where to?"}], **agent)
    server.finish_response(c1, "completed")
    server.append_entry(c1, [{"role": "AI", "text": "memory"}], channel="context", content_type="LC4J", **agent)
    server.add_member(c1, "bob", "writer")
    server.update_conversation(c1, title="Trip to Rome", metadata={"topic": "travel"})
    server.append_entry(c1, [{"role": "USER", "text": "Rome,"}, {"role": "USER", "text": "in May"}], **agent)
    server.append_entry(c1, b"\x89PNG\r\n\x1a\n", content_type="image/png", **agent)
    server.append_entry(c1, [{"text": "(attachment)"}], **agent)
    c2 = server.create_conversation(owner="bob")
    server.append_entry(c2, [{"role": "USER", "text": "hi"}])
    server.append_entry(c2, b"\x00", content_type="application/octet-stream")
    server.archive_conversation(c2)
    server.delete_conversation(c2)
    server.remove_member(c1, "bob")
    assert server.last_cursor == "17"


async def replay(endpoint: str, mode: str, **filters: Any) -> List[Tuple[str, str, str, Any]]:
    stream = await GrpcEventClient(endpoint).subscribe(SubscribeRequest(after_cursor="start", detail=mode, **filters))
    got: List[Tuple[str, str, str, Any]] = []
    while True:
        e = await asyncio.wait_for(stream.recv(), 10)
        if e.kind == "stream":
            if e.data == {"phase": "live"}:
                return got
            continue
        got.append((e.kind, e.event, e.cursor, shape(e.data)))


@MODES
@pytest.mark.parametrize("channels", [(), ("history", "context")])
def test_the_scenario_api_sends_the_hand_written_payloads(stub: UpstreamStub, mode: str, channels: Tuple[str, ...]) -> None:
    async def both() -> Tuple[Any, Any]:
        async with LocalMemoryService() as server:
            same_scenario(server)
            ours = await replay(server.endpoint, mode, entry_channels=channels)
        theirs = await replay(stub.endpoint, mode, entry_channels=channels)
        return ours, theirs

    ours, theirs = run(both(), timeout=30)
    assert len(theirs) >= 11
    # event by event, for a readable failure
    for mine, upstream in zip(ours, theirs):
        assert mine == upstream
    assert len(ours) == len(theirs)
