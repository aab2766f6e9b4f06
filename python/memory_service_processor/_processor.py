"""`EventProcessor`: a convenience base class for processors."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Optional, Union

from . import payload as _payload
from ._model import EventEnvelope

__all__ = ["EventProcessor"]

log = logging.getLogger("memory_service_processor")


class EventProcessor:
    """Base class with sensible defaults. Any object with the five methods is accepted too.

    Defaults: ``load`` restores ``last_event_cursor`` from ``state["lastEventCursor"]``;
    ``snapshot`` returns ``{"lastEventCursor": ...}``; ``flush`` does nothing. Subclasses that
    call ``super().handle(event)`` (or set ``self.last_event_cursor`` themselves) keep the
    resume position right. ``handle`` and ``flush`` may be plain methods or coroutines.

    The runtime calls every method on the event loop thread that awaits ``Runtime.run()``.
    With the default ``max_concurrency=1`` events arrive one at a time in stream order; with
    more, ``handle`` calls of events with the same :meth:`key` never overlap and keep stream
    order, and a handler should change its state only after its last ``await`` (see the
    README's "Concurrency" section).
    """

    #: Override or set as a class attribute: identifies the checkpoint format.
    CONTENT_TYPE: str = ""

    last_event_cursor: Optional[str] = None

    def content_type(self) -> str:
        """The checkpoint's content type (e.g. ``application/vnd.acme.counter+json;v=1``)."""
        if not self.CONTENT_TYPE:
            raise NotImplementedError(
                f"{type(self).__name__} must override content_type() or set CONTENT_TYPE"
            )
        return self.CONTENT_TYPE

    def load(self, state: Any) -> None:
        """Restore from the last checkpoint's decoded JSON (called only if one exists)."""
        if isinstance(state, dict):
            cursor = state.get("lastEventCursor")
            self.last_event_cursor = cursor if isinstance(cursor, str) and cursor else None

    def handle(self, event: EventEnvelope) -> Union[None, Awaitable[None]]:
        """Process one event. The default only records its cursor (an event without a cursor
        leaves it unchanged)."""
        if event.cursor:
            self.last_event_cursor = event.cursor
        return None

    def key(self, event: EventEnvelope) -> Optional[str]:
        """The lane of an event: events with the same key are handled one at a time, in
        stream order; events with different keys may overlap (``max_concurrency > 1``).
        ``None`` is one shared lane. Default: the event's conversation (summary
        ``conversation``, full ``conversationId``, a full conversation's ``id``), else its
        conversation group, else ``None``, exactly :func:`memory_service_processor.payload.default_key`
        (computed natively unless this method is overridden)."""
        return _payload.default_key(event)

    def on_failure(self, event: EventEnvelope, error: BaseException) -> Union[None, Awaitable[None]]:
        """Called once for an event given up on after its last try with
        ``on_failure="skip"``; the event then counts as done. If this raises, the run stops
        with that exception. The default logs a warning."""
        log.warning(
            "giving up on the event at cursor %s (%s %s): %s: %s",
            event.cursor, event.kind, event.event, type(error).__name__, error,
        )
        return None

    def snapshot(self) -> Any:
        """A cheap, side-effect-free JSON value of the state; include ``lastEventCursor``."""
        return {"lastEventCursor": self.last_event_cursor}

    def on_stream_event(self, event: EventEnvelope) -> Union[None, Awaitable[None]]:
        """Optional hook: connection-level signals (``kind == "stream"``: ``phase``,
        ``invalidate``, ``evicted``), never passed to :meth:`handle`. The runtime already
        acts on them (stale-cursor policy, resume after eviction); the default ignores them."""
        return None

    def flush(self) -> Union[None, Awaitable[None]]:
        """Called every ``checkpoint_interval`` and on stop, before the checkpoint is saved."""
        return None


def has_custom_key(processor: Any) -> bool:
    """True when ``processor`` computes lane keys itself: it has a callable ``key`` other than
    :meth:`EventProcessor.key` (the default, computed natively)."""
    key = getattr(processor, "key", None)
    if not callable(key):
        return False
    return getattr(key, "__func__", None) is not EventProcessor.key
