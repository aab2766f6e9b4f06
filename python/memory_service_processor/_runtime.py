"""`Runtime`: runs an event processor against a Memory Service, driven by the Rust core."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import socket
import threading
from typing import Any, List, Optional

from . import _actions, _native
from ._clients import ConnectionOptions, GrpcCheckpointClient, GrpcEventClient
from ._concurrent import run_concurrent
from ._config import Config, Duration
from ._processor import has_custom_key
from ._stats import Stats, initial_stats
from .errors import ConfigurationError

__all__ = ["Runtime"]

log = logging.getLogger("memory_service_processor")

_REQUIRED = ("content_type", "load", "handle", "snapshot")


class _Waker:
    """Waits for the core's wake-up byte on a socket, or a timeout."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._fut: "Optional[asyncio.Future[None]]" = None
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self._sock.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._release()

    def release(self) -> None:
        """Ends a pending :meth:`wait` early (a no-op when nothing waits)."""
        self._release()

    def _release(self) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, timeout: float) -> None:
        fut = self._loop.create_future()
        self._fut = fut
        timer = self._loop.call_later(max(timeout, 0.0), self._release)
        try:
            await fut
        finally:
            timer.cancel()
            self._fut = None

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())


class Runtime:
    """Runs ``processor`` with ``config`` until :meth:`stop` or cancellation.

    Connect with ``endpoint`` (``host:port``, ``http://``, ``https://`` or
    ``unix:///path.sock``) and ``api_key`` and/or ``bearer_token``, or pass your own
    ``events`` / ``checkpoints`` clients (any objects following the client protocols; either
    one may be given alone, the other then comes from ``endpoint``). Connection options
    (``tls_ca_file``, ``keepalive_interval``, ``max_message_size``, ...) are those of
    :class:`ConnectionOptions`.

    Guarantees: with the default ``max_concurrency=1`` events reach the processor one at a
    time in stream order; with more, events of one ``key()`` still never overlap and keep stream
    order while up to ``max_concurrency`` run at once (``handle`` must then be ``async``). All
    processor methods run on the event loop thread that awaits :meth:`run`; a checkpoint never
    covers an event whose handling has not completed; a processor exception stops the run and
    propagates unchanged, with nothing more written.
    """

    def __init__(
        self,
        processor: Any,
        config: Config,
        *,
        endpoint: Optional[str] = None,
        api_key: Optional[str] = None,
        bearer_token: Optional[str] = None,
        events: Any = None,
        checkpoints: Any = None,
        tls_ca_file: Optional[str] = None,
        tls_server_name: Optional[str] = None,
        keepalive_interval: Duration = 20.0,
        keepalive_timeout: Duration = 10.0,
        connect_timeout: Duration = 10.0,
        request_timeout: Duration = 30.0,
        max_message_size: int = _native.DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, not {type(config).__name__}")
        missing = [m for m in _REQUIRED if not callable(getattr(processor, m, None))]
        if missing:
            raise TypeError(f"{type(processor).__name__} is not an event processor: missing {', '.join(missing)}()")
        if config.max_concurrency > 1 and not _actions.is_async(processor.handle):
            raise ConfigurationError(
                f"{type(processor).__name__}.handle is not async: with max_concurrency="
                f"{config.max_concurrency} handlers must overlap, which a plain function cannot "
                "do on one event loop; make handle an `async def` (or use max_concurrency=1)"
            )
        self.processor = processor
        self.config = config
        self._options: Optional[ConnectionOptions] = None
        if endpoint is not None:
            self._options = ConnectionOptions(
                endpoint,
                api_key=api_key,
                bearer_token=bearer_token,
                client_id=config.client_id,
                tls_ca_file=tls_ca_file,
                tls_server_name=tls_server_name,
                keepalive_interval=keepalive_interval,
                keepalive_timeout=keepalive_timeout,
                connect_timeout=connect_timeout,
                request_timeout=request_timeout,
                max_message_size=max_message_size,
            )
        elif events is None or checkpoints is None:
            raise ConfigurationError(
                "Runtime needs an endpoint (or both events= and checkpoints= clients)"
            )
        self._events = events
        self._checkpoints = checkpoints
        self._driver: Optional[_native.Driver] = None
        self._last_stats: Optional[Stats] = None
        self._lock = threading.Lock()
        self._stop_requested = False
        self._running = False
        self._failure: Optional[str] = None

    def __repr__(self) -> str:
        return (
            f"Runtime({type(self.processor).__name__}, client_id={self.config.client_id!r}, "
            f"connection={self._options!r})"
        )

    def stop(self) -> None:
        """Asks the run to finish the batch in hand, flush, write a final checkpoint and return.

        Thread-safe and idempotent; may be called before :meth:`run`.
        """
        with self._lock:
            self._stop_requested = True
            driver = self._driver
        if driver is not None:
            driver.stop()

    def stats(self) -> Stats:
        """Counters and gauges of the current (or last) run: the keys of
        :class:`~memory_service_processor._stats.Stats`, where each is documented (zeros and
        phase ``"connecting"`` before the first run)."""
        driver = self._driver
        if driver is not None:
            return driver.stats()
        if self._last_stats is not None:
            return self._last_stats.copy()
        return initial_stats(self.config.client_id)

    def _clients(self) -> "tuple[Any, Any]":
        events = self._events
        checkpoints = self._checkpoints
        if events is None:
            assert self._options is not None
            events = GrpcEventClient(self._options)
        if checkpoints is None:
            assert self._options is not None
            checkpoints = GrpcCheckpointClient(self._options)
        # The Rust clients are driven natively, without a detour through Python.
        if isinstance(events, GrpcEventClient):
            events = events._native
        if isinstance(checkpoints, GrpcCheckpointClient):
            checkpoints = checkpoints._native
        return events, checkpoints

    async def run(self) -> None:
        """Runs until :meth:`stop` (then returns normally) or cancellation.

        Cancellation stops gracefully too (no new events, the handlers in flight finish, flush,
        final checkpoint) and then re-raises :class:`asyncio.CancelledError`, so
        ``asyncio.wait_for``, ``asyncio.timeout`` and task groups work as usual.

        Raises the processor's exception if one of its methods fails, or a
        :class:`~memory_service_processor.MemoryServiceProcessorError` for a fatal server or
        configuration problem (after writing a checkpoint of everything handled).
        """
        if self._running:
            raise RuntimeError("this Runtime is already running")
        self._running = True
        self._failure = None
        try:
            await self._run()
        except Exception as e:
            self._failure = type(e).__name__  # /healthz: the run ended with an error (no message)
            raise
        finally:
            with self._lock:
                driver, self._driver = self._driver, None
                # A later run() starts afresh (a stop() called before run() applies to that run).
                self._stop_requested = False
            if driver is not None:
                # Keep the numbers, release the native side while the interpreter is alive.
                self._last_stats = driver.stats()
                del driver
            self._running = False

    async def _run(self) -> None:
        _native.reset_log_cache()
        processor = self.processor
        content_type = processor.content_type()
        if not isinstance(content_type, str) or not content_type.strip():
            raise ConfigurationError(
                f"{type(processor).__name__}.content_type() must return a non-empty string, got {content_type!r}"
            )
        events, checkpoints = self._clients()
        # The driver wakes this loop by writing a byte to `wake_w` (no Rust thread ever calls
        # into Python to do so); the loop watches `wake_r`.
        wake_r, wake_w = socket.socketpair()
        try:
            wake_r.setblocking(False)
            driver = _native.Driver(
                wake_fd=wake_w.fileno(),
                events=events,
                checkpoints=checkpoints,
                content_type=content_type,
                config=self.config,
                custom_key=has_custom_key(processor),
            )
        finally:
            wake_w.close()  # the driver keeps its own duplicate
        try:
            await self._start(driver, processor, wake_r)
        finally:
            wake_r.close()

    async def _start(self, driver: "_native.Driver", processor: Any, wake_r: socket.socket) -> None:
        with self._lock:
            self._driver = driver
            if self._stop_requested:
                driver.stop()
        try:
            loaded = await driver.load()
        except asyncio.CancelledError:
            driver.abort()
            raise
        except Exception:
            if driver.stop_requested():
                # stop() while the server was still unreachable: nothing was handled.
                driver.abort()
                return
            raise
        if loaded.text is not None:
            try:
                r = processor.load(json.loads(loaded.text))
                if r is not None and inspect.isawaitable(r):
                    await r
            except BaseException:
                driver.abort()
                raise
        driver.start(loaded)
        log.info("processor %s started", self.config.client_id, extra={"client_id": self.config.client_id})
        loop = asyncio.get_running_loop()
        waker = _Waker(loop, wake_r)
        try:
            if driver.is_concurrent():
                cancelled = await run_concurrent(driver, processor, waker, self.config)
            else:
                cancelled = await self._loop(driver, processor, waker)
        finally:
            waker.close()
        if cancelled:
            # The graceful stop is done (final checkpoint written); cancellation stays
            # cancellation for whoever awaits run().
            raise asyncio.CancelledError()

    async def _loop(self, driver: "_native.Driver", processor: Any, waker: "_Waker") -> bool:
        """Executes the driver's actions until ``Action.Done`` (the hot path: one iteration per
        batch; the actions are compared by identity). True when the run was cancelled."""
        handle = processor.handle
        async_handle = inspect.iscoroutinefunction(handle)
        next_action = driver.next_action
        handled = driver.handled
        sleep = asyncio.sleep
        isawaitable = inspect.isawaitable
        client_id = self.config.client_id
        Action = _native.Action
        HANDLE, SIGNAL, FLUSH, SNAPSHOT, WAIT, DONE, KEYS = (
            Action.Handle,
            Action.Signal,
            Action.Flush,
            Action.Snapshot,
            Action.Wait,
            Action.Done,
            Action.Keys,
        )
        # Shards with a custom key(): the driver asks for the keys of a batch (Action.Keys)
        # and hands out the events of this shard next.
        key = getattr(processor, "key", None) if has_custom_key(processor) else None
        keys: Optional[List[Optional[str]]] = None
        cancelled = False
        try:
            while True:
                if keys is None:
                    action, payload = next_action()
                else:
                    action, payload = next_action(keys=keys)
                    keys = None
                if action is HANDLE:
                    if async_handle:
                        for event in payload:
                            await handle(event)
                    else:
                        for event in payload:
                            r = handle(event)
                            if r is not None and isawaitable(r):
                                await r
                    handled()
                    # Let other tasks (signal handlers, metrics, custom clients) run.
                    try:
                        await sleep(0)
                    except asyncio.CancelledError:
                        _actions.stop_gracefully(driver, client_id)
                        cancelled = True
                elif action is WAIT:
                    cancelled = await _actions.stops_if_cancelled(driver, client_id, waker.wait(payload)) or cancelled
                elif action is SNAPSHOT:
                    _actions.take_snapshot(driver, processor)
                elif action is FLUSH:
                    cancelled = await _actions.flush(driver, processor, client_id) or cancelled
                elif action is SIGNAL:
                    await _actions.stream_signal(processor, payload)
                elif action is DONE:
                    _actions.stopped(client_id)
                    return cancelled
                elif action is KEYS:
                    keys = [_actions.checked_key(processor, key, event) for event in payload]
        except BaseException:
            driver.abort()
            raise
