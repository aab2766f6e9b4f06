"""What an event is about, whatever the payload shape a Memory Service sent.

A Memory Service sends ``conversation`` and ``entry`` events in one of two shapes:

* **summary** (``detail="summary"``): snake_case ids, for example
  ``{"conversation": "7b1d…", "conversation_group": "2a96…", "entry": "6a90…",
  "entry_channel": "history", "entry_content_type": "history", "entry_role": "USER"}``;
* **full** (``detail="full"``, what the runtime asks for): the stored entity in camelCase,
  for example ``{"id": "6a90…", "conversationId": "7b1d…", "channel": "history",
  "contentType": "history", "content": [{"role": "USER", "text": "Hello"}],
  "conversationGroupId": "2a96…", ...}``.

``response`` and ``membership`` events have the summary shape in both modes. The helpers
below read either shape, so a processor works against any server::

    from memory_service_processor import payload

    def handle(self, event):
        if event.kind == "entry":
            role = payload.role(event) or "unknown"
            self.by_role[role] = self.by_role.get(role, 0) + 1

Every helper takes an :class:`~memory_service_processor.EventEnvelope` (or any object with
``kind`` and ``data``), or a payload ``dict`` together with its ``kind`` (without a kind the
shape is guessed from the keys). They never raise on odd payloads: a missing key, a value of
the wrong type or data that is not a JSON object gives ``None``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple, TypedDict, Union

__all__ = [
    "ContentItem",
    "ConversationSummary",
    "ConversationArchiveSummary",
    "ConversationDeletedSummary",
    "ConversationFull",
    "EntrySummary",
    "EntryFull",
    "ResponsePayload",
    "MembershipPayload",
    "MembershipDeletedPayload",
    "EventLike",
    "conversation_id",
    "group_id",
    "entry_id",
    "role",
    "channel",
    "text",
    "content_type",
    "default_key",
]


# --- payload shapes -----------------------------------------------------------------------


class ContentItem(TypedDict, total=False):
    """One item of an entry's ``content`` (``{"role": "USER", "text": "Hello"}``)."""

    role: str
    text: str


class ConversationSummary(TypedDict):
    """``conversation`` / ``created`` and ``updated`` (title, metadata), summary mode."""

    conversation: str
    conversation_group: str


class ConversationArchiveSummary(ConversationSummary):
    """``conversation`` / ``updated`` by an archive or unarchive, summary mode."""

    members: List[str]
    archived: bool


class ConversationDeletedSummary(ConversationSummary):
    """``conversation`` / ``deleted`` (a hard delete), summary mode; never sent in full mode."""

    members: List[str]


class _EntrySummaryBase(TypedDict):
    conversation: str
    conversation_group: str
    entry: str
    entry_channel: str
    entry_content_type: str


class EntrySummary(_EntrySummaryBase, total=False):
    """``entry`` / ``created``, summary mode. ``entry_role`` is the first content item's role,
    absent when there is none."""

    entry_role: str


class _ConversationFullBase(TypedDict):
    id: str
    title: str
    ownerUserId: str
    metadata: Dict[str, Any]
    createdAt: str
    updatedAt: str
    conversationGroupId: str


class ConversationFull(_ConversationFullBase, total=False):
    """A ``conversation`` event in full mode: the stored conversation (timestamps RFC 3339)."""

    agentId: str
    forkedAtEntryId: str
    forkedAtConversationId: str
    startedByConversationId: str
    startedByEntryId: str
    archivedAt: str
    accessLevel: str
    hasResponseInProgress: bool


class _EntryFullBase(TypedDict):
    id: str
    conversationId: str
    channel: str
    contentType: str
    #: the content items, or ``"b64:<base64>"`` for content that is not JSON
    content: Union[List[ContentItem], str]
    createdAt: str
    conversationGroupId: str


class EntryFull(_EntryFullBase, total=False):
    """An ``entry`` event in full mode: the stored entry."""

    userId: str
    clientId: str
    agentId: str
    epoch: int
    seq: int
    indexedContent: str
    indexedAt: str


class ResponsePayload(TypedDict):
    """``response`` / ``created`` (``status: "started"``) and ``deleted`` (``"completed"`` or
    ``"failed"``), both modes. ``recording`` is the conversation id."""

    conversation: str
    conversation_group: str
    recording: str
    status: str


class MembershipPayload(TypedDict):
    """``membership`` / ``created`` and ``updated``, both modes (``role``: owner, manager,
    writer or reader)."""

    conversation_group: str
    user: str
    role: str


class MembershipDeletedPayload(TypedDict):
    """``membership`` / ``deleted``, both modes."""

    conversation_group: str
    user: str


#: An event (``EventEnvelope`` or anything with ``kind`` and ``data``) or a payload ``dict``.
EventLike = Any


# --- helpers ------------------------------------------------------------------------------


def _guess_kind(data: Mapping[str, Any]) -> str:
    """The kind a bare payload most likely has."""
    if "entry" in data or "conversationId" in data or "contentType" in data:
        return "entry"
    if "recording" in data or "status" in data:
        return "response"
    if "user" in data and "conversation" not in data:
        return "membership"
    return "conversation"


