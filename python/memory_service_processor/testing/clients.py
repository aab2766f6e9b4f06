"""An event source in this process, for tests that need no gRPC server: :class:`InMemoryEventClient`."""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from typing import Any, Iterable, List, Optional, Tuple, Union

from .._model import EventEnvelope, SubscribeRequest, _AsyncIterMixin
from .events import EventSpec, encode_payload, event_tuple

__all__ = ["InMemoryEventClient"]


class _Stored:
    __slots__ = ("envelope", "conversation", "channel", "content_type", "role")

    def __init__(self, envelope: EventEnvelope) -> None:
        self.envelope = envelope
        try:
            data = json.loads(envelope.raw_data) if envelope.raw_data else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}

        def field(key: str) -> Optional[str]:
            value = data.get(key)
            return value if isinstance(value, str) else None

        self.conversation = field("conversation")
        self.channel = field("entry_channel") or "history"  # the server's default channel
        self.content_type = field("entry_content_type")
        self.role = field("entry_role")

    def matches(self, request: SubscribeRequest) -> bool:
        kind = self.envelope.kind

        def one_of(allowed: Iterable[str], value: Optional[str], fold: bool = True) -> bool:
            # blank filter values are ignored, as the server ignores them
            wanted = [a.strip().lower() if fold else a.strip() for a in allowed if a.strip()]
            if not wanted:
                return True
            if value is None:
                return False
            value = value.strip()
            return (value.lower() if fold else value) in wanted

        if not one_of(request.kinds, kind):
            return False
        if request.conversation_ids and self.conversation not in request.conversation_ids:
            return False
        if kind == "entry":
            # channels (default ["history"]) and roles in any case, content types exactly
            channels = [c for c in request.entry_channels if c.strip()] or ["history"]
            return (
                one_of(channels, self.channel)
                and one_of(request.entry_content_types, self.content_type, fold=False)
                and one_of(request.entry_roles, self.role)
            )
        return True


def _signal(event: str, **data: Any) -> EventEnvelope:
    return EventEnvelope(event, "stream", json.dumps(data).encode("utf-8"))


class _InMemoryStream(_AsyncIterMixin):
    """One subscription of :class:`InMemoryEventClient`."""

    def __init__(self, client: "InMemoryEventClient", request: SubscribeRequest, pending: List[EventEnvelope], position: int, replay_to: int) -> None:
        self._client = client
        self._request = request
        self._pending = pending  # signals (and nothing else) to send first
        self._position = position  # index into the client's log of the next event to consider
        self._replay_to = replay_to  # the "live" phase signal goes out once this index is reached
        self._live_sent = replay_to < 0
        self._break: Optional[Tuple[int, Optional[BaseException]]] = None
        self.closed = False

    async def recv(self) -> EventEnvelope:
        """The next event; raises ``StopAsyncIteration`` at a clean end."""
        client = self._client
        while True:
            if self._pending:
                return self._pending.pop(0)
            if self.closed:
                raise StopAsyncIteration
            with client._lock:
                if not self._live_sent and self._position >= self._replay_to:
                    self._live_sent = True
                    return _signal("phase", phase="live")
                if self._break is not None and self._position >= self._break[0]:
                    error = self._break[1]
                    self._break = None
                    self.closed = True
                    client._streams.discard(self)
                    if error is None:
                        raise StopAsyncIteration
                    raise error
                if self._position < len(client._log):
                    stored = client._log[self._position]
                    self._position += 1
                    if stored.matches(self._request):
                        return stored.envelope
                    continue
                waiter = asyncio.get_running_loop().create_future()
                client._waiters.append((asyncio.get_running_loop(), waiter))
            await waiter

    def close(self) -> None:
        """Ends the subscription (a pending or later ``recv`` raises ``StopAsyncIteration``)."""
        self.closed = True
        self._client._streams.discard(self)
        self._client._wake()


