"""`EventProcessor`: a convenience base class for processors."""

from __future__ import annotations

from typing import Any, Awaitable, Optional, Union

from ._model import EventEnvelope

__all__ = ["EventProcessor"]


class EventProcessor:
    """Base class with sensible defaults. Any object with the five methods is accepted too.

    Defaults: ``load`` restores ``last_event_cursor`` from ``state["lastEventCursor"]``;
    ``snapshot`` returns ``{"lastEventCursor": ...}``; ``flush`` does nothing. Subclasses that
    call ``super().handle(event)`` (or set ``self.last_event_cursor`` themselves) keep the
    resume position right. ``handle`` and ``flush`` may be plain methods or coroutines.

    The runtime calls every method on the event loop thread that awaits ``Runtime.run()``,
    one at a time, events in stream order.
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
        """Process one event. The default only records its cursor."""
        self.last_event_cursor = event.cursor
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
