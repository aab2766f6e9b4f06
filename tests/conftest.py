"""Shared helpers for the end-to-end tests.

Every test talks to a real :class:`LocalMemoryService` (a tonic gRPC server on loopback) through
the real runtime. No pytest-asyncio: sync tests call :func:`run` (``asyncio.run`` with an overall
deadline).

Running a processor: the public testing kit first (``run_until_handled`` / ``ProcessorRun`` from
``memory_service_processor.testing``: they wait for cursors, not for counts, and raise the run's
error as soon as it happens). Where the kit does not fit (a Runtime built by the test with
options the kit does not take, no reachable server, a processor that must be seen unwrapped,
the run task itself cancelled), :func:`started` runs the Runtime and returns a :class:`Started`
handle to wait on. Waiting is done with :func:`wait_until` / :meth:`Started.wait` (poll a
condition, fail with a message on a generous deadline) -- never a bare sleep used as an
assertion.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, TypeVar

import pytest

from memory_service_processor import Config, EventEnvelope, EventProcessor, GrpcEventClient, Runtime, SubscribeRequest
from memory_service_processor.testing import LocalMemoryService

T = TypeVar("T")

#: Generous deadline for "eventually" conditions (a loaded CI box, 2 shared cores).
EVENTUALLY = 20.0

CONTENT_TYPE = "application/vnd.test.recorder+json;v=1"


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Runs ``coro`` on a fresh event loop, failing the test if it takes longer than ``timeout``."""

    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


