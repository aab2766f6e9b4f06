"""Projects conversation entries into a local SQLite file, idempotently.

Run it (the database file is the constructor's ``path``, here given with ``--arg``)::

    memory-service-processor run examples/sqlite_projection.py:SqliteProjection \\
        --endpoint localhost:8082 --client-id sqlite-projection --after-cursor start \\
        --kinds entry --arg path=projection.sqlite3

    sqlite3 projection.sqlite3 \\
        'SELECT conversation, entries FROM conversation_stats ORDER BY entries DESC LIMIT 5'

This is the pattern for any processor whose results live *outside* the checkpoint (a database,
a search index, files):

1. **Idempotent writes keyed by the event's cursor.** Every entry becomes one row whose primary
   key is the cursor (``INSERT OR IGNORE``). The per-conversation totals are only incremented
   when that insert really added a row, in the same transaction. An event delivered twice
   (after a crash, or a server fail-over) changes nothing the second time.
2. **Commit in ``flush()``.** ``handle()`` writes into an open transaction; ``flush()`` (called
   every ``checkpoint_interval`` and on stop) commits it. Batching commits keeps SQLite fast.
3. **The checkpoint never runs ahead of the database.** ``snapshot()`` reports the cursor of
   the last *committed* event, not the last handled one. If the process dies between two
   flushes, the uncommitted rows are rolled back by SQLite and the runtime resumes after the
   committed cursor, so they are delivered again and written again. Nothing is lost, and
   thanks to (1) nothing is counted twice.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from typing import Any, Dict, List, Optional, Tuple

from memory_service_processor import EventEnvelope, EventProcessor, payload

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    cursor       TEXT PRIMARY KEY,   -- the event's cursor: the idempotency key
    conversation TEXT NOT NULL,
    entry        TEXT,
    role         TEXT,
    channel      TEXT,
    text         TEXT,
    created_at   TEXT
);
CREATE TABLE IF NOT EXISTS conversation_stats (
    conversation TEXT PRIMARY KEY,
    entries      INTEGER NOT NULL DEFAULT 0,
    user_entries INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS projection_state (
    key   TEXT PRIMARY KEY,
    value TEXT
);
"""


class SqliteProjection(EventProcessor):
    """Writes every ``entry`` event as a row of ``entries`` and keeps per-conversation totals.

    ``path`` is the SQLite file (default: ``$SQLITE_PROJECTION_PATH`` or
    ``projection.sqlite3`` in the working directory).
    """

    CONTENT_TYPE = "application/vnd.example.sqlite-projection+json;v=1"

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path or os.environ.get("SQLITE_PROJECTION_PATH") or "projection.sqlite3"
        self.db = sqlite3.connect(self.path)
        self.db.executescript(SCHEMA)
        self.db.commit()
        #: The last event handled (maybe not committed yet).
        self.last_event_cursor: Optional[str] = None
        #: The last event whose effects are committed: what the checkpoint says.
        self.committed_cursor: Optional[str] = None
        self.inserted = 0  # rows added by this process (duplicates excluded)

    def load(self, state: Any) -> None:
        """Resumes after the checkpoint's cursor; the rows themselves are in the database."""
        super().load(state)
        self.committed_cursor = self.last_event_cursor
        stored = self.db.execute("SELECT value FROM projection_state WHERE key = 'last_cursor'").fetchone()
        log.info(
            "sqlite projection %s: checkpoint cursor %s, database committed through %s",
            self.path,
            self.committed_cursor,
            stored[0] if stored else None,
        )

    def handle(self, event: EventEnvelope) -> None:
        """Adds the entry's row (once per cursor) inside the open transaction."""
        if event.kind == "entry" and event.cursor is not None:
            # payload.* read both shapes: the full entry the runtime asks for, or a summary
            conversation = payload.conversation_id(event)
            if conversation:
                role = payload.role(event)
                data = event.data if isinstance(event.data, dict) else {}
                inserted = self.db.execute(
                    "INSERT OR IGNORE INTO entries (cursor, conversation, entry, role, channel, text, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        event.cursor,
                        conversation,
                        payload.entry_id(event),
                        role,
                        payload.channel(event),
                        payload.text(event),  # full payloads only
                        data.get("createdAt"),  # full payloads only
                    ),
                ).rowcount
                if inserted == 1:  # a duplicate delivery inserts nothing and counts nothing
                    self.inserted += 1
                    self.db.execute("INSERT OR IGNORE INTO conversation_stats (conversation) VALUES (?)", (conversation,))
                    self.db.execute(
                        "UPDATE conversation_stats SET entries = entries + 1, user_entries = user_entries + ?"
                        " WHERE conversation = ?",
                        (1 if str(role or "").upper() == "USER" else 0, conversation),
                    )
        super().handle(event)  # self.last_event_cursor = event.cursor

    def flush(self) -> None:
        """Commits everything handled so far; the next checkpoint then covers it."""
        if self.last_event_cursor is not None and self.last_event_cursor != self.committed_cursor:
            self.db.execute(
                "INSERT OR REPLACE INTO projection_state (key, value) VALUES ('last_cursor', ?)",
                (self.last_event_cursor,),
            )
        self.db.commit()
        self.committed_cursor = self.last_event_cursor

    def snapshot(self) -> Dict[str, Any]:
        """Only the committed position: the checkpoint never claims uncommitted rows."""
        return {"lastEventCursor": self.committed_cursor, "database": os.path.basename(self.path)}

    # -- queries -------------------------------------------------------------------------
    def top_conversations(self, n: int = 5) -> List[Tuple[str, int, int]]:
        """``(conversation, entries, user_entries)`` of the ``n`` busiest conversations
        (committed data only)."""
        return list(
            self.db.execute(
                "SELECT conversation, entries, user_entries FROM conversation_stats"
                " ORDER BY entries DESC, conversation LIMIT ?",
                (n,),
            )
        )

    def close(self) -> None:
        """Closes the database; uncommitted rows are rolled back (as in a crash)."""
        self.db.close()
