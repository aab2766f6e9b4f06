"""The built-in checkpoint stores, and choosing one from a short text spec.

:class:`InMemoryCheckpointStore` keeps checkpoints in this process; :class:`FileCheckpointStore`
keeps one JSON document per client id in a directory. :func:`checkpoint_store_from_spec` reads
the command line's ``--checkpoint-store``: ``grpc`` keeps checkpoints in the Memory Service
(``AdminCheckpointService``, needs an admin credential); ``file:PATH`` in the directory
``PATH`` (written atomically, survives crashes); ``memory`` in this process only (lost on exit:
every start is a first run).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import itertools
import json
import logging
import os
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ._clients import GrpcCheckpointClient
from ._connection import ConnectionOptions
from ._model import Checkpoint, CheckpointClient
from .errors import CheckpointNotFoundError, ConfigurationError

__all__ = [
    "CHECKPOINT_STORE_SPECS",
    "FileCheckpointStore",
    "InMemoryCheckpointStore",
    "checkpoint_store_from_spec",
]

log = logging.getLogger("memory_service_processor")

#: The accepted forms, for help texts.
CHECKPOINT_STORE_SPECS = "grpc | file:PATH | memory"


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


def checkpoint_store_from_spec(
    spec: Optional[str],
    connection_options: Union[ConnectionOptions, str, None] = None,
) -> CheckpointClient:
    """The checkpoint store that ``spec`` names.

    ``spec`` is ``"grpc"`` (also the meaning of ``None`` or ``""``), ``"file:PATH"`` (a
    directory, created if missing; ``~`` is expanded; ``file://`` URLs with an absolute path are
    accepted too) or ``"memory"``; the scheme is case-insensitive. ``connection_options`` (a
    :class:`ConnectionOptions` or an endpoint string) is required for ``grpc`` only.

    Raises :class:`~memory_service_processor.ConfigurationError` (a ``ValueError``) naming the
    accepted forms for anything else.
    """
    text = "" if spec is None else str(spec).strip()
    scheme, sep, rest = text.partition(":")
    scheme = scheme.strip().lower()
    if not text or (scheme == "grpc" and not sep):
        if connection_options is None:
            raise ConfigurationError("checkpoint store 'grpc' needs a Memory Service endpoint")
        if isinstance(connection_options, str):
            connection_options = ConnectionOptions(connection_options)
        if not isinstance(connection_options, ConnectionOptions):
            raise TypeError(
                "connection_options must be a ConnectionOptions or an endpoint string, "
                f"not {type(connection_options).__name__}"
            )
        return GrpcCheckpointClient(connection_options)
    if scheme == "memory" and not sep:
        log.warning("checkpoints are kept in memory only: they are lost when this process exits")
        return InMemoryCheckpointStore()
    if scheme == "file" and sep:
        path = rest
        if path.startswith("//"):  # file:///abs/path (an empty URL authority)
            path = path[2:]
            if not path.startswith("/"):
                raise ConfigurationError(
                    f"checkpoint store {text!r}: a file:// URL needs an absolute path (file:///var/lib/x)"
                )
        path = path.strip()
        if not path:
            raise ConfigurationError("checkpoint store 'file:PATH' needs a directory path, e.g. file:./checkpoints")
        directory = os.path.expanduser(path)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ConfigurationError(f"checkpoint store {text!r}: {directory!r} exists and is not a directory")
        try:
            return FileCheckpointStore(directory)
        except OSError as e:
            raise ConfigurationError(f"checkpoint store {text!r}: cannot use directory {directory!r}: {e}") from e
    raise ConfigurationError(f"checkpoint store must be one of {CHECKPOINT_STORE_SPECS}, got {text!r}")