class InMemoryEventClient:
    """An :class:`~memory_service_processor.EventClient` serving events kept in this process.

    It behaves like the Memory Service's stream for what the runtime relies on: decimal
    cursors ``"1"``, ``"2"``, ...; ``after_cursor`` ``None`` (live tail only), ``"start"`` or a
    cursor; ``phase`` replay/live signals; the ``kinds``, ``conversation_ids`` and entry
    filters (channels, default ``["history"]``, and roles in any case, content types
    exactly); and a ``stream/invalidate`` signal and a clean end for a cursor beyond
    retention (after :meth:`purge`) or one that is not a decimal cursor. Payloads are sent
    as published, in every detail mode. Pass it as ``Runtime(..., events=client)`` or as the source of
    :func:`run_until_handled`. ``publish`` / ``publish_many`` may be called from any thread.

    Faults for tests: :meth:`fail` (the next subscriptions raise) and :meth:`break_streams`
    (open streams raise or end once they have sent what was published so far).
    """

    def __init__(self, events: Iterable[EventSpec] = ()) -> None:
        self._lock = threading.Lock()
        self._log: List[_Stored] = []
        self._base = 1  # the cursor of _log[0]
        self._waiters: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]] = []
        self._streams: "weakref.WeakSet[_InMemoryStream]" = weakref.WeakSet()
        self._subscribe_faults: List[BaseException] = []
        #: Every :class:`SubscribeRequest` received, oldest first.
        self.requests: List[SubscribeRequest] = []
        self.publish_many(events)

    # -- publishing ------------------------------------------------------------------------
    def publish(self, kind: str, event: str, data: Any = None) -> str:
        """Appends one event (``data``: a JSON value, or raw ``bytes``/``str``); returns its cursor."""
        return self.publish_many([(kind, event, data)])[0]

    def publish_many(self, events: Iterable[EventSpec]) -> List[str]:
        """Appends events given as ``(kind, event, data)`` tuples or dicts; returns their cursors."""
        specs = [event_tuple(e) for e in events]
        cursors = []
        with self._lock:
            for kind, event, data in specs:
                cursor = str(self._base + len(self._log))
                self._log.append(_Stored(EventEnvelope(event, kind, encode_payload({} if data is None else data), cursor)))
                cursors.append(cursor)
        if cursors:
            self._wake()
        return cursors

    @property
    def last_cursor(self) -> Optional[str]:
        """The cursor of the last published event, or ``None``."""
        with self._lock:
            n = self._base + len(self._log) - 1
        return str(n) if n >= 1 else None

    # -- faults ----------------------------------------------------------------------------
    def purge(self, through_cursor: Union[str, int]) -> None:
        """Drops events up to ``through_cursor`` from retention: subscribing after an older
        cursor gets ``stream/invalidate`` and a clean end, like the real service."""
        through = int(through_cursor)
        with self._lock:
            drop = max(0, min(through - self._base + 1, len(self._log)))
            del self._log[:drop]
            self._base += drop
            for stream in self._streams:
                stream._position = max(0, stream._position - drop)
                stream._replay_to = max(0, stream._replay_to - drop) if stream._replay_to >= 0 else stream._replay_to
                if stream._break is not None:
                    stream._break = (max(0, stream._break[0] - drop), stream._break[1])

    def fail(self, error: Union[BaseException, type], count: int = 1) -> None:
        """The next ``count`` calls of ``subscribe`` raise ``error`` (e.g.
        ``TransientError("down")`` to test a retry, any other exception for a fatal failure)."""
        with self._lock:
            for _ in range(count):
                self._subscribe_faults.append(error() if isinstance(error, type) else error)

    def break_streams(self, error: Optional[BaseException] = None) -> None:
        """Every open stream, once it has sent the events published so far, raises ``error``
        from ``recv`` (``None``: ends cleanly, as a server closing the stream)."""
        with self._lock:
            end = len(self._log)
            for stream in self._streams:
                stream._break = (end, error)
        self._wake()

    @property
    def open_streams(self) -> int:
        """Streams subscribed, not ended and still referenced (by a runtime, say)."""
        with self._lock:
            return len(self._streams)

    # -- the EventClient protocol ----------------------------------------------------------
    async def subscribe(self, request: SubscribeRequest) -> _InMemoryStream:
        """Opens a stream for ``request`` (replay after ``request.after_cursor``, then live)."""
        with self._lock:
            self.requests.append(request)
            if self._subscribe_faults:
                raise self._subscribe_faults.pop(0)
            after = request.after_cursor
            end = len(self._log)
            pending: List[EventEnvelope] = []
            if after is None:
                position, replay_to = end, -1
                pending.append(_signal("phase", phase="live"))
            else:
                pending.append(_signal("phase", phase="replay"))
                if after == "start":
                    position = 0
                else:
                    # a decimal cursor, as the server parses it; anything else is stale
                    decimal = after.isascii() and after.isdigit() and int(after) < 2**64
                    after_number = int(after) if decimal else -1
                    if not decimal or after_number + 1 < self._base:
                        pending.append(_signal("invalidate", reason="cursor beyond retention window"))
                        stream = _InMemoryStream(self, request, pending, end, -1)
                        stream.closed = True
                        return stream
                    position = min(max(after_number + 1 - self._base, 0), end)
                replay_to = end
            stream = _InMemoryStream(self, request, pending, position, replay_to)
            self._streams.add(stream)
            return stream

    def _wake(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def __repr__(self) -> str:
        return f"InMemoryEventClient({len(self._log)} events, {len(self._streams)} open streams)"


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)
