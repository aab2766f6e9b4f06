"""Short unit tests for processors: run one until it has handled what was published.

>>> async with LocalMemoryService() as server:
...     server.publish_many([("entry", "appended", {"conversation": "c1"})] * 3)
...     result = await run_until_handled(EntryCounter(), server, "entry-counter")
...     assert result.processor.count == 3
...     assert result.checkpoint.value["lastEventCursor"] == "3"

:func:`run_until_handled` runs the real :class:`~memory_service_processor.Runtime` (the same
Rust loop, reconnects and checkpoint writer as in production) and stops it, gracefully, as soon
as the processor has handled the last event published before the call; no sleeps or polling
in the test. :class:`ProcessorRun` does the same for tests that publish in several rounds while
the processor keeps running. :class:`InMemoryEventClient` is an event source in this process
for tests that need no gRPC server at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Set, Tuple, Union

from .._config import Config
from .._model import Checkpoint, EventEnvelope
from .._runtime import Runtime
from .._stores import InMemoryCheckpointStore
from ..errors import CheckpointNotFoundError
from .events import EventSpec
from .server import LocalMemoryService

__all__ = ["ProcessorRun", "RunResult", "run_until_handled"]

log = logging.getLogger("memory_service_processor")


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


def _reached(handled: Optional[str], target: str) -> bool:
    """``handled`` is at or past ``target``: compared as numbers for decimal cursors (those of
    LocalMemoryService and InMemoryEventClient), for equality otherwise (cursors are opaque)."""
    if handled is None:
        return False
    if handled.isdigit() and target.isdigit():
        return int(handled) >= int(target)
    return handled == target


@dataclasses.dataclass
class RunResult:
    """What a test inspects after a run."""

    #: The processor that ran (your object, with its state).
    processor: Any
    #: Business events handled during this run, in order.
    events: List[EventEnvelope]
    #: Stream signals seen (``phase``, ``invalidate``, ``evicted``), in order.
    signals: List[EventEnvelope]
    #: ``Runtime.stats()`` at the end of the run.
    stats: Dict[str, Any]
    #: The stored checkpoint after the final write, or ``None`` if none was stored.
    checkpoint: Optional[Checkpoint]
    #: The checkpoint client used: pass it to the next run (``checkpoints=``) to resume from
    #: this one. ``None`` when the checkpoints lived in the LocalMemoryService.
    checkpoints: Any = None

    @property
    def cursors(self) -> List[Optional[str]]:
        """The cursors of :attr:`events`."""
        return [e.cursor for e in self.events]

    @property
    def state(self) -> Any:
        """The stored checkpoint's value (``None`` if none was stored)."""
        return None if self.checkpoint is None else self.checkpoint.value


class _Observed:
    """The processor as the runtime sees it: every call goes to the user's processor; handled
    events and signals are also reported to the :class:`ProcessorRun`."""

    def __init__(self, inner: Any, run: "ProcessorRun") -> None:
        self._inner = inner
        self.content_type = inner.content_type
        self.load = inner.load
        self.snapshot = inner.snapshot
        flush = getattr(inner, "flush", None)
        if flush is not None:
            self.flush = flush
        handle = inner.handle
        on_handled = run._on_handled

        if inspect.iscoroutinefunction(handle):

            async def async_handle(event: EventEnvelope) -> None:
                await handle(event)
                on_handled(event)

            self.handle: Callable[[EventEnvelope], Any] = async_handle
        else:

            def sync_handle(event: EventEnvelope) -> Optional[Awaitable[None]]:
                result = handle(event)
                if result is not None and inspect.isawaitable(result):
                    return _then(result, on_handled, event)
                on_handled(event)
                return None

            self.handle = sync_handle

        hook = getattr(inner, "on_stream_event", None)
        on_signal = run._on_signal

        def on_stream_event(event: EventEnvelope) -> Optional[Awaitable[None]]:
            result = hook(event) if hook is not None else None
            if result is not None and inspect.isawaitable(result):
                return _then(result, on_signal, event)
            on_signal(event)
            return None

        self.on_stream_event = on_stream_event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def _then(awaitable: Awaitable[Any], after: Callable[[EventEnvelope], None], event: EventEnvelope) -> None:
    await awaitable
    after(event)


