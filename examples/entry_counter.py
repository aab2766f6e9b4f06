"""Counts conversation entries: the smallest useful processor. Copy it and start from here.

Run it against a Memory Service (or ``python -m memory_service_processor.testing serve``)::

    memory-service-processor run examples/entry_counter.py:EntryCounter \\
        --endpoint localhost:8082 --client-id entry-counter \\
        --kinds entry --after-cursor start

What it shows:

* the processor's state (``count``, ``by_role``) travels in the checkpoint: ``snapshot()``
  returns it, ``load()`` gets it back after a restart, so the count continues where it was;
* ``lastEventCursor`` in the snapshot is the resume position: everything up to that event is
  reflected in ``count`` (the base class keeps ``self.last_event_cursor`` up to date when
  ``handle`` calls ``super().handle(event)``);
* after a crash the events since the last checkpoint are delivered again (at-least-once), so a
  counter kept only in the checkpoint never double counts: state and position are saved
  together, in one write;
* :mod:`memory_service_processor.payload` reads the role whatever the payload shape: the
  runtime asks for full payloads (the stored entry, ``content: [{"role": "USER", ...}]``),
  a summary subscription gets ``entry_role``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict

from memory_service_processor import EventEnvelope, EventProcessor, payload

log = logging.getLogger(__name__)


class EntryCounter(EventProcessor):
    """Counts ``entry`` events, in total and per role (``USER``, ``AI``, ...)."""

    CONTENT_TYPE = "application/vnd.example.entry-counter+json;v=1"

    def __init__(self) -> None:
        self.count = 0
        self.by_role: Dict[str, int] = {}
        self.last_event_cursor = None

    def load(self, state: Any) -> None:
        """Restores the counts from the last checkpoint (tolerates an empty or reset state)."""
        super().load(state)  # restores last_event_cursor
        state = state if isinstance(state, dict) else {}
        self.count = int(state.get("count", 0))
        self.by_role = {str(k): int(v) for k, v in (state.get("byRole") or {}).items()}
        log.info("entry counter resumed at %d entries", self.count)

    def handle(self, event: EventEnvelope) -> None:
        """Counts the event if it is an entry; always records its cursor."""
        if event.kind == "entry":
            self.count += 1
            role = payload.role(event) or "unknown"  # the first content item's role
            self.by_role[role] = self.by_role.get(role, 0) + 1
        super().handle(event)  # self.last_event_cursor = event.cursor

    def snapshot(self) -> Dict[str, Any]:
        """The whole state, plus the resume position."""
        return {"count": self.count, "byRole": dict(self.by_role), "lastEventCursor": self.last_event_cursor}