async def wait_until(
    predicate: Callable[[], Any], what: str = "condition", timeout: float = EVENTUALLY, interval: float = 0.005
) -> Any:
    """Polls ``predicate`` (sync) until it returns something truthy; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def cfg(client_id: str = "proc", **kw: Any) -> Config:
    """A Config with fast test defaults (short reconnects, a long interval unless given)."""
    kw.setdefault("reconnect_min", 0.02)
    kw.setdefault("reconnect_max", 0.2)
    kw.setdefault("checkpoint_interval", 30.0)
    return Config(client_id=client_id, **kw)


class Recorder(EventProcessor):
    """A processor that records everything the runtime does to it.

    ``fail_on``: a cursor whose handling raises ``self.failure``. ``delay``: seconds slept per
    event (with ``asyncio.sleep`` when ``async_mode``; ``time.sleep`` otherwise).
    """

    CONTENT_TYPE = CONTENT_TYPE

    def __init__(self, *, fail_on: Optional[str] = None, delay: float = 0.0) -> None:
        self.handled: List[str] = []
        self.events: List[EventEnvelope] = []
        self.signals: List[EventEnvelope] = []
        self.loaded: List[Any] = []
        self.flushes = 0
        self.snapshots = 0
        self.threads: Dict[str, set] = {}
        self.fail_on = fail_on
        self.failure: Optional[BaseException] = None
        self.delay = delay

    def _thread(self, method: str) -> None:
        self.threads.setdefault(method, set()).add(threading.get_ident())

    def content_type(self) -> str:
        self._thread("content_type")
        return self.CONTENT_TYPE

    def load(self, state: Any) -> None:
        self._thread("load")
        self.loaded.append(state)
        super().load(state)

    def handle(self, event: EventEnvelope) -> None:
        self._thread("handle")
        assert event.kind != "stream", f"stream signal reached handle: {event!r}"
        if self.fail_on is not None and event.cursor == self.fail_on:
            self.failure = RuntimeError(f"handler failed on cursor {event.cursor}")
            raise self.failure
        if self.delay:
            time.sleep(self.delay)
        self.events.append(event)
        self.handled.append(event.cursor)  # type: ignore[arg-type]
        self.last_event_cursor = event.cursor

    def snapshot(self) -> Any:
        self._thread("snapshot")
        self.snapshots += 1
        return {"lastEventCursor": self.last_event_cursor, "count": len(self.handled)}

    def flush(self) -> None:
        self._thread("flush")
        self.flushes += 1

    def on_stream_event(self, event: EventEnvelope) -> None:
        self._thread("on_stream_event")
        self.signals.append(event)

    def signal_names(self) -> List[str]:
        return [s.event for s in self.signals]


class AsyncRecorder(Recorder):
    """Like :class:`Recorder` with coroutine ``handle`` / ``flush`` / ``on_stream_event``."""

    async def handle(self, event: EventEnvelope) -> None:  # type: ignore[override]
        if self.delay:
            await asyncio.sleep(self.delay)
            saved, self.delay = self.delay, 0.0
            try:
                Recorder.handle(self, event)
            finally:
                self.delay = saved
        else:
            await asyncio.sleep(0)
            Recorder.handle(self, event)

    async def flush(self) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        Recorder.flush(self)

    async def on_stream_event(self, event: EventEnvelope) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        Recorder.on_stream_event(self, event)


class Started:
    """A :class:`Runtime` running in a task of the test's event loop (see :func:`started`).

    Every wait fails fast with the run's own exception if the run ends meanwhile, and with an
    AssertionError naming ``what`` after ``timeout`` seconds.
    """

    def __init__(self, runtime: Runtime, processor: Any = None, server: Optional[LocalMemoryService] = None) -> None:
        self.runtime = runtime
        self.processor = processor
        self.server = server
        self.task: "asyncio.Task[None]" = asyncio.ensure_future(runtime.run())

    def stats(self) -> Dict[str, Any]:
        """``Runtime.stats()`` now."""
        return self.runtime.stats()

    async def wait(self, predicate: Callable[[], Any], what: str = "condition", timeout: float = EVENTUALLY) -> Any:
        """Polls ``predicate`` until it is truthy (returns its value)."""

        def check() -> Any:
            value = predicate()
            if not value and self.task.done():
                self.task.result()  # the run's exception, if it failed
                raise AssertionError(f"the run ended before {what}")
            return value

        return await wait_until(check, what, timeout)

    async def wait_handled(self, n: int, timeout: float = EVENTUALLY) -> None:
        """Waits until the processor (a :class:`Recorder`) has handled ``n`` events in all."""
        assert self.processor is not None, "started(..., processor=) is needed for wait_handled"
        await self.wait(lambda: len(self.processor.handled) >= n, f"{n} handled events", timeout)

    async def wait_signal(self, name: str, timeout: float = EVENTUALLY) -> None:
        """Waits until the processor (a :class:`Recorder`) has seen the stream signal ``name``."""
        assert self.processor is not None, "started(..., processor=) is needed for wait_signal"
        await self.wait(lambda: name in self.processor.signal_names(), f"the {name} signal", timeout)

    async def wait_live(self, subscribers: int = 1) -> None:
        """Waits until the run is in the live phase and (given a server) subscribed there."""
        server = self.server
        await self.wait(
            lambda: self.runtime.stats()["phase"] == "live" and (server is None or server.subscriber_count >= subscribers),
            "the live phase",
        )

    async def stop(self, timeout: float = 20.0) -> None:
        """Stops the runtime gracefully and awaits the end of the run (raising its exception)."""
        self.runtime.stop()
        await asyncio.wait_for(asyncio.shield(self.task), timeout)


@contextlib.asynccontextmanager
async def started(
    runtime: Runtime, processor: Any = None, server: Optional[LocalMemoryService] = None, *, live: bool = False
) -> AsyncIterator[Started]:
    """Runs ``runtime`` for the block and yields a :class:`Started` handle; on exit stops it
    gracefully and awaits the end of the run (its exception, if any, is raised there).

    ``processor``: the Recorder given to the runtime (for :meth:`Started.wait_handled`).
    ``server``: the LocalMemoryService it subscribes to (for :meth:`Started.wait_live`).
    ``live``: wait for the live phase before the block starts.
    """
    handle = Started(runtime, processor, server)
    try:
        if live:
            await handle.wait_live()
        yield handle
    finally:
        await handle.stop()


@contextlib.asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator["asyncio.Task[None]"]:
    """Runs ``runtime`` in a task for the block; on exit stops it and awaits the end.

    If the run already ended with an exception, it is raised here. (Prefer the testing kit or
    :func:`started`; this stays for the tests of the configuration.)
    """
    task = asyncio.ensure_future(runtime.run())
    try:
        yield task
    finally:
        runtime.stop()
        await asyncio.wait_for(asyncio.shield(task), 20)


async def wait_live(runtime: Runtime, server: LocalMemoryService, subscribers: int = 1) -> None:
    """Waits until the runtime is in the live phase and subscribed on the server."""
    await wait_until(
        lambda: runtime.stats()["phase"] == "live" and server.subscriber_count >= subscribers,
        "the live phase",
    )


def cursors(first: int, last: int) -> List[str]:
    """``["first", ..., "last"]``: the decimal cursors LocalMemoryService assigns."""
    return [str(i) for i in range(first, last + 1)]


def publish_entries(server: LocalMemoryService, n: int, **extra: Any) -> List[str]:
    """Publishes ``n`` small entry events; returns their cursors."""
    return server.publish_many(
        [("entry", "appended", dict({"conversation": "c1", "entry": f"e{i}"}, **extra)) for i in range(n)]
    )


def stored_cursor(server: LocalMemoryService, client_id: str = "proc") -> Optional[str]:
    """The ``lastEventCursor`` of the stored checkpoint (None if no checkpoint)."""
    cp = server.checkpoint(client_id)
    return None if cp is None else cp.value.get("lastEventCursor")


@pytest.fixture
def server() -> Any:
    """A started LocalMemoryService without authentication."""
    srv = LocalMemoryService()
    srv.start_sync()
    try:
        yield srv
    finally:
        srv.stop_sync()


API_KEYS = {
    "admin-key-SEKRIT-1a2b": "admin",
    "user-key-SEKRIT-3c4d": "user",
    "bearer-tok-SEKRIT-5e6f": "admin",
}
ADMIN_KEY = "admin-key-SEKRIT-1a2b"
USER_KEY = "user-key-SEKRIT-3c4d"
BEARER = "bearer-tok-SEKRIT-5e6f"


@pytest.fixture
def auth_server() -> Any:
    """A started LocalMemoryService with API keys (see ``API_KEYS``)."""
    srv = LocalMemoryService(api_keys=API_KEYS)
    srv.start_sync()
    try:
        yield srv
    finally:
        srv.stop_sync()


# -- processor subprocesses (the crash tests) -------------------------------------------------


def spawn_python(argv: List[str], stderr_log: Path) -> "subprocess.Popen[bytes]":
    """``python argv...`` in a subprocess, its stderr kept in ``stderr_log`` (read it when a
    test fails), unbuffered and with the fault handler on."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    with open(stderr_log, "wb") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=err, env=env)


def lines(path: Path) -> List[str]:
    """The lines of a file a subprocess appends to (none before it exists)."""
    return path.read_text().splitlines() if path.exists() else []


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Polls ``predicate`` every 20 ms; ``AssertionError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- the repository's examples ----------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str, prefix: str = "example") -> ModuleType:
    """Imports examples/<name>.py as a fresh module named ``<prefix>_<name>`` (as ``run
    examples/<name>.py:Class`` does)."""
    spec = importlib.util.spec_from_file_location(f"{prefix}_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class SummaryEvents:
    """An event client asking for summary payloads (the runtime asks for ``detail="full"``)."""

    def __init__(self, endpoint: str) -> None:
        self.inner = GrpcEventClient(endpoint)

    async def subscribe(self, request: SubscribeRequest) -> Any:
        return await self.inner.subscribe(dataclasses.replace(request, detail="summary"))