def _make_config(config_or_client_id: Union[Config, str], after_cursor: Any) -> Config:
    if isinstance(config_or_client_id, Config):
        if after_cursor is _UNSET:
            return config_or_client_id
        return config_or_client_id.replace(after_cursor=after_cursor)
    if isinstance(config_or_client_id, str):
        return Config(
            client_id=config_or_client_id,
            after_cursor="start" if after_cursor is _UNSET else after_cursor,
            reconnect_min=0.05,
            reconnect_max=0.5,
        )
    raise TypeError(f"config_or_client_id must be a Config or a client id string, not {type(config_or_client_id).__name__}")


class ProcessorRun:
    """A processor running in the background of a test, with a way to wait for it.

    >>> async with ProcessorRun(processor, server, "my-processor") as run:
    ...     server.publish("entry", "appended", {"conversation": "c1"})
    ...     await run.until_handled()          # the last event published so far
    ...     server.publish("entry", "appended", {"conversation": "c2"})
    ...     await run.until_handled()
    >>> run.result.checkpoint.value            # after the graceful stop and final checkpoint

    ``source`` is a :class:`~memory_service_processor.testing.LocalMemoryService` (events and
    checkpoints over gRPC, unless ``events=`` / ``checkpoints=`` replace them), an
    :class:`InMemoryEventClient`, or ``None`` with ``events=`` given. Without a server the
    checkpoints go to ``checkpoints=`` or to a new :class:`InMemoryCheckpointStore`.

    ``config_or_client_id``: a :class:`Config`, or a client id for a config with
    ``after_cursor="start"`` and short reconnect delays. ``after_cursor=`` overrides the
    config's. Other keywords (``api_key=``, ``bearer_token=``, ...) go to :class:`Runtime`.

    Leaving the ``async with`` block stops the runtime gracefully (final flush and checkpoint)
    and fills :attr:`result`; an exception of the run (from the processor or a fatal client
    error) is raised there, or from :meth:`until_handled` as soon as it happens.
    """

    def __init__(
        self,
        processor: Any,
        source: Any,
        config_or_client_id: Union[Config, str],
        *,
        after_cursor: Optional[str] = _UNSET,
        events: Any = None,
        checkpoints: Any = None,
        **runtime_options: Any,
    ) -> None:
        self.processor = processor
        self.config = _make_config(config_or_client_id, after_cursor)
        self._server: Optional[LocalMemoryService] = None
        self._source: Any = None
        if isinstance(source, LocalMemoryService):
            self._server = source
            runtime_options.setdefault("endpoint", source.endpoint)
        elif source is not None:
            if not callable(getattr(source, "subscribe", None)):
                raise TypeError(
                    "source must be a LocalMemoryService, an InMemoryEventClient or None, "
                    f"not {type(source).__name__}"
                )
            if events is not None:
                raise TypeError("pass the event client either as source or as events=, not both")
            self._source = source
            events = source
        #: The stream comes from the LocalMemoryService itself, which sends phase signals.
        self._server_stream = self._server is not None and events is None
        if events is None and self._server is None:
            raise TypeError("ProcessorRun needs a LocalMemoryService, an InMemoryEventClient or events=")
        if checkpoints is None and self._server is None:
            checkpoints = InMemoryCheckpointStore()
        self.checkpoints = checkpoints
        # The runtime sees a wrapper named like the processor's class (as its messages say).
        cls = type(processor)
        observed = type(cls.__name__, (_Observed,), {"__qualname__": cls.__qualname__, "__module__": cls.__module__})
        self.runtime = Runtime(
            observed(processor, self), self.config, events=events, checkpoints=checkpoints, **runtime_options
        )
        #: Business events handled so far, in order.
        self.events: List[EventEnvelope] = []
        #: Stream signals seen so far, in order.
        self.signals: List[EventEnvelope] = []
        #: Filled when the run has stopped.
        self.result: Optional[RunResult] = None
        self._last_cursor: Optional[str] = None
        self._live_seen = False
        self._initial_target: Optional[str] = None
        self._waiters: List[Tuple[Optional[str], bool, "asyncio.Future[None]"]] = []
        self._task: "Optional[asyncio.Task[None]]" = None

    # -- what was published ------------------------------------------------------------------
    def _published(self) -> Optional[str]:
        if self._server is not None:
            _, nxt = self._server.outbox_range
            return str(nxt - 1) if nxt > 1 else None
        last = getattr(self._source, "last_cursor", None)
        return last if isinstance(last, str) else None

    # -- observation (called by _Observed on the event loop thread) ---------------------------
    def _on_handled(self, event: EventEnvelope) -> None:
        self.events.append(event)
        if event.cursor is not None:
            self._last_cursor = event.cursor
        self._check()

    def _on_signal(self, event: EventEnvelope) -> None:
        self.signals.append(event)
        if event.event == "phase":
            try:
                live = event.data.get("phase") == "live"
            except (ValueError, AttributeError):
                live = False
            if live:
                self._live_seen = True
                self._check()

    def _concurrent(self) -> bool:
        """Events complete out of order (concurrency, retries or skip), or the processor never
        sees some of them (shards): a target counts as handled once the runtime's watermark
        reached it."""
        c = self.config
        return c.max_concurrency > 1 or c.max_attempts > 1 or c.on_failure != "stop" or c.shard_count > 1

    def _satisfied(self, target: Optional[str], live_ok: bool) -> bool:
        if live_ok and self._live_seen:
            if not self._concurrent():
                return True
            # The live signal follows every replayed event in the stream, but with concurrency
            # those events may still be queued or in flight: wait until none is left.
            stats = self.runtime.stats()
            return stats["buffer_depth"] == 0 and stats["events_pending"] == 0 and stats["in_flight"] == 0
        if live_ok and self._server_stream:
            # A LocalMemoryService always sends the live phase after the events published
            # before the run: wait for it, so the phase signals reached the processor too
            # (returning on the last cursor could stop the run just before them).
            return False
        if target is not None and self._concurrent():
            return _reached(self.runtime.stats()["watermark"], target)
        return target is not None and _reached(self._last_cursor, target)

    def _check(self) -> None:
        keep = []
        for target, live_ok, fut in self._waiters:
            if fut.done():
                continue
            if self._satisfied(target, live_ok):
                fut.set_result(None)
            else:
                keep.append((target, live_ok, fut))
        self._waiters = keep

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the runtime in a task of the running event loop (``async with`` does it)."""
        if self._task is not None:
            raise RuntimeError("this ProcessorRun was already started")
        self._initial_target = self._published()
        self._task = asyncio.ensure_future(self.runtime.run())

    async def __aenter__(self) -> "ProcessorRun":
        self.start()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            await self.stop()
            return
        try:
            await self.stop()
        except BaseException as run_error:  # the block's exception is the one to report
            log.debug("the run also failed: %r", run_error)

    async def until_handled(self, cursor: Optional[str] = None, *, timeout: float = 30.0) -> None:
        """Returns once the processor has handled the event with ``cursor`` (default: the last
        event published so far).

        Events published before the run started count as handled once the stream went live
        (so events the config filters out, or a checkpoint already past them, never make it
        wait). For events published later, their cursor must pass the config's filters: give
        ``cursor=`` of the last one the processor will see otherwise. Raises the run's
        exception if it fails meanwhile, :class:`TimeoutError` after ``timeout`` seconds.
        """
        if self._task is None:
            raise RuntimeError("start the ProcessorRun first (async with ProcessorRun(...) as run)")
        target = cursor if cursor is not None else self._published()
        initial = self._initial_target
        live_ok = cursor is None and (target is None or (initial is not None and _reached(initial, target)))
        if self._satisfied(target, live_ok):
            return
        fut: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self._waiters.append((target, live_ok, fut))
        try:
            if self._concurrent():
                # The watermark moves after the handlers return: poll it.
                deadline = asyncio.get_running_loop().time() + timeout
                done: "Set[asyncio.Future[Any]]" = set()
                while not done and asyncio.get_running_loop().time() < deadline:
                    done, _ = await asyncio.wait({fut, self._task}, timeout=0.01, return_when=asyncio.FIRST_COMPLETED)
                    self._check()
                    if fut.done():
                        done = {fut}
            else:
                done, _ = await asyncio.wait({fut, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not fut.done():
                fut.cancel()
        if fut in done:
            return
        what = f"cursor {target}" if target is not None else "the live phase"
        if self._task in done:
            self._task.result()  # raises the run's exception
            raise RuntimeError(f"the runtime stopped before the processor handled {what}")
        stats = self.runtime.stats()
        raise TimeoutError(
            f"the processor did not handle {what} within {timeout}s: last handled cursor "
            f"{self._last_cursor!r}, {len(self.events)} events handled, phase {stats.get('phase')!r}, "
            f"{stats.get('reconnects')} reconnects"
        )

    async def stop(self) -> RunResult:
        """Stops the runtime gracefully (final flush and checkpoint), then returns the
        :class:`RunResult`. Raises the run's exception if it failed."""
        if self._task is None:
            raise RuntimeError("this ProcessorRun was not started")
        self.runtime.stop()
        if not self._task.done():
            await asyncio.wait({self._task})
        self._task.result()  # the run's exception, if any
        if self.result is None:
            self.result = RunResult(
                processor=self.processor,
                events=list(self.events),
                signals=list(self.signals),
                stats=dict(self.runtime.stats()),
                checkpoint=await self.stored_checkpoint(),
                checkpoints=self.checkpoints,
            )
        return self.result

    async def stored_checkpoint(self) -> Optional[Checkpoint]:
        """The checkpoint stored right now (``None`` if none)."""
        client_id = self.config.client_id
        if self.checkpoints is not None:
            try:
                return await self.checkpoints.get(client_id)  # type: ignore[no-any-return]
            except CheckpointNotFoundError:
                return None
        assert self._server is not None
        return self._server.checkpoint(client_id)


