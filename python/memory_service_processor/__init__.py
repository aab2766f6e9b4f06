"""memory-service-processor: write a Memory Service event processor in a few lines of Python.

Subclass :class:`EventProcessor` (or write any object with ``content_type`` / ``load`` /
``handle`` / ``snapshot`` / ``flush``), then ``await Runtime(processor, Config(...),
endpoint=...).run()``. A Rust core runs the gRPC stream, replay from the checkpointed cursor,
reconnects, checkpoint writes and graceful shutdown.
"""

from __future__ import annotations

import atexit
import logging
import os as _os

# First: check that the native module comes from the same build as these files (a clear
# ImportError otherwise), before anything else uses it.
from ._version import __version__
from ._clients import GrpcCheckpointClient, GrpcEventClient, GrpcEventStream
from ._config import Config, parse_duration
from ._connection import ConnectionOptions
from ._model import (
    Checkpoint,
    CheckpointClient,
    EventClient,
    EventEnvelope,
    EventStream,
    SubscribeRequest,
)
from ._processor import EventProcessor
from ._runtime import Runtime
from ._stores import FileCheckpointStore, InMemoryCheckpointStore
from ._native import shard_of
from .errors import (
    CheckpointNotFoundError,
    ConfigurationError,
    ContentTypeMismatchError,
    MemoryServiceProcessorError,
    ServerStatusError,
    StaleCursorError,
    TransientError,
)

__all__ = [
    "Checkpoint",
    "CheckpointClient",
    "CheckpointNotFoundError",
    "Config",
    "ConfigurationError",
    "ConnectionOptions",
    "ContentTypeMismatchError",
    "EventClient",
    "EventEnvelope",
    "EventProcessor",
    "EventStream",
    "FileCheckpointStore",
    "GrpcCheckpointClient",
    "GrpcEventClient",
    "GrpcEventStream",
    "InMemoryCheckpointStore",
    "MemoryServiceProcessorError",
    "Runtime",
    "ServerStatusError",
    "StaleCursorError",
    "SubscribeRequest",
    "TransientError",
    "parse_duration",
    "shard_of",
]

logging.getLogger("memory_service_processor").addHandler(logging.NullHandler())

# Rust threads must not call into Python logging while the interpreter finalizes.
from . import _native as _native_module  # noqa: E402

# atexit runs handlers last-in first-out: first wait for native futures still completing,
# then switch the log bridge off.
atexit.register(_native_module.shutdown_logging)
atexit.register(_native_module.quiesce)

# A child forked after the native runtime started cannot use it (its threads stay in the
# parent): every native entry point raises a RuntimeError saying so (docs/semantics.md,
# section 17), and the child's exit must not wait for the parent's futures.
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_native_module.after_fork_in_child)
