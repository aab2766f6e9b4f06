"""The plain-Python baseline: a naive checkpointed stream loop written with ``grpc.aio``.

This is what a Python developer would write without this package: an idiomatic ``grpc.aio``
client (one channel, generated stubs, ``async for`` over the server stream) following the
write-every-event rules (``docs/semantics.md``):

1. ``GetCheckpoint(client_id)``; NOT_FOUND means a first run (replay from ``after_cursor``).
2. ``SubscribeEvents`` with ``detail="full"`` and admin scope.
3. For each event: skip ``kind == "stream"``; ``processor.handle(event)``; then *save*.
   Every ``checkpoint_interval`` seconds: ``processor.flush()`` then save.
4. Save = ``processor.snapshot()``; skipped when byte-identical to the last saved JSON, else
   ``await PutCheckpoint(...)`` (handling waits for it, as a naive loop does).

``every`` = 1 is that naive loop exactly (a write after every event); ``every`` = 1000 is the same loop
saving after every 1,000 handled events, the obvious manual optimisation. Nothing is crippled:
the snapshot is converted with ``Value.struct_value.update`` (not ``json_format``), the stream
is read with ``async for`` (the documented idiom), and no per-event logging is done.

Python stubs are generated from ``proto/`` with ``grpcio-tools`` into a cache directory at
run time (:func:`ensure_stubs`), so nothing generated is checked in.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto"
PROTO_FILES = ("memory/v1/events.proto", "memory/v1/checkpoints.proto")


def ensure_stubs(proto_dir: Path = PROTO_DIR, cache_dir: Optional[str] = None) -> str:
    """Generates ``*_pb2.py`` / ``*_pb2_grpc.py`` for ``proto_dir`` (once) and returns their root.

    The directory is keyed by the proto sources and the grpcio-tools / protobuf versions, under
    ``cache_dir`` (default: the system temp directory). Safe against concurrent callers.
    """
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the grpcio baseline needs grpcio-tools: pip install grpcio grpcio-tools protobuf"
        ) from e
    import google.protobuf

    h = hashlib.sha256()
    for rel in PROTO_FILES:
        h.update(rel.encode())
        h.update((proto_dir / rel).read_bytes())
    tools_version = getattr(grpc_tools, "__version__", None)
    if tools_version is None:
        try:
            from importlib.metadata import version

            tools_version = version("grpcio-tools")
        except Exception:  # pragma: no cover
            tools_version = "unknown"
    h.update(f"{tools_version}/{google.protobuf.__version__}".encode())
    root = Path(cache_dir or tempfile.gettempdir()) / f"msp-bench-stubs-{h.hexdigest()[:16]}"
    if (root / ".complete").exists():
        return str(root)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        include = Path(grpc_tools.__file__).resolve().parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            *PROTO_FILES,
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed ({rc}) generating stubs from {proto_dir}")
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process won the race; its stubs are identical.
            if not (root / ".complete").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(root)


def load_stubs(root: str) -> Tuple[Any, Any, Any, Any]:
    """Imports the generated modules from ``root``: ``(events_pb2, events_grpc, cp_pb2, cp_grpc)``."""
    if root not in sys.path:
        sys.path.insert(0, root)
    return (
        importlib.import_module("memory.v1.events_pb2"),
        importlib.import_module("memory.v1.events_pb2_grpc"),
        importlib.import_module("memory.v1.checkpoints_pb2"),
        importlib.import_module("memory.v1.checkpoints_pb2_grpc"),
    )


class Counter:
    """The trivial processor, written for the baseline: counts and keeps ``lastEventCursor``.

    Same behaviour as the package's benchmark processor, on the generated protobuf message.
    """

    CONTENT_TYPE = "application/vnd.msp-bench.counter+json;v=1"

    def __init__(self, target: int, on_target: Callable[[], None]) -> None:
        self.count = 0
        self.last_event_cursor: Optional[str] = None
        self.target = target
        self.on_target = on_target

    def load(self, state: Any) -> None:
        """Restores from a checkpoint value."""
        if isinstance(state, dict):
            self.last_event_cursor = state.get("lastEventCursor") or None
            self.count = int(state.get("count", 0))

    def handle(self, event: Any) -> None:
        """Counts the event and keeps its cursor."""
        self.count += 1
        self.last_event_cursor = event.cursor
        if self.count == self.target:
            self.on_target()

    def snapshot(self) -> Dict[str, Any]:
        """The checkpoint value."""
        return {"lastEventCursor": self.last_event_cursor, "count": self.count}

    def flush(self) -> None:
        """Nothing to flush."""
        return None


class LatencyCounter(Counter):
    """Records publish-to-handle latency from the ``t_ns`` field the publisher embeds."""

    def __init__(self, target: int, on_target: Callable[[], None]) -> None:
        super().__init__(target, on_target)
        self.latencies_ns: List[int] = []

    def handle(self, event: Any) -> None:
        """Records the latency, then counts."""
        now = time.perf_counter_ns()
        self.latencies_ns.append(now - json.loads(event.data)["t_ns"])
        super().handle(event)


async def run_loop(
    endpoint: str,
    processor: Counter,
    client_id: str,
    *,
    stubs_root: str,
    every: int = 1,
    after_cursor: Optional[str] = "start",
    checkpoint_interval: float = 5.0,
) -> Dict[str, Any]:
    """Runs the naive loop until ``processor`` reached its target; returns timings and counts.

    ``seconds`` runs from before the channel is created to the moment the target event was
    handled (including the PutCheckpoint write-every-event rules attach to it).
    """
    import grpc
    from google.protobuf import struct_pb2

    events_pb2, events_grpc, cp_pb2, cp_grpc = load_stubs(stubs_root)
    metadata = (("x-client-id", client_id),)
    done = False
    t_done = 0.0
    writes = 0

    def on_target() -> None:
        nonlocal done
        done = True

    processor.on_target = on_target
    t0 = time.perf_counter()
    async with grpc.aio.insecure_channel(endpoint) as channel:
        events = events_grpc.EventStreamServiceStub(channel)
        checkpoints = cp_grpc.AdminCheckpointServiceStub(channel)
        last_saved: Optional[str] = None
        try:
            cp = await checkpoints.GetCheckpoint(
                cp_pb2.GetCheckpointRequest(client_id=client_id), metadata=metadata
            )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            from google.protobuf import json_format

            value = json_format.MessageToDict(cp.value)
            processor.load(value)
            last_saved = json.dumps(value, separators=(",", ":"), sort_keys=True)
            if isinstance(value, dict) and value.get("lastEventCursor"):
                after_cursor = value["lastEventCursor"]

        async def save() -> None:
            nonlocal last_saved, writes
            snap = processor.snapshot()
            text = json.dumps(snap, separators=(",", ":"), sort_keys=True)
            if text == last_saved:
                return
            value = struct_pb2.Value()
            value.struct_value.update(snap)
            await checkpoints.PutCheckpoint(
                cp_pb2.PutCheckpointRequest(
                    client_id=client_id, content_type=processor.CONTENT_TYPE, value=value
                ),
                metadata=metadata,
            )
            last_saved = text
            writes += 1

        request = events_pb2.SubscribeEventsRequest(
            detail="full", scope=events_pb2.EVENT_SCOPE_ADMIN
        )
        if after_cursor is not None:
            request.after_cursor = after_cursor
        call = events.SubscribeEvents(request, metadata=metadata)
        next_flush = time.monotonic() + checkpoint_interval
        since_save = 0
        async for event in call:
            if time.monotonic() >= next_flush:
                processor.flush()
                await save()
                next_flush = time.monotonic() + checkpoint_interval
            if event.kind == "stream":
                continue
            processor.handle(event)
            since_save += 1
            if since_save >= every:
                await save()
                since_save = 0
            if done:
                t_done = time.perf_counter()
                break
        call.cancel()
        processor.flush()
        await save()
    t_end = time.perf_counter()
    return {
        "seconds": t_done - t0,
        "total_seconds": t_end - t0,
        "handled": processor.count,
        "checkpoints_written": writes,
    }
