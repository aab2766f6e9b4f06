"""A real Memory Service for tests, benchmarks and the demo: :class:`LocalMemoryService`.

It is a tonic gRPC server (EventStreamService + AdminCheckpointService) inside the package,
listening on a free loopback port (or a Unix socket), with a durable outbox of decimal
cursors, replay and live phases, filters, API keys with admin/user roles, checkpoints,
retention (:meth:`purge`), slow-consumer eviction, fault injection and restart.

Its *scenario API* (:meth:`~LocalMemoryService.create_conversation`,
:meth:`~LocalMemoryService.append_entry`, ...) keeps conversations, entries, memberships and
responses the way a Memory Service does and emits exactly the events a real server emits,
with UUIDs and RFC 3339 timestamps: summary payloads (snake_case ids) by default, the stored
entity in camelCase for subscribers asking ``detail="full"`` (as the runtime does).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .. import _native
from .._model import Checkpoint
from .events import EventSpec, encode_payload

__all__ = ["LocalMemoryService", "SeenRequest", "Content"]

#: An entry's content: a list of items such as ``{"role": "USER", "text": "Hello"}``, or
#: ``bytes`` for content that is not JSON (sent as ``"b64:<base64>"``, as a server does).
Content = Union[Sequence[Mapping[str, Any]], bytes]


def _content_json(content: Content) -> str:
    if isinstance(content, (bytes, bytearray)):
        return json.dumps("b64:" + base64.b64encode(bytes(content)).decode("ascii"))
    if isinstance(content, (str, Mapping)) or not isinstance(content, Sequence):
        raise TypeError("content must be a list of content items (dicts) or bytes")
    items: List[Any] = list(content)
    if not all(isinstance(item, Mapping) for item in items):
        raise TypeError("content items must be dicts such as {\"role\": \"USER\", \"text\": \"...\"}")
    return json.dumps([dict(item) for item in items])


def _metadata_json(metadata: Optional[Mapping[str, Any]]) -> Optional[str]:
    return None if metadata is None else json.dumps(dict(metadata))


class SeenRequest:
    """One RPC as the server saw it: ``method``, auth ``metadata`` headers, ``after_cursor``,
    ``client_id`` (checkpoint RPCs)."""

    __slots__ = ("method", "metadata", "after_cursor", "client_id")

    def __init__(self, method: str, metadata: Dict[str, str], after_cursor: Optional[str], client_id: Optional[str]) -> None:
        self.method = method
        self.metadata = metadata
        self.after_cursor = after_cursor
        self.client_id = client_id

    def __repr__(self) -> str:
        return f"SeenRequest(method={self.method!r}, after_cursor={self.after_cursor!r}, client_id={self.client_id!r})"


class LocalMemoryService:
    """A local gRPC Memory Service.

    >>> async with LocalMemoryService() as server:
    ...     conv = server.create_conversation(owner="alice", title="Trip")
    ...     server.append_entry(conv, [{"role": "USER", "text": "Hello"}])
    ...     runtime = Runtime(MyProcessor(), Config(client_id="p", after_cursor="start"),
    ...                       endpoint=server.endpoint)

    The scenario methods change the server's state as a Memory Service does and emit its
    events (``conversation``/``entry``/``response``/``membership``), each rendered for the
    subscriber's ``detail`` when it is sent: in full mode a replayed ``created`` shows the
    conversation as it is now, and the events of a hard-deleted conversation are not sent.
    An unknown conversation raises ``KeyError``; an operation a server refuses (appending to
    an archived conversation, removing the owner, ...) raises ``ValueError``, and emits
    nothing. :meth:`publish` is the low-level door: its payload is sent as given in both
    modes.

    ``api_keys`` maps keys (or bearer tokens) to roles ``"admin"`` / ``"user"``; ``None``
    disables authentication. ``queue_capacity`` is how many live events may wait for a
    subscriber before it is evicted as a slow consumer. ``data_dir`` persists the outbox and
    checkpoints so a new process continues where the last one stopped. ``unix_path`` listens
    on a Unix socket instead of TCP. ``tls_cert_file`` / ``tls_key_file`` (PEM) serve TLS; the
    endpoint is then ``https://127.0.0.1:PORT``.

    ``publish`` / ``publish_many``, the scenario methods and the fault methods are plain
    methods, callable from any thread.

    With ``data_dir`` the outbox survives a restart but the entities do not: events of the
    scenario API are then replayed with their summary payload in both modes.
    """

    def __init__(
        self,
        port: int = 0,
        api_keys: Optional[Mapping[str, str]] = None,
        *,
        host: str = "127.0.0.1",
        unix_path: Optional[Union[str, "os.PathLike[str]"]] = None,
        queue_capacity: int = 65536,
        data_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        tls_cert_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        tls_key_file: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> None:
        self._native = _native.NativeServer(
            host=host,
            port=port,
            unix_path=os.fspath(unix_path) if unix_path is not None else None,
            api_keys=dict(api_keys) if api_keys is not None else None,
            queue_capacity=queue_capacity,
            data_dir=os.fspath(data_dir) if data_dir is not None else None,
            tls_cert_file=os.fspath(tls_cert_file) if tls_cert_file is not None else None,
            tls_key_file=os.fspath(tls_key_file) if tls_key_file is not None else None,
        )

    # -- lifecycle ---------------------------------------------------------------------
    def start_sync(self) -> str:
        """Binds and serves (blocking briefly); returns the endpoint."""
        return self._native.start()

    def stop_sync(self) -> None:
        """Stops serving; open streams end with ``UNAVAILABLE``. Outbox and checkpoints stay."""
        self._native.stop()

    async def start(self) -> str:
        """Binds and serves; returns :attr:`endpoint`. After :meth:`stop`, binds the same port."""
        return await asyncio.get_running_loop().run_in_executor(None, self._native.start)

    async def stop(self) -> None:
        """Stops serving; open streams end with ``UNAVAILABLE``. Outbox and checkpoints stay."""
        await asyncio.get_running_loop().run_in_executor(None, self._native.stop)

    async def __aenter__(self) -> "LocalMemoryService":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def __enter__(self) -> "LocalMemoryService":
        self.start_sync()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_sync()

    @property
    def endpoint(self) -> str:
        """``"127.0.0.1:PORT"`` (or ``"unix:///path"``) while serving."""
        ep = self._native.endpoint
        if ep is None:
            raise RuntimeError("LocalMemoryService is not started")
        return ep

    @property
    def port(self) -> int:
        """The TCP port (kept across stop/start)."""
        return self._native.port

    # -- events ------------------------------------------------------------------------
    def publish(self, kind: str, event: str, data: Any = None) -> str:
        """Appends one event (``data``: a JSON value, or raw ``bytes``/``str``); returns its cursor."""
        return self._native.publish_many([(kind, event, encode_payload({} if data is None else data))])[0]

    def publish_many(self, events: Iterable[EventSpec]) -> List[str]:
        """Appends events given as ``(kind, event, data)`` tuples or dicts with those keys."""
        items = []
        for spec in events:
            if isinstance(spec, Mapping):
                items.append((spec["kind"], spec["event"], encode_payload(spec.get("data", {}))))
            else:
                kind, event, data = spec
                items.append((kind, event, encode_payload(data)))
        return self._native.publish_many(items)

    @property
    def last_cursor(self) -> Optional[str]:
        """The cursor of the last event appended (by :meth:`publish` or a scenario method),
        or ``None`` before the first."""
        _, next_cursor = self._native.outbox_range()
        return str(next_cursor - 1) if next_cursor > 1 else None

    # -- the scenario API --------------------------------------------------------------
    def create_conversation(
        self,
        owner: str,
        title: str = "",
        agent_id: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> str:
        """Creates a conversation in a new group whose only member is ``owner`` (role
        ``owner``); emits ``conversation/created``. Returns the conversation id (a UUID)."""
        conversation, _ = self._native.create_conversation(owner, title, agent_id, _metadata_json(metadata))
        return conversation

    def update_conversation(
        self, conversation_id: str, title: Optional[str] = None, metadata: Optional[Mapping[str, Any]] = None
    ) -> str:
        """Changes the title and/or replaces the metadata; emits ``conversation/updated``.
        Returns the event's cursor."""
        return self._native.update_conversation(conversation_id, title, _metadata_json(metadata))

    def append_entry(
        self,
        conversation_id: str,
        content: Content,
        *,
        channel: str = "history",
        content_type: str = "history",
        user_id: Optional[str] = None,
        client_id: Optional[str] = None,
        agent_id: Optional[str] = None,
    ) -> str:
        """Appends an entry (``channel``: ``history``, ``context`` or ``journal``); emits
        ``entry/created`` whose summary ``entry_role`` is the first item's ``role``.
        ``user_id`` defaults to the conversation's owner. Returns the entry id (a UUID)."""
        entry, _ = self._native.append_entry(
            conversation_id, _content_json(content), channel, content_type, user_id, client_id, agent_id
        )
        return entry

    def archive_conversation(self, conversation_id: str) -> str:
        """Archives (what a user's delete does); emits ``conversation/updated`` with
        ``members`` and ``archived: true``. Returns the cursor."""
        return self._native.archive_conversation(conversation_id)

    def unarchive_conversation(self, conversation_id: str) -> str:
        """Emits ``conversation/updated`` with ``members`` and ``archived: false``. Returns the
        cursor."""
        return self._native.unarchive_conversation(conversation_id)

    def delete_conversation(self, conversation_id: str) -> str:
        """Hard delete (eviction, admin evict): the conversation and its entries are gone;
        emits ``conversation/deleted`` with ``members``. In full mode neither it nor the
        conversation's earlier events are delivered any more. Returns the cursor."""
        return self._native.delete_conversation(conversation_id)

    def add_member(self, conversation_id: str, user: str, role: str) -> str:
        """Shares the conversation's group with ``user`` (``role``: owner, manager, writer or
        reader); emits ``membership/created``. Returns the cursor."""
        return self._native.add_member(conversation_id, user, role)

    def update_member(self, conversation_id: str, user: str, role: str) -> str:
        """Changes a member's role (not the owner's); emits ``membership/updated``. Returns
        the cursor."""
        return self._native.update_member(conversation_id, user, role)

    def remove_member(self, conversation_id: str, user: str) -> str:
        """Removes a member (not the owner); emits ``membership/deleted``. Returns the cursor."""
        return self._native.remove_member(conversation_id, user)

    def start_response(self, conversation_id: str) -> str:
        """An agent starts recording a response; emits ``response/created`` with ``status:
        "started"`` (``recording`` is the conversation id). Returns the cursor."""
        return self._native.start_response(conversation_id)

    def finish_response(self, conversation_id: str, status: str = "completed") -> str:
        """The response ends (``status``: ``"completed"`` or ``"failed"``); emits
        ``response/deleted``. Returns the cursor."""
        return self._native.finish_response(conversation_id, status)

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint(self, client_id: str) -> Optional[Checkpoint]:
        """The stored checkpoint of ``client_id``, or ``None``."""
        got = self._native.get_checkpoint(client_id)
        if got is None:
            return None
        content_type, value_json, updated = got
        return Checkpoint._from_native((client_id, content_type, value_json, updated))

    def put_checkpoint(self, client_id: str, content_type: str, value: Any) -> None:
        """Stores a checkpoint directly (e.g. to test a bad or foreign one)."""
        self._native.put_checkpoint(client_id, content_type, json.dumps(value))

    def delete_checkpoint(self, client_id: str) -> bool:
        """Removes a checkpoint; True if there was one."""
        return self._native.delete_checkpoint(client_id)

    # -- faults ------------------------------------------------------------------------
    def purge(self, through_cursor: Union[str, int]) -> None:
        """Drops events up to ``through_cursor`` from retention; replays from before it get
        ``stream/invalidate`` and a clean end."""
        self._native.purge(int(through_cursor))

    def invalidate(self, reason: str = "pubsub recovery") -> None:
        """Sends ``stream/invalidate`` to every open stream (mid-stream)."""
        self._native.invalidate(reason)

    def evict_all(self, reason: str = "too many connections") -> None:
        """Evicts every open stream (``stream/evicted`` with the last cursor, then the end)."""
        self._native.evict_all(reason)

    def drop_streams(self, message: str = "connection reset") -> None:
        """Aborts every open stream with ``UNAVAILABLE``."""
        self._native.drop_streams(message)

    def fail(self, rpc: str, code: str, count: int = 1, message: str = "injected fault") -> None:
        """The next ``count`` calls of ``rpc`` (``SubscribeEvents`` / ``GetCheckpoint`` /
        ``PutCheckpoint``) fail with ``code`` (e.g. ``"UNAVAILABLE"``)."""
        self._native.fail(rpc, code, count, message)

    def pause(self) -> None:
        """Stops sending on open streams without closing them (a silent server)."""
        self._native.set_paused(True)

    def resume(self) -> None:
        """Undoes :meth:`pause`."""
        self._native.set_paused(False)

    # -- inspection --------------------------------------------------------------------
    def requests(self) -> List[SeenRequest]:
        """The last 1,000 RPCs as the server saw them (oldest first)."""
        return [SeenRequest(m, md, a, c) for (m, md, a, c) in self._native.requests()]

    @property
    def subscriber_count(self) -> int:
        """Open live subscriptions."""
        return self._native.subscriber_count()

    @property
    def outbox_range(self) -> Tuple[int, int]:
        """``(first retained cursor, next cursor)`` as integers."""
        return self._native.outbox_range()

    def __repr__(self) -> str:
        return f"LocalMemoryService(endpoint={self._native.endpoint!r})"
