"""The concurrent action loop (``max_concurrency > 1``, retries or ``on_failure="skip"``):
asyncio tasks run the events the Rust driver starts (``Action.Start``) and report their
outcomes back; every rule (per-key order, the watermark, the completed-set bound, retries,
stop) is the driver's (``src/driver_concurrent.rs``, docs/semantics.md section 15)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any, Dict, List, Optional, Set

from . import _native
from ._actions import (
    checked_key,
    flush,
    is_async,
    settle,
    stopped,
    stops_if_cancelled,
    stream_signal,
    take_snapshot,
)
from ._config import Config, _secs
from ._processor import EventProcessor, has_custom_key

__all__ = ["run_concurrent"]

log = logging.getLogger("memory_service_processor")


async def run_concurrent(driver: "_native.Driver", processor: Any, waker: Any, config: Config) -> bool:
    """Concurrent mode: asyncio tasks run the started events; failures, and completions
    while this loop is busy, go back with the next ``next_action`` call. True when the run
    was cancelled. While this loop waits, a returning handler reports at once
    (``driver.complete``, a same-thread call) and its task goes on with an event that may
    start now, as a plain worker would (docs/semantics.md, section 15). Either way a
    completion is recorded in the step in which the handler returns, and ``snapshot()``
    runs right after the ``next_action`` that asked for it: the completed set stored with
    a snapshot is exactly the set whose effects the snapshot can contain."""
    handle = processor.handle
    client_id = config.client_id
    on_failure = getattr(processor, "on_failure", None)
    if not callable(on_failure):
        on_failure = functools.partial(EventProcessor.on_failure, processor)
    key = getattr(processor, "key", None) if has_custom_key(processor) else None
    async_handle = is_async(handle)
    isawaitable = inspect.isawaitable
    loop = asyncio.get_running_loop()
    release = waker.release
    next_action = driver.next_action
    complete = driver.complete
    current_task = asyncio.current_task
    Action = _native.Action
    START, WAIT, KEYS, SNAPSHOT, FLUSH, SIGNAL, ON_FAILURE, CANCEL, FAILED, DONE = (
        Action.Start, Action.Wait, Action.Keys, Action.Snapshot, Action.Flush, Action.Signal,
        Action.OnFailure, Action.Cancel, Action.Failed, Action.Done,
    )
    done: List[int] = []
    failed: List[int] = []
    errors: Dict[int, BaseException] = {}
    failed_events: Dict[int, Any] = {}
    tasks: Dict[int, "asyncio.Task[None]"] = {}
    cancelling: Set[int] = set()
    abandoned: Set[int] = set()
    fatal: List[BaseException] = []
    parked = [False]  # this loop awaits the waker: returning handlers report at once

    async def run_one(seq: int, event: Any) -> None:
        while True:
            nxt: Optional[List[Any]] = None
            try:
                try:
                    if async_handle:
                        await handle(event)
                    else:
                        r = handle(event)
                        if r is not None and isawaitable(r):
                            await r
                except asyncio.CancelledError:
                    if seq in cancelling:
                        raise
                    # Cancelled from inside the handler, not by the stop: a failed try.
                    errors[seq] = asyncio.CancelledError(
                        f"handler of the event at cursor {event.cursor!r} was cancelled"
                    )
                    failed_events[seq] = event
                    failed.append(seq)
                except BaseException as e:
                    if seq not in abandoned:
                        errors[seq] = e
                        failed_events[seq] = event
                        failed.append(seq)
                        if not isinstance(e, Exception):
                            fatal.append(e)
                else:
                    # Reported in the same step as the handler's return.
                    if seq in abandoned:
                        pass
                    elif parked[0]:
                        try:
                            nxt = complete(seq)
                        except BaseException as e:
                            fatal.append(e)
                    else:
                        done.append(seq)
            finally:
                tasks.pop(seq, None)
                release()
            if not nxt:
                return
            for s, _attempt, ev in nxt[1:]:
                tasks[s] = loop.create_task(run_one(s, ev))
            seq, _attempt, event = nxt[0]
            me = current_task()
            if me is not None:
                tasks[seq] = me

    cancelled = False
    keys: Optional[List[Optional[str]]] = None
    cancel_out: Optional[List[int]] = None
    try:
        while True:
            if fatal:
                raise fatal[0]
            d: Optional[List[int]] = None
            f: Optional[List[int]] = None
            if done:
                d, done = done, []
            if failed:
                f, failed = failed, []
            action, payload = next_action(d, f, cancel_out, keys)
            keys = None
            cancel_out = None
            if action is START:
                for seq, _attempt, event in payload:
                    tasks[seq] = loop.create_task(run_one(seq, event))
            elif action is WAIT:
                if done or failed or fatal:
                    continue
                parked[0] = True
                try:
                    cancelled = await stops_if_cancelled(driver, client_id, waker.wait(payload)) or cancelled
                finally:
                    parked[0] = False
            elif action is KEYS:
                keys = [checked_key(processor, key, event) for event in payload]
            elif action is SNAPSHOT:
                take_snapshot(driver, processor)
            elif action is FLUSH:
                cancelled = await flush(driver, processor, client_id) or cancelled
            elif action is ON_FAILURE:
                event, error = failed_events.pop(payload), errors.pop(payload)
                await settle(on_failure(event, error))
                done.append(payload)
            elif action is CANCEL:
                cancel_out = await _cancel(payload, tasks, cancelling, abandoned, config)
            elif action is FAILED:
                failed_events.pop(payload, None)
                raise errors.pop(payload)
            elif action is SIGNAL:
                await stream_signal(processor, payload)
            elif action is DONE:
                stopped(client_id)
                return cancelled
    except BaseException:
        driver.abort()
        for t in tasks.values():
            t.cancel()
        raise

async def _cancel(
    seqs: List[int],
    tasks: Dict[int, "asyncio.Task[None]"],
    cancelling: Set[int],
    abandoned: Set[int],
    config: Config,
) -> List[int]:
    """Stop timeout passed: cancels the tasks of ``seqs``, awaits them (bounded) and
    returns those that did not finish (redone next run); the others reported themselves."""
    waiting: Dict[int, "asyncio.Task[None]"] = {}
    for seq in seqs:
        t = tasks.get(seq)
        if t is not None:
            cancelling.add(seq)
            t.cancel()
            waiting[seq] = t
    if waiting:
        budget = max(1.0, _secs(config.stop_timeout))
        await asyncio.wait(list(waiting.values()), timeout=budget)
    out = []
    for seq in seqs:
        t = waiting.get(seq)
        if t is None:
            continue  # finished before the cancellation: already reported
        if t.cancelled():
            out.append(seq)
        elif not t.done():
            abandoned.add(seq)  # ignores its cancellation: its outcome no longer counts
            log.warning("a handler ignored its cancellation at stop; its event is redone next run")
            out.append(seq)
        # else it finished anyway and reported itself as done or failed
    return out
