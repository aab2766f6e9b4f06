"""The exceptions of memory-service-processor.

Every error the runtime raises by itself derives from :class:`MemoryServiceProcessorError`;
exceptions raised by the processor (``load``, ``handle``, ``snapshot``, ``flush``) propagate
unchanged. No message or attribute ever contains an API key or a token.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "MemoryServiceProcessorError",
    "CheckpointNotFoundError",
    "ContentTypeMismatchError",
    "StaleCursorError",
    "ServerStatusError",
    "ConfigurationError",
    "TransientError",
]


class MemoryServiceProcessorError(Exception):
    """Base class of every error raised by the runtime itself."""


class CheckpointNotFoundError(MemoryServiceProcessorError, LookupError):
    """No checkpoint is stored for the client id (a first run).

    Custom checkpoint clients raise it from ``get`` to say "start from the bootstrap cursor".
    """

    def __init__(self, message: str = "checkpoint not found", *, client_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.client_id = client_id


class ContentTypeMismatchError(MemoryServiceProcessorError):
    """The stored checkpoint was written by a processor with another ``content_type()``."""

    def __init__(self, message: str, *, got: str = "", want: str = "") -> None:
        super().__init__(message)
        self.got = got
        self.want = want


class StaleCursorError(MemoryServiceProcessorError):
    """The resume position fell out of the server's retention window (policy ``"fail"``).

    ``cursor`` is the position that was refused, ``reason`` the server's words. Choose
    ``Config(stale_cursor="restart")`` or ``"tail"`` to continue automatically instead.
    """

    def __init__(self, message: str, *, cursor: Optional[str] = None, reason: str = "") -> None:
        super().__init__(message)
        self.cursor = cursor
        self.reason = reason


class ServerStatusError(MemoryServiceProcessorError):
    """The server answered with a status that retrying will not change.

    ``code`` is the gRPC code name (``"PERMISSION_DENIED"``, ...), ``server_message`` the
    server's message and ``method`` the RPC.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "UNKNOWN",
        server_message: str = "",
        method: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.server_message = server_message
        self.method = method


class ConfigurationError(MemoryServiceProcessorError, ValueError):
    """A bad configuration value (also a :class:`ValueError`)."""


class TransientError(MemoryServiceProcessorError):
    """Trouble that a retry may cure.

    The runtime raises it only from the standalone gRPC clients; custom ``events`` /
    ``checkpoints`` clients raise it to ask the runtime for a retry with backoff.
    """
