"""Per-conversation turn counts and the busiest conversations (the processor of the demo).

``memory-service-processor demo`` runs it against an embedded Memory Service. Against a real
one::

    memory-service-processor run examples/turn_counter.py:TurnCounter \\
        --endpoint localhost:8082 --client-id turn-counter --after-cursor start \\
        --entry-channels history,context

It follows four kinds of events, reading them with :mod:`memory_service_processor.payload` so
it works on full payloads (what the runtime asks for) and on summary payloads alike:

* ``conversation`` ``created`` / ``updated`` / ``deleted``: the conversation's group, its
  title (full payloads only), whether it is archived, and a hard delete;
* ``entry`` ``created``: a *turn* in the ``history`` channel (counted per role: ``USER`` is
  the person, anything else the assistant), or an agent *note* in the ``context`` channel;
* ``membership`` ``created`` / ``updated`` / ``deleted``: whom the conversation group is
  shared with (the owner is not a membership event);
* ``response`` ``deleted`` with ``status: "completed"``: a recorded assistant response.

The whole state lives in the checkpoint (a few hundred bytes per conversation), so a restart
continues from the last checkpoint without counting anything twice.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from memory_service_processor import EventEnvelope, EventProcessor, payload


class ConversationStats:
    """What the counter knows about one conversation."""

    __slots__ = ("conversation", "group", "title", "user_turns", "assistant_turns", "notes", "responses", "archived", "deleted")

    def __init__(self, conversation: str) -> None:
        self.conversation = conversation
        self.group: Optional[str] = None
        self.title: str = ""
        self.user_turns = 0
        self.assistant_turns = 0
        self.notes = 0
        self.responses = 0
        self.archived = False
        self.deleted = False

    @property
    def turns(self) -> int:
        """Entries in the ``history`` channel (user and assistant)."""
        return self.user_turns + self.assistant_turns

    def to_json(self) -> Dict[str, Any]:
        """A compact JSON form for the checkpoint."""
        return {
            "g": self.group,
            "t": self.title,
            "u": self.user_turns,
            "a": self.assistant_turns,
            "n": self.notes,
            "r": self.responses,
            "x": self.archived,
            "d": self.deleted,
        }

    @classmethod
    def from_json(cls, conversation: str, doc: Dict[str, Any]) -> "ConversationStats":
        """The inverse of :meth:`to_json`."""
        s = cls(conversation)
        s.group = doc.get("g")
        s.title = doc.get("t") or ""
        s.user_turns = int(doc.get("u", 0))
        s.assistant_turns = int(doc.get("a", 0))
        s.notes = int(doc.get("n", 0))
        s.responses = int(doc.get("r", 0))
        s.archived = bool(doc.get("x", False))
        s.deleted = bool(doc.get("d", False))
        return s


class TurnCounter(EventProcessor):
    """Counts turns per conversation and ranks the busiest ones."""

    CONTENT_TYPE = "application/vnd.example.turn-counter+json;v=1"

    def __init__(self) -> None:
        self.conversations: Dict[str, ConversationStats] = {}
        self.members: Dict[str, List[str]] = {}  # conversation group -> users
        self.events_seen = 0
        self.last_event_cursor = None

    # -- the processor interface ---------------------------------------------------------
    def load(self, state: Any) -> None:
        """Restores the counts from the last checkpoint (an empty state starts from zero)."""
        super().load(state)
        state = state if isinstance(state, dict) else {}
        self.conversations = {
            cid: ConversationStats.from_json(cid, doc) for cid, doc in (state.get("conversations") or {}).items()
        }
        self.members = {g: list(users) for g, users in (state.get("members") or {}).items()}
        self.events_seen = int(state.get("eventsSeen", 0))

    def handle(self, event: EventEnvelope) -> None:
        """Updates the counts for one event."""
        self.events_seen += 1
        data = event.data if event.raw_data else {}
        if isinstance(data, dict):
            if event.kind == "entry":
                self._entry(event)
            elif event.kind == "conversation":
                self._conversation(event.event, event, data)
            elif event.kind == "membership":
                self._membership(event.event, event, data)
            elif event.kind == "response" and event.event == "deleted" and data.get("status") == "completed":
                conversation = payload.conversation_id(event)
                if conversation:
                    self._get(conversation).responses += 1
        super().handle(event)

    def snapshot(self) -> Dict[str, Any]:
        """The whole state and the resume position."""
        return {
            "conversations": {cid: s.to_json() for cid, s in self.conversations.items()},
            "members": {g: list(users) for g, users in self.members.items()},
            "eventsSeen": self.events_seen,
            "lastEventCursor": self.last_event_cursor,
        }

    # -- queries -------------------------------------------------------------------------
    def busiest(self, n: int = 5) -> List[ConversationStats]:
        """The ``n`` conversations (not deleted) with the most turns; ties by conversation id."""
        alive = [s for s in self.conversations.values() if not s.deleted]
        alive.sort(key=lambda s: (-s.turns, s.conversation))
        return alive[:n]

    def member_count(self, stats: ConversationStats) -> int:
        """How many users the conversation's group is shared with (besides its owner)."""
        return len(self.members.get(stats.group or "", ()))

    @property
    def total_turns(self) -> int:
        """Turns over all conversations."""
        return sum(s.turns for s in self.conversations.values())

    # -- event handlers ------------------------------------------------------------------
    def _get(self, conversation: str) -> ConversationStats:
        s = self.conversations.get(conversation)
        if s is None:
            s = self.conversations[conversation] = ConversationStats(conversation)
        return s

    def _entry(self, event: EventEnvelope) -> None:
        conversation = payload.conversation_id(event)
        if not conversation:
            return
        s = self._get(conversation)
        s.group = s.group or payload.group_id(event)
        channel = (payload.channel(event) or "history").lower()
        if channel == "history":
            if (payload.role(event) or "").upper() == "USER":
                s.user_turns += 1
            else:
                s.assistant_turns += 1
        elif channel == "context":
            s.notes += 1

    def _conversation(self, action: str, event: EventEnvelope, data: Dict[str, Any]) -> None:
        conversation = payload.conversation_id(event)
        if not conversation:
            return
        s = self._get(conversation)
        s.group = payload.group_id(event) or s.group
        if isinstance(data.get("title"), str) and data["title"]:  # full payloads only
            s.title = data["title"]
        if "archived" in data:  # summary of an archive / unarchive
            s.archived = bool(data["archived"])
        elif "id" in data:  # full payload: the conversation as it is now
            s.archived = bool(data.get("archivedAt"))
        if action == "deleted":
            s.deleted = True

    def _membership(self, action: str, event: EventEnvelope, data: Dict[str, Any]) -> None:
        group, user = payload.group_id(event), data.get("user")
        if not group or not isinstance(user, str):
            return
        users = self.members.setdefault(group, [])
        if action == "deleted":
            if user in users:
                users.remove(user)
        elif user not in users:
            users.append(user)
