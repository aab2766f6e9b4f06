"""asyncio helpers for the native bridge."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Set, TypeVar

T = TypeVar("T")

# asyncio keeps only weak references to tasks: a task that waits on a future nobody else
# references can be garbage-collected mid-flight. The native bridge runs custom clients'
# coroutines in tasks it does not hold, so each one anchors itself here while it runs.
_RUNNING: "Set[asyncio.Task[Any]]" = set()


async def anchor(awaitable: Awaitable[T]) -> T:
    """Awaits ``awaitable`` while keeping the current task strongly referenced."""
    task = asyncio.current_task()
    if task is not None:
        _RUNNING.add(task)
    try:
        return await awaitable
    finally:
        if task is not None:
            _RUNNING.discard(task)
