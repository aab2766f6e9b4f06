"""An independent Memory Service stub written with ``grpcio``, serving hand-written payloads.

Nothing here comes from this project's code: the gRPC stubs are generated at test time from
``proto/`` with ``grpc_tools.protoc``, and the payloads are literal JSON written down from
what a real Memory Service sends (``SCENARIO``). So a drift between ``LocalMemoryService``
and a real server cannot hide behind tests that only talk to our own server.

What it does, as a real server does:

* ``SubscribeEvents``: ``detail`` ``None``/``"summary"``/``"full"`` (else
  ``INVALID_ARGUMENT``); each event is sent in the requested shape, and an event whose full
  payload is ``None`` (its entity was hard-deleted) is not sent in full mode. Cursors are
  decimal strings ``"1"``, ``"2"``, ... in order. With ``after_cursor`` the stream sends
  ``stream/phase {"phase": "replay"}``, the stored events after the cursor, then
  ``{"phase": "live"}`` and the events published later; without it ``live`` first and the
  tail only. A non-numeric cursor is stale: ``stream/invalidate {"reason": "cursor beyond
  retention window"}`` and the stream ends. Filters: ``kinds``, ``conversation_ids``,
  ``entry_channels`` (default ``["history"]``, case-insensitive), ``entry_roles``
  (case-insensitive), ``entry_content_types`` (exact).
* ``GetCheckpoint`` / ``PutCheckpoint`` in memory (``NOT_FOUND`` before the first put).

Use::

    with UpstreamStub(events=SCENARIO) as stub:
        runtime = Runtime(processor, Config(client_id="p", after_cursor="start"), endpoint=stub.endpoint)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import grpc

ROOT = Path(__file__).resolve().parents[1]
PROTO_FILES = ("memory/v1/events.proto", "memory/v1/checkpoints.proto")

#: ``StubEvent.full`` default: the payload is the same in both modes (response, membership).
SAME: Any = "same-as-summary"


@dataclasses.dataclass(frozen=True)
class StubEvent:
    """One stored event: its summary payload and its full payload (``SAME``: the summary;
    ``None``: not delivered in full mode, the entity is gone)."""

    kind: str
    event: str
    summary: Dict[str, Any]
    full: Any = SAME

    def payload(self, detail: str) -> Optional[Dict[str, Any]]:
        if detail == "full":
            return self.summary if self.full is SAME else self.full
        return self.summary


# --- the hand-written scenario --------------------------------------------------------------

C1 = "7b1d6c2e-4f0a-4c1e-9a55-1d2f3e4a5b01"
G1 = "2a96e0b4-1c3d-4e5f-8a7b-9c0d1e2f3a01"
C2 = "7b1d6c2e-4f0a-4c1e-9a55-1d2f3e4a5b02"
G2 = "2a96e0b4-1c3d-4e5f-8a7b-9c0d1e2f3a02"
E = ["6a90f1d2-3b4c-4d5e-8f6a-7b8c9d0e1f%02x" % i for i in range(8)]

# C1 as it is now (its title was changed after creation): a real server reads the entity when
# it sends, so both C1 events carry this state in full mode.
C1_FULL = {
    "id": C1,
    "title": "Trip to Rome",
    "ownerUserId": "alice",
    "agentId": "a1",
    "metadata": {"topic": "travel"},
    "createdAt": "2026-05-19T12:00:00.100Z",
    "updatedAt": "2026-05-19T12:00:09.900Z",
    "accessLevel": "owner",
    "conversationGroupId": G1,
}


def _entry_full(
    n: int, conv: str, group: str, channel: str, content_type: str, content: Any, seq: int, user: str = "alice"
) -> Dict[str, Any]:
    return {
        "id": E[n],
        "conversationId": conv,
        "userId": user,
        "clientId": "agent-a",
        "agentId": "a1",
        "channel": channel,
        "epoch": 1,
        "seq": seq,
        "contentType": content_type,
        "content": content,
        "createdAt": "2026-05-19T12:00:0%d.000Z" % n,
        "conversationGroupId": group,
    }


def _entry_summary(n: int, conv: str, group: str, channel: str, content_type: str, role: Optional[str]) -> Dict[str, Any]:
    data = {
        "conversation": conv,
        "conversation_group": group,
        "entry": E[n],
        "entry_channel": channel,
        "entry_content_type": content_type,
    }
    if role is not None:
        data["entry_role"] = role
    return data


SCENARIO: List[StubEvent] = [
    # 1: alice creates C1
    StubEvent("conversation", "created", {"conversation": C1, "conversation_group": G1}, C1_FULL),
    # 2: USER turn
    StubEvent(
        "entry", "created",
        _entry_summary(1, C1, G1, "history", "history", "USER"),
        _entry_full(1, C1, G1, "history", "history", [{"role": "USER", "text": "Hello"}], 1),
    ),
    # 3, 4, 5: the agent records a response
    StubEvent("response", "created", {"conversation": C1, "conversation_group": G1, "recording": C1, "status": "started"}),
    StubEvent(
        "entry", "created",
        _entry_summary(2, C1, G1, "history", "history", "AI"),
        _entry_full(2, C1, G1, "history", "history", [{"role": "AI", "text": "Hi! Where to?"}], 2),
    ),
    StubEvent("response", "deleted", {"conversation": C1, "conversation_group": G1, "recording": C1, "status": "completed"}),
    # 6: a context entry (not on the default "history" channel)
    StubEvent(
        "entry", "created",
        _entry_summary(3, C1, G1, "context", "LC4J", "AI"),
        _entry_full(3, C1, G1, "context", "LC4J", [{"role": "AI", "text": "memory"}], 3),
    ),
    # 7: alice shares C1 with bob
    StubEvent("membership", "created", {"conversation_group": G1, "user": "bob", "role": "writer"}),
    # 8: title and metadata change
    StubEvent("conversation", "updated", {"conversation": C1, "conversation_group": G1}, C1_FULL),
    # 9: USER turn, two items
    StubEvent(
        "entry", "created",
        _entry_summary(4, C1, G1, "history", "history", "USER"),
        _entry_full(4, C1, G1, "history", "history",
                    [{"role": "USER", "text": "Rome,"}, {"role": "USER", "text": "in May"}], 4),
    ),
    # 10: content that is not JSON arrives as "b64:<base64>" (no role)
    StubEvent(
        "entry", "created",
        _entry_summary(5, C1, G1, "history", "image/png", None),
        _entry_full(5, C1, G1, "history", "image/png", "b64:iVBORw0KGgo=", 5),
    ),
    # 11: content items without a role
    StubEvent(
        "entry", "created",
        _entry_summary(0, C1, G1, "history", "history", None),
        _entry_full(0, C1, G1, "history", "history", [{"text": "(attachment)"}], 6),
    ),
    # 12-16: bob's C2, later archived and then hard-deleted: its events are gone in full mode
    StubEvent("conversation", "created", {"conversation": C2, "conversation_group": G2}, None),
    StubEvent("entry", "created", _entry_summary(6, C2, G2, "history", "history", "USER"), None),
    StubEvent("entry", "created", _entry_summary(7, C2, G2, "history", "application/octet-stream", None), None),
    StubEvent(
        "conversation", "updated",
        {"conversation": C2, "conversation_group": G2, "members": ["bob"], "archived": True},
        None,
    ),
    StubEvent("conversation", "deleted", {"conversation": C2, "conversation_group": G2, "members": ["bob"]}, None),
    # 17: bob leaves C1
    StubEvent("membership", "deleted", {"conversation_group": G1, "user": "bob"}),
]

#: What a processor counting history entries per role sees, per detail mode.
SCENARIO_ROLES = {
    "summary": {"USER": 3, "AI": 1, "unknown": 3},
    "full": {"USER": 2, "AI": 1, "unknown": 2},
}
#: The cursors such a processor is handed (default filters: the context entry 6 is not sent;
#: in full mode neither is anything of the hard-deleted C2).
SCENARIO_CURSORS = {
    "summary": [str(c) for c in range(1, 18) if c != 6],
    "full": [str(c) for c in (1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 17)],
}


# --- generated gRPC code --------------------------------------------------------------------


def _generate(proto_dir: Path) -> str:
    """Generates the Python gRPC modules for ``proto_dir`` once; returns their root."""
    import google.protobuf
    import grpc_tools
    from grpc_tools import protoc

    h = hashlib.sha256()
    for rel in PROTO_FILES:
        h.update(rel.encode() + (proto_dir / rel).read_bytes())
    h.update(f"{grpc.__version__}/{google.protobuf.__version__}".encode())
    root = Path(tempfile.gettempdir()) / f"msp-upstream-stub-{h.hexdigest()[:16]}"
    if (root / ".complete").exists():
        return str(root)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        include = Path(grpc_tools.__file__).resolve().parent / "_proto"
        rc = protoc.main(
            ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", *PROTO_FILES]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed ({rc}) for {proto_dir}")
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / ".complete").exists():  # not a lost race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(root)


def _modules() -> Tuple[Any, Any, Any, Any]:
    root = _generate(ROOT / "proto")
    if root not in sys.path:
        sys.path.insert(0, root)
    names = ("events_pb2", "events_pb2_grpc", "checkpoints_pb2", "checkpoints_pb2_grpc")
    return tuple(importlib.import_module(f"memory.v1.{n}") for n in names)  # type: ignore[return-value]


# --- the server -----------------------------------------------------------------------------


def _lower(values: Sequence[str]) -> List[str]:
    return [v.strip().lower() for v in values if v.strip()]


class _Filter:
    def __init__(self, req: Any) -> None:
        self.kinds = _lower(req.kinds)
        self.conversations = [c for c in req.conversation_ids if c]
        self.channels = _lower(req.entry_channels) or ["history"]
        self.content_types = [c.strip() for c in req.entry_content_types if c.strip()]
        self.roles = _lower(req.entry_roles)

    def matches(self, ev: StubEvent) -> bool:
        s = ev.summary
        if self.kinds and ev.kind.lower() not in self.kinds:
            return False
        if self.conversations and s.get("conversation") not in self.conversations:
            return False
        if ev.kind == "entry":
            if str(s.get("entry_channel", "")).lower() not in self.channels:
                return False
            if self.content_types and s.get("entry_content_type") not in self.content_types:
                return False
            if self.roles and str(s.get("entry_role", "")).lower() not in self.roles:
                return False
        return True


class UpstreamStub:
    """A Memory Service stub on ``127.0.0.1`` serving ``events`` (hand-written payloads).

    A context manager; ``endpoint`` is ``"127.0.0.1:<port>"``. :meth:`publish` adds events
    later (sent to live subscribers). ``requests`` records each ``SubscribeEvents`` request
    (``detail``, ``after_cursor``, ``kinds``, ``client_id``); ``checkpoints`` maps client id
    to ``(content_type, value)``.
    """

    def __init__(self, events: Sequence[StubEvent] = ()) -> None:
        self._pb, self._pb_grpc, self._cp, self._cp_grpc = _modules()
        self._events: List[StubEvent] = list(events)
        self._cond = threading.Condition()
        self._stopped = False
        self.requests: List[Dict[str, Any]] = []
        self.checkpoints: Dict[str, Tuple[str, Any]] = {}
        self._server: Optional[grpc.Server] = None
        self.endpoint = ""

    # lifecycle

    def start(self) -> "UpstreamStub":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._pb_grpc.add_EventStreamServiceServicer_to_server(_Events(self), server)
        self._cp_grpc.add_AdminCheckpointServiceServicer_to_server(_Checkpoints(self), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.endpoint = f"127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.stop(grace=0.5).wait(5)
            self._server = None

    def __enter__(self) -> "UpstreamStub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # state

    def publish(self, *events: StubEvent) -> List[str]:
        """Stores events and wakes live subscribers; returns their cursors."""
        with self._cond:
            first = len(self._events) + 1
            self._events.extend(events)
            self._cond.notify_all()
        return [str(first + i) for i in range(len(events))]

    def checkpoint_value(self, client_id: str) -> Any:
        """The stored checkpoint value (decoded JSON), or None."""
        found = self.checkpoints.get(client_id)
        return None if found is None else found[1]

    def _note(self, kind: str, event: str, data: Dict[str, Any], cursor: Optional[str]) -> Any:
        import json

        n = self._pb.EventNotification(kind=kind, event=event, data=json.dumps(data).encode())
        if cursor is not None:
            n.cursor = cursor
        return n

    def _subscribe(self, req: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        detail = req.detail if req.HasField("detail") else None
        after = req.after_cursor if req.HasField("after_cursor") else None
        meta = dict(context.invocation_metadata())
        self.requests.append(
            {"detail": detail, "after_cursor": after, "kinds": list(req.kinds), "client_id": meta.get("x-client-id")}
        )
        if detail not in (None, "summary", "full"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid detail {detail!r}")
        mode = detail or "summary"
        flt = _Filter(req)
        with self._cond:
            tail = len(self._events)
        if after is None:
            nxt = tail
        else:
            yield self._note("stream", "phase", {"phase": "replay"}, None)
            if after == "start":
                nxt = 0
            elif after.isdigit() and after.isascii():
                nxt = min(int(after), tail)
            else:
                yield self._note("stream", "invalidate", {"reason": "cursor beyond retention window"}, None)
                return
            while nxt < tail:
                ev = self._events[nxt]
                nxt += 1
                out = self._send(ev, nxt, mode, flt)
                if out is not None:
                    yield out
        yield self._note("stream", "phase", {"phase": "live"}, None)
        while context.is_active():
            with self._cond:
                while not self._stopped and nxt >= len(self._events) and context.is_active():
                    self._cond.wait(0.1)
                if self._stopped:
                    return
                batch = self._events[nxt:]
            for ev in batch:
                nxt += 1
                out = self._send(ev, nxt, mode, flt)
                if out is not None:
                    yield out

    def _send(self, ev: StubEvent, cursor: int, mode: str, flt: _Filter) -> Any:
        if not flt.matches(ev):
            return None
        data = ev.payload(mode)
        if data is None:
            return None
        return self._note(ev.kind, ev.event, data, str(cursor))


class _Events:
    def __init__(self, stub: UpstreamStub) -> None:
        self.stub = stub

    def SubscribeEvents(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        return self.stub._subscribe(request, context)


class _Checkpoints:
    def __init__(self, stub: UpstreamStub) -> None:
        self.stub = stub

    def _reply(self, client_id: str, content_type: str, value: Any) -> Any:
        from google.protobuf import json_format, struct_pb2, timestamp_pb2

        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        return self.stub._cp.AdminCheckpoint(
            client_id=client_id,
            content_type=content_type,
            value=json_format.ParseDict(value, struct_pb2.Value()),
            updated_at=now,
        )

    def GetCheckpoint(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        found = self.stub.checkpoints.get(request.client_id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no checkpoint")
        return self._reply(request.client_id, *found)

    def PutCheckpoint(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        from google.protobuf import json_format

        if not request.client_id or not request.content_type:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "client_id and content_type are required")
        if not request.HasField("value"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "value is required")
        value = json_format.MessageToDict(request.value)
        self.stub.checkpoints[request.client_id] = (request.content_type, value)
        return self._reply(request.client_id, request.content_type, value)