def _unpack(event: EventLike, kind: Optional[str]) -> Tuple[str, Optional[Mapping[str, Any]]]:
    """``(kind, data)`` of an event or a payload; data is None unless it is a mapping."""
    if isinstance(event, Mapping):
        data: Any = event
    else:
        try:
            data = event.data
        except Exception:  # undecodable raw data, or not an event at all
            data = None
        if kind is None:
            kind = getattr(event, "kind", None)
    if not isinstance(data, Mapping):
        return (kind or "", None)
    return (kind if kind is not None else _guess_kind(data), data)


def _str(data: Mapping[str, Any], *keys: str) -> Optional[str]:
    """The first of ``keys`` whose value is a string."""
    for k in keys:
        v = data.get(k)
        if isinstance(v, str):
            return v
    return None


def conversation_id(event: EventLike, kind: Optional[str] = None) -> Optional[str]:
    """The conversation an event is about: summary ``conversation``, full entry
    ``conversationId``, full conversation ``id``; ``None`` for membership events.

    >>> conversation_id({"id": "c1", "title": "Trip", "conversationGroupId": "g1"}, "conversation")
    'c1'
    >>> conversation_id({"conversation": "c1", "conversation_group": "g1", "entry": "e1"})
    'c1'
    """
    kind, data = _unpack(event, kind)
    if data is None:
        return None
    found = _str(data, "conversation", "conversationId")
    if found is None and kind == "conversation":
        found = _str(data, "id")
    return found


def group_id(event: EventLike, kind: Optional[str] = None) -> Optional[str]:
    """The conversation group: ``conversation_group`` or ``conversationGroupId``.

    >>> group_id({"conversation_group": "g1", "user": "bob", "role": "reader"}, "membership")
    'g1'
    """
    _, data = _unpack(event, kind)
    return None if data is None else _str(data, "conversation_group", "conversationGroupId")


def entry_id(event: EventLike, kind: Optional[str] = None) -> Optional[str]:
    """An entry event's entry id: summary ``entry``, full ``id`` (``None`` for other kinds).

    >>> entry_id({"id": "e1", "conversationId": "c1", "content": []}, "entry")
    'e1'
    """
    kind, data = _unpack(event, kind)
    if data is None or kind != "entry":
        return None
    return _str(data, "entry", "id")


def _items(data: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    content = data.get("content")
    if not isinstance(content, list):
        return []  # absent, or "b64:..." content that is not JSON
    return [item for item in content if isinstance(item, Mapping)]


def role(event: EventLike, kind: Optional[str] = None) -> Optional[str]:
    """An entry's role (``"USER"``, ``"AI"``, ...): summary ``entry_role``, full the first
    content item's ``role``; ``None`` when the entry has none or for other kinds.

    >>> role({"id": "e1", "conversationId": "c1", "content": [{"role": "AI", "text": "Hi"}]}, "entry")
    'AI'
    >>> role({"conversation": "c1", "entry": "e1", "entry_role": "USER"}, "entry")
    'USER'
    >>> role({"id": "e1", "conversationId": "c1", "content": "b64:AAFo"}, "entry") is None
    True
    """
    kind, data = _unpack(event, kind)
    if data is None or kind != "entry":
        return None
    found = _str(data, "entry_role")
    if found is not None:
        return found
    content = data.get("content")
    if isinstance(content, list) and content and isinstance(content[0], Mapping):
        first = content[0].get("role")
        if isinstance(first, str) and first.strip():
            return first.strip()
    return None


def channel(event: EventLike, kind: Optional[str] = None) -> Optional[str]:
    """An entry's channel (``history``, ``context`` or ``journal``).

    >>> channel({"conversation": "c1", "entry": "e1", "entry_channel": "context"}, "entry")
    'context'
    """
    kind, data = _unpack(event, kind)
    if data is None or kind != "entry":
        return None
    return _str(data, "entry_channel", "channel")


def content_type(event: EventLike, kind: Optional[str] = None) -> Optional[str]:
    """An entry's content type: ``entry_content_type`` or ``contentType``.

    >>> content_type({"id": "e1", "conversationId": "c1", "contentType": "history"}, "entry")
    'history'
    """
    kind, data = _unpack(event, kind)
    if data is None or kind != "entry":
        return None
    return _str(data, "entry_content_type", "contentType")


def text(event: EventLike, kind: Optional[str] = None) -> Optional[str]:
    """The text of an entry: its content items' ``text`` joined with newlines (full mode).

    A summary payload carries no content, so this is ``None`` there, as it is for content
    that is not JSON (``"b64:..."``) or has no text.

    >>> text({"id": "e1", "conversationId": "c1",
    ...       "content": [{"role": "USER", "text": "Hello"}, {"text": "again"}]}, "entry")
    'Hello\\nagain'
    >>> text({"conversation": "c1", "entry": "e1", "entry_role": "USER"}, "entry") is None
    True
    """
    kind, data = _unpack(event, kind)
    if data is None or kind != "entry":
        return None
    parts = [item["text"] for item in _items(data) if isinstance(item.get("text"), str)]
    return "\n".join(parts) if parts else None


def default_key(event: EventLike, kind: Optional[str] = None) -> Optional[str]:
    """The default concurrency key: the conversation, else the group, else ``None``
    (membership events are keyed by their group).

    >>> default_key({"conversation_group": "g1", "user": "bob"}, "membership")
    'g1'
    >>> default_key({"phase": "live"}, "stream") is None
    True
    """
    found = conversation_id(event, kind)
    return found if found is not None else group_id(event, kind)