async def run_until_handled(
    processor: Any,
    source: Any,
    config_or_client_id: Union[Config, str],
    *,
    publish: Optional[Iterable[EventSpec]] = None,
    until_cursor: Optional[str] = None,
    after_cursor: Optional[str] = _UNSET,
    timeout: float = 30.0,
    events: Any = None,
    checkpoints: Any = None,
    **runtime_options: Any,
) -> RunResult:
    """Runs ``processor`` until it has handled every event published so far, then stops it
    gracefully (final flush and checkpoint) and returns a :class:`RunResult`.

    ``publish``: events (``(kind, event, data)`` tuples or dicts) to publish to ``source``
    first. ``until_cursor``: wait for this cursor instead of the last published one (needed
    for a custom ``events=`` client that sends no ``phase`` signals). Everything else is as
    for :class:`ProcessorRun`: ``source`` is a LocalMemoryService, an
    :class:`InMemoryEventClient` or ``None`` with ``events=``; ``config_or_client_id`` a
    :class:`Config` or a client id (``after_cursor="start"``, short reconnects).

    Raises the processor's exception (or a fatal client error) unchanged, and
    :class:`TimeoutError` if the events are not handled within ``timeout`` seconds (after
    stopping the runtime).
    """
    if publish is not None:
        if source is None or not callable(getattr(source, "publish_many", None)):
            raise TypeError("publish= needs a source with publish_many (LocalMemoryService, InMemoryEventClient)")
        source.publish_many(publish)
    run = ProcessorRun(
        processor,
        source,
        config_or_client_id,
        after_cursor=after_cursor,
        events=events,
        checkpoints=checkpoints,
        **runtime_options,
    )
    async with run:
        await run.until_handled(until_cursor, timeout=timeout)
    assert run.result is not None
    return run.result
