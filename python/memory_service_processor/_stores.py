"""Choosing a checkpoint store from a short text spec (the CLI's ``--checkpoint-store``).

``grpc`` keeps checkpoints in the Memory Service (``AdminCheckpointService``, needs an admin
credential); ``file:PATH`` keeps one JSON document per client id in the directory ``PATH``
(written atomically, survives crashes); ``memory`` keeps them in this process only (lost on
exit: every start is a first run).
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

from ._clients import ConnectionOptions, FileCheckpointStore, GrpcCheckpointClient, InMemoryCheckpointStore
from ._model import CheckpointClient
from .errors import ConfigurationError

__all__ = ["CHECKPOINT_STORE_SPECS", "checkpoint_store_from_spec"]

log = logging.getLogger("memory_service_processor")

#: The accepted forms, for help texts.
CHECKPOINT_STORE_SPECS = "grpc | file:PATH | memory"


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
