"""The gRPC clients (Rust/tonic) and the built-in checkpoint stores."""

from __future__ import annotations

import asyncio
import datetime as _dt
import itertools
import json
import os
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Optional, Union

from . import _native
from ._config import Duration, parse_duration
from ._model import Checkpoint, EventEnvelope, SubscribeRequest, _AsyncIterMixin
from .errors import CheckpointNotFoundError, ConfigurationError

__all__ = [
    "ConnectionOptions",
    "GrpcEventClient",
    "GrpcCheckpointClient",
    "GrpcEventStream",
    "InMemoryCheckpointStore",
    "FileCheckpointStore",
]


class ConnectionOptions:
    """How to reach a Memory Service. Secrets are kept out of ``repr``.

    ``endpoint`` is ``host:port``, ``http://host:port``, ``https://host:port`` (TLS, system
    roots unless ``tls_ca_file`` is given) or ``unix:///absolute/path.sock``.
    """

    __slots__ = (
        "endpoint",
        "_api_key",
        "_bearer_token",
        "client_id",
        "tls_ca_file",
        "tls_server_name",
        "keepalive_interval",
        "keepalive_timeout",
        "connect_timeout",
        "request_timeout",
        "max_message_size",
        "_connection",
    )

    def __init__(
        self,
        endpoint: str,
        *,
        api_key: Optional[str] = None,
        bearer_token: Optional[str] = None,
        client_id: Optional[str] = None,
        tls_ca_file: Union[str, "os.PathLike[str]", None] = None,
        tls_server_name: Optional[str] = None,
        keepalive_interval: Duration = 20.0,
        keepalive_timeout: Duration = 10.0,
        connect_timeout: Duration = 10.0,
        request_timeout: Duration = 30.0,
        max_message_size: int = _native.DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if not isinstance(endpoint, str) or not endpoint.strip():
            raise ConfigurationError("endpoint must be a non-empty string such as localhost:8082")
        for name, value in (("api_key", api_key), ("bearer_token", bearer_token)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigurationError(f"{name} must be a non-empty string or None")
        if isinstance(max_message_size, bool) or not isinstance(max_message_size, int) or max_message_size < 1:
            raise ConfigurationError(f"max_message_size must be a positive int, got {max_message_size!r}")
        self.endpoint = endpoint.strip()
        self._api_key = api_key
        self._bearer_token = bearer_token
        self.client_id = client_id
        self.tls_ca_file = os.fspath(tls_ca_file) if tls_ca_file is not None else None
        if self.tls_ca_file is not None and not os.path.isfile(self.tls_ca_file):
            raise ConfigurationError(f"tls_ca_file {self.tls_ca_file!r} is not a readable file")
        self.tls_server_name = tls_server_name
        self.keepalive_interval = parse_duration(keepalive_interval, "keepalive_interval")
        self.keepalive_timeout = parse_duration(keepalive_timeout, "keepalive_timeout")
        self.connect_timeout = parse_duration(connect_timeout, "connect_timeout")
        self.request_timeout = parse_duration(request_timeout, "request_timeout")
        self.max_message_size = max_message_size
        # Refuse a malformed endpoint (or a secret that cannot be sent as metadata) here, naming
        # it, rather than at the first connection. Connecting stays lazy.
        self._connection = self._connect()

    def _connect(self) -> "_native.NativeConnection":
        """A new (lazily connected) channel with these options."""
        return _native.NativeConnection(self)

    def __repr__(self) -> str:
        auth = []
        if self._api_key:
            auth.append("api_key=<redacted>")
        if self._bearer_token:
            auth.append("bearer_token=<redacted>")
        extra = (", " + ", ".join(auth)) if auth else ""
        return f"ConnectionOptions(endpoint={self.endpoint!r}, client_id={self.client_id!r}{extra})"


def _options(endpoint: Union[str, ConnectionOptions], kwargs: Dict[str, Any]) -> ConnectionOptions:
    if isinstance(endpoint, ConnectionOptions):
        if kwargs:
            raise TypeError("pass either ConnectionOptions or keyword options, not both")
        return endpoint
    return ConnectionOptions(endpoint, **kwargs)


class GrpcCheckpointClient:
    """``AdminCheckpointService`` over gRPC (Rust/tonic); usable on its own from asyncio.

    >>> client = GrpcCheckpointClient("localhost:8082", api_key="...")
    >>> cp = await client.get("my-processor")        # raises CheckpointNotFoundError
    """

    def __init__(self, endpoint: Union[str, ConnectionOptions], **options: Any) -> None:
        self.options = _options(endpoint, options)
        # A channel of its own: on a connection shared with a busy event stream, a checkpoint
        # round trip would queue behind megabytes of stream data (measured: ~5 ms a write).
        self._native = _native.NativeCheckpointClient(self.options._connect())

    async def get(self, client_id: str) -> Checkpoint:
        """The stored checkpoint; raises :class:`CheckpointNotFoundError` if there is none."""
        return Checkpoint._from_native(await self._native.get(client_id))

    async def put(self, client_id: str, content_type: str, value: Any) -> Checkpoint:
        """Stores ``value`` (any JSON value) and returns the stored checkpoint."""
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        return Checkpoint._from_native(await self._native.put(client_id, content_type, text))

    def __repr__(self) -> str:
        return f"GrpcCheckpointClient({self.options!r})"


class GrpcEventStream(_AsyncIterMixin):
    """An open subscription from :class:`GrpcEventClient`."""

    def __init__(self, native: "_native.NativeEventStream") -> None:
        self._native = native

    async def recv(self) -> EventEnvelope:
        """The next event; raises ``StopAsyncIteration`` at a clean end."""
        return await self._native.recv()

    def close(self) -> None:
        """Cancels the subscription."""
        self._native.close()


class GrpcEventClient:
    """``EventStreamService`` over gRPC (Rust/tonic); usable on its own from asyncio.

    >>> client = GrpcEventClient("localhost:8082", api_key="...")
    >>> stream = await client.subscribe(SubscribeRequest(kinds=["entry"], after_cursor="start"))
    >>> async for event in stream: ...
    """

    def __init__(self, endpoint: Union[str, ConnectionOptions], **options: Any) -> None:
        self.options = _options(endpoint, options)
        self._native = _native.NativeEventClient(self.options._connection)

    async def subscribe(self, request: SubscribeRequest) -> GrpcEventStream:
        """Opens a subscription."""
        return GrpcEventStream(await self._native.subscribe(request))

    def __repr__(self) -> str:
        return f"GrpcEventClient({self.options!r})"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _roundtrip(value: Any) -> Any:
    """A deep copy through JSON: what a real store would give back (and a check it is JSON)."""
    return json.loads(json.dumps(value, allow_nan=False))


class InMemoryCheckpointStore:
    """Checkpoints in a dict: for tests and for processors that need no durability."""

    def __init__(self) -> None:
        self._items: Dict[str, Checkpoint] = {}
        self._lock = threading.Lock()

    async def get(self, client_id: str) -> Checkpoint:
        """The stored checkpoint; raises :class:`CheckpointNotFoundError` if none."""
        with self._lock:
            cp = self._items.get(client_id)
        if cp is None:
            raise CheckpointNotFoundError(f"no checkpoint for client id {client_id!r}", client_id=client_id)
        return Checkpoint(cp.client_id, cp.content_type, _roundtrip(cp.value), cp.updated_at)

    async def put(self, client_id: str, content_type: str, value: Any) -> Checkpoint:
        """Stores a copy of ``value``."""
        cp = Checkpoint(client_id, content_type, _roundtrip(value), _now())
        with self._lock:
            self._items[client_id] = cp
        return cp

    def __repr__(self) -> str:
        return f"InMemoryCheckpointStore({len(self._items)} checkpoints)"


class FileCheckpointStore:
    """One JSON document per client id in ``directory``, written atomically.

    Each write goes to a temporary file that is fsynced, then renamed over the old one (and the
    directory fsynced), so a crash at any instant leaves either the previous or the new
    document, never a torn one.
    """

    def __init__(self, directory: Union[str, "os.PathLike[str]"]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Writes of one client id are serialized, and a put never overwrites the document of a
        # put that was called after it (the executor may run them out of order).
        self._lock = threading.Lock()
        self._calls = itertools.count(1)
        self._written: Dict[str, int] = {}
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Deletes the temporary files of writers that died mid-write (their process is gone)."""
        try:
            names = [p for p in self.directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        except OSError:  # pragma: no cover - unreadable directory: writes will say why
            return
        for path in names:
            parts = path.name.rsplit(".", 3)  # ".<doc>.json", "<pid>", "<thread>", "tmp"
            if len(parts) != 4 or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                continue  # that writer is alive
            except ProcessLookupError:
                pass
            except OSError:  # e.g. PermissionError: alive, another user's
                continue
            try:
                path.unlink()
            except OSError:
                pass

    def path_for(self, client_id: str) -> Path:
        """The file that holds ``client_id``'s checkpoint."""
        if not client_id:
            raise ConfigurationError("client_id must be a non-empty string")
        return self.directory / (urllib.parse.quote(client_id, safe="") + ".json")

    def _read(self, client_id: str) -> Checkpoint:
        path = self.path_for(client_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"no checkpoint for client id {client_id!r}", client_id=client_id) from None
        try:
            doc = json.loads(text)
            updated = doc.get("updated_at")
            return Checkpoint(
                doc["client_id"],
                doc["content_type"],
                doc["value"],
                _dt.datetime.fromisoformat(updated) if updated else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigurationError(f"checkpoint file {path} is not a valid checkpoint document: {e}") from e

    def _write(self, client_id: str, content_type: str, value: Any, seq: int = 0) -> Checkpoint:
        path = self.path_for(client_id)
        cp = Checkpoint(client_id, content_type, _roundtrip(value), _now())
        with self._lock:
            if seq and self._written.get(client_id, 0) > seq:
                return cp  # a later put already landed: this older value must not replace it
            self._write_locked(path, cp)
            if seq:
                self._written[client_id] = seq
        return cp

    def _write_locked(self, path: Path, cp: Checkpoint) -> None:
        client_id, content_type = cp.client_id, cp.content_type
        doc = {
            "client_id": client_id,
            "content_type": content_type,
            "value": cp.value,
            "updated_at": cp.updated_at.isoformat() if cp.updated_at else None,
        }
        data = json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:
            dfd = os.open(self.directory, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory fds
            return
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    async def get(self, client_id: str) -> Checkpoint:
        """The stored checkpoint; raises :class:`CheckpointNotFoundError` if none."""
        return await asyncio.get_running_loop().run_in_executor(None, self._read, client_id)

    async def put(self, client_id: str, content_type: str, value: Any) -> Checkpoint:
        """Writes the checkpoint atomically (fsync + rename)."""
        self.path_for(client_id)  # validates the client id before going to a thread
        seq = next(self._calls)  # atomic; never blocks the event loop on a writer's fsync
        return await asyncio.get_running_loop().run_in_executor(
            None, self._write, client_id, content_type, value, seq
        )

    def __repr__(self) -> str:
        return f"FileCheckpointStore({str(self.directory)!r})"
