"""Events, checkpoints, subscription requests and the client protocols."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any, AsyncIterator, Optional, Sequence

from ._native import EventEnvelope

try:  # Python 3.8+: typing.Protocol
    from typing import Protocol, runtime_checkable
except ImportError:  # pragma: no cover
    from typing_extensions import Protocol, runtime_checkable  # type: ignore

__all__ = [
    "EventEnvelope",
    "Checkpoint",
    "SubscribeRequest",
    "EventStream",
    "EventClient",
    "CheckpointClient",
]


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A stored processor checkpoint (immutable).

    ``value`` is the decoded JSON the processor's ``snapshot()`` returned; ``updated_at`` is an
    aware :class:`datetime.datetime` (UTC) or ``None`` when the store does not say.
    """

    client_id: str
    content_type: str
    value: Any
    updated_at: Optional[_dt.datetime] = None

    def __post_init__(self) -> None:
        if self.updated_at is not None and self.updated_at.tzinfo is None:
            raise ValueError("Checkpoint.updated_at must be timezone-aware")

    @classmethod
    def _from_native(cls, t: "tuple[str, str, str, Optional[float]]") -> "Checkpoint":
        import json

        client_id, content_type, value_json, updated = t
        when = None if updated is None else _dt.datetime.fromtimestamp(updated, _dt.timezone.utc)
        return cls(client_id, content_type, json.loads(value_json), when)


@dataclasses.dataclass(frozen=True)
class SubscribeRequest:
    """What a subscription asks the server for (the wire's ``SubscribeEventsRequest``)."""

    kinds: Sequence[str] = ()
    detail: Optional[str] = "full"
    after_cursor: Optional[str] = None
    scope: str = "admin"
    justification: Optional[str] = None
    entry_channels: Sequence[str] = ()
    entry_content_types: Sequence[str] = ()
    entry_roles: Sequence[str] = ()
    conversation_ids: Sequence[str] = ()


@runtime_checkable
class EventStream(Protocol):
    """An open subscription: ``await recv()`` returns the next event and raises
    ``StopAsyncIteration`` at a clean end of the stream."""

    async def recv(self) -> EventEnvelope: ...


@runtime_checkable
class EventClient(Protocol):
    """Opens subscriptions (the core drives any object with this method)."""

    async def subscribe(self, request: SubscribeRequest) -> EventStream: ...


@runtime_checkable
class CheckpointClient(Protocol):
    """Persists one checkpoint per client id.

    ``get`` raises :class:`~memory_service_processor.CheckpointNotFoundError` when none is
    stored; raising :class:`~memory_service_processor.TransientError` asks for a retry.
    """

    async def get(self, client_id: str) -> Checkpoint: ...

    async def put(self, client_id: str, content_type: str, value: Any) -> Checkpoint: ...


class _AsyncIterMixin:
    """``async for event in stream`` for any object with ``recv()``."""

    def __aiter__(self) -> AsyncIterator[EventEnvelope]:
        return self  # type: ignore[return-value]

    async def __anext__(self) -> EventEnvelope:
        return await self.recv()  # type: ignore[attr-defined,no-any-return]
