"""LocalMemoryService's scenario API: the state a Memory Service keeps and the events it emits,
per detail mode, as a processor (and the runtime, which asks for ``detail="full"``) sees them."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any, Dict, List, Tuple

import pytest

from conftest import run
from memory_service_processor import EventProcessor, GrpcEventClient, SubscribeRequest, payload
from memory_service_processor.testing import LocalMemoryService, run_until_handled
from memory_service_processor.testing.events import Activity

pytestmark = pytest.mark.timeout(60)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def replay(server: LocalMemoryService, detail: str, **filters: Any) -> List[Tuple[str, str, str, Any]]:
    """``(kind, event, cursor, data)`` from the start up to the live phase."""
    stream = await GrpcEventClient(server.endpoint).subscribe(SubscribeRequest(after_cursor="start", detail=detail, **filters))
    got = []
    while True:
        e = await asyncio.wait_for(stream.recv(), 10)
        if e.kind == "stream":
            if e.data == {"phase": "live"}:
                return got
            continue
        got.append((e.kind, e.event, e.cursor, e.data))


def test_ids_are_uuids_and_payloads_follow_the_detail_mode() -> None:
    async def main() -> None:
        async with LocalMemoryService() as server:
            conv = server.create_conversation(owner="alice", title="Trip", metadata={"topic": "travel"})
            entry = server.append_entry(conv, [{"role": "USER", "text": "Hello"}], client_id="agent-a")
            assert UUID.match(conv) and UUID.match(entry) and conv != entry
            assert server.last_cursor == "2"
            summary = await replay(server, "summary")
            full = await replay(server, "full")
        (_, _, _, c), (_, event, cursor, e) = summary
        group = c["conversation_group"]
        assert UUID.match(group)
        assert c == {"conversation": conv, "conversation_group": group}
        assert (event, cursor) == ("created", "2")
        assert e == {"conversation": conv, "conversation_group": group, "entry": entry, "entry_channel": "history",
                     "entry_content_type": "history", "entry_role": "USER"}
        (_, _, _, fc), (_, _, _, fe) = full
        assert {k: fc[k] for k in ("id", "title", "ownerUserId", "metadata", "accessLevel", "conversationGroupId")} == {
            "id": conv, "title": "Trip", "ownerUserId": "alice", "metadata": {"topic": "travel"},
            "accessLevel": "owner", "conversationGroupId": group,
        }
        assert TIME.match(fc["createdAt"]) and TIME.match(fc["updatedAt"]) and "archivedAt" not in fc
        assert fe == {"id": entry, "conversationId": conv, "userId": "alice", "clientId": "agent-a", "channel": "history",
                      "epoch": 1, "seq": 1, "contentType": "history", "content": [{"role": "USER", "text": "Hello"}],
                      "createdAt": fe["createdAt"], "conversationGroupId": group}
        assert TIME.match(fe["createdAt"])
        # the payload helpers read both shapes the same way
        for data in (e, fe):
            assert (payload.conversation_id(data, "entry"), payload.entry_id(data, "entry"), payload.role(data, "entry"),
                    payload.group_id(data, "entry")) == (conv, entry, "USER", group)

    run(main())


def test_archives_deletes_memberships_and_responses() -> None:
    async def main() -> None:
        async with LocalMemoryService() as server:
            conv = server.create_conversation(owner="alice")
            assert server.add_member(conv, "bob", "reader") == "2"
            server.update_member(conv, "bob", "writer")
            server.start_response(conv)
            server.finish_response(conv, "failed")
            server.archive_conversation(conv)
            server.unarchive_conversation(conv)
            server.remove_member(conv, "bob")
            server.delete_conversation(conv)
            summary = await replay(server, "summary")
            full = await replay(server, "full")
        events = [(k, e, d) for k, e, _, d in summary]
        group = events[0][2]["conversation_group"]
        assert events[1:] == [
            ("membership", "created", {"conversation_group": group, "user": "bob", "role": "reader"}),
            ("membership", "updated", {"conversation_group": group, "user": "bob", "role": "writer"}),
            ("response", "created", {"conversation": conv, "conversation_group": group, "recording": conv, "status": "started"}),
            ("response", "deleted", {"conversation": conv, "conversation_group": group, "recording": conv, "status": "failed"}),
            ("conversation", "updated", {"conversation": conv, "conversation_group": group, "members": ["alice", "bob"], "archived": True}),
            ("conversation", "updated", {"conversation": conv, "conversation_group": group, "members": ["alice", "bob"], "archived": False}),
            ("membership", "deleted", {"conversation_group": group, "user": "bob"}),
            ("conversation", "deleted", {"conversation": conv, "conversation_group": group, "members": ["alice"]}),
        ]
        # full mode: the hard-deleted conversation's events are gone; the others keep the summary
        assert [(k, e) for k, e, _, _ in full] == [(k, e) for k, e, _ in events if k in ("membership", "response")]

    run(main())


def test_refused_operations_raise_and_emit_nothing() -> None:
    with LocalMemoryService() as server:
        conv = server.create_conversation(owner="alice")
        with pytest.raises(KeyError):
            server.append_entry("no-such-conversation", [{"role": "USER", "text": "x"}])
        with pytest.raises(ValueError, match="channel"):
            server.append_entry(conv, [], channel="memory")
        with pytest.raises(ValueError):
            server.remove_member(conv, "alice")  # the owner keeps the owner role
        with pytest.raises(ValueError):
            server.finish_response(conv)  # nothing started
        with pytest.raises(ValueError, match="role"):
            server.add_member(conv, "bob", "admin")
        with pytest.raises(TypeError):
            server.append_entry(conv, "just text")  # type: ignore[arg-type]
        server.archive_conversation(conv)
        with pytest.raises(ValueError, match="archived"):
            server.append_entry(conv, [{"role": "USER", "text": "x"}])
        assert server.last_cursor == "2"


def test_binary_content_and_channels() -> None:
    async def main() -> None:
        async with LocalMemoryService() as server:
            conv = server.create_conversation(owner="alice")
            server.append_entry(conv, b"\x89PNG", content_type="image/png")
            server.append_entry(conv, [{"role": "AI", "text": "note"}], channel="context", content_type="LC4J")
            full = await replay(server, "full", entry_channels=["history", "CONTEXT"], kinds=["entry"])
            history_only = await replay(server, "summary", kinds=["entry"])
            exact = await replay(server, "summary", kinds=["entry"], entry_channels=["context"], entry_content_types=["lc4j"])
        assert [d["content"] for *_, d in full] == ["b64:iVBORw==", [{"role": "AI", "text": "note"}]]
        assert [d["channel"] for *_, d in full] == ["history", "context"]
        assert len(history_only) == 1 and "entry_role" not in history_only[0][3]
        assert exact == []  # content types compare exactly

    run(main())


def test_scenario_methods_are_callable_from_any_thread() -> None:
    with LocalMemoryService() as server:
        conv = server.create_conversation(owner="alice")
        errors: List[BaseException] = []

        def writer(n: int) -> None:
            try:
                for i in range(50):
                    server.append_entry(conv, [{"role": "USER", "text": f"{n}-{i}"}])
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and server.last_cursor == "201"


class Roles(EventProcessor):
    """Counts entries per role with the payload helpers."""

    CONTENT_TYPE = "application/vnd.test.roles+json;v=1"

    def __init__(self) -> None:
        self.by_role: Dict[str, int] = {}
        self.last_event_cursor = None

    def handle(self, event: Any) -> None:
        if event.kind == "entry":
            role = payload.role(event) or "unknown"
            self.by_role[role] = self.by_role.get(role, 0) + 1
        super().handle(event)

    def snapshot(self) -> Dict[str, Any]:
        return {"byRole": self.by_role, "lastEventCursor": self.last_event_cursor}


def test_a_processor_on_generated_activity() -> None:
    """The runtime (full payloads) on :class:`Activity`: the counts are the generator's."""

    async def main() -> None:
        async with LocalMemoryService() as server:
            activity = Activity(server, conversations=6, seed=3)
            cursors = activity.emit(400)
            assert len(cursors) == 400 and server.last_cursor == cursors[-1] == "400"
            result = await run_until_handled(Roles(), server, "roles")
            expected = {
                role: activity.count("entry", channel="history", role=role) for role in ("USER", "AI")
            }
            assert result.processor.by_role == expected
            kinds = {e.kind for e in activity.emitted}
            assert kinds == {"conversation", "entry", "membership", "response"}

    run(main())
