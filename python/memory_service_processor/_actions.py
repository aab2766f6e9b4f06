"""What both action loops (``_runtime`` sequential, ``_concurrent``) do the same way for the
driver's actions: snapshots, flushes, stream signals, keys, a cancellation turned into a
graceful stop, the end of the run. The hot paths (handling events) stay in the loops."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from typing import Any, Awaitable, Optional

from . import _native

log = logging.getLogger("memory_service_processor")


def encode_snapshot(processor: Any, value: Any) -> str:
    """``snapshot()``'s value as JSON text; ``TypeError`` naming the processor if it is not JSON."""
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{type(processor).__name__}.snapshot() returned a value that is not JSON-serializable: {e}"
        ) from e


def submit_snapshot(driver: "_native.Driver", processor: Any, text: str) -> None:
    """Hands the snapshot's JSON text to the driver. A value no checkpoint can hold (nested too
    deep, a number beyond a 64-bit float, over ``max_message_size``, a string that is not valid
    Unicode) raises ``ValueError`` naming the processor and the limit (docs/semantics.md,
    section 7)."""
    try:
        driver.submit_snapshot(text)
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{type(processor).__name__}.snapshot() returned a string that is not valid Unicode "
            f"({e.reason} in the JSON text at position {e.start}): checkpoints are UTF-8"
        ) from None
    except ValueError as e:
        raise ValueError(f"{type(processor).__name__}.snapshot() returned a value no checkpoint can hold: {e}") from None


def take_snapshot(driver: "_native.Driver", processor: Any) -> None:
    """``Action.Snapshot``: calls ``snapshot()`` on the loop thread and submits its JSON."""
    submit_snapshot(driver, processor, encode_snapshot(processor, processor.snapshot()))


def is_async(fn: Any) -> bool:
    """True for a coroutine function (or an object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def checked_key(processor: Any, key: Any, event: Any) -> Optional[str]:
    """``processor.key(event)``, which must be a ``str`` or ``None``."""
    k = key(event)
    if k is None or isinstance(k, str):
        return k
    raise TypeError(
        f"{type(processor).__name__}.key() must return a str or None, got {type(k).__name__} "
        f"for the event at cursor {event.cursor!r}"
    )


async def settle(result: Any) -> None:
    """Awaits what a hook returned when it is awaitable (hooks may be sync or async)."""
    if result is not None and inspect.isawaitable(result):
        await result


def stop_gracefully(driver: "_native.Driver", client_id: str) -> None:
    """The task awaiting ``run()`` was cancelled between events: a graceful stop (the driver
    flushes and writes the final checkpoint; ``run()`` raises ``CancelledError`` again at the
    end)."""
    log.info("run of %s cancelled: stopping gracefully", client_id)
    driver.stop()


async def stops_if_cancelled(driver: "_native.Driver", client_id: str, waiting: Awaitable[Any]) -> bool:
    """Awaits ``waiting``; a cancellation meanwhile is a graceful stop
    (:func:`stop_gracefully`). True when that happened."""
    try:
        await waiting
    except asyncio.CancelledError:
        stop_gracefully(driver, client_id)
        return True
    return False


async def flush(driver: "_native.Driver", processor: Any, client_id: str) -> bool:
    """``Action.Flush``: calls ``flush()`` (if any), reports it, then lets the event loop run
    (signal handlers such as SIGTERM -> stop, other tasks) so a slow or sync flush cannot
    starve it. True when the run was cancelled meanwhile."""
    hook = getattr(processor, "flush", None)
    if hook is not None:
        await settle(hook())
    driver.flushed()
    return await stops_if_cancelled(driver, client_id, asyncio.sleep(0))


async def stream_signal(processor: Any, event: Any) -> None:
    """``Action.Signal``: the optional ``on_stream_event`` hook (never ``handle``)."""
    hook = getattr(processor, "on_stream_event", None)
    if hook is not None:
        await settle(hook(event))


def stopped(client_id: str) -> None:
    """``Action.Done``: the run is over."""
    log.info("processor %s stopped", client_id, extra={"client_id": client_id})
