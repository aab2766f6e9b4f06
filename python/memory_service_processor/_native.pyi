"""Type stubs for the Rust extension ``memory_service_processor._native`` (checked against the
real module by ``mypy.stubtest`` in the test suite). Users never import it directly."""

import datetime
from typing import Any, Awaitable, Dict, List, Optional, Tuple, Union, final

__all__ = [
    "A_DONE",
    "A_FLUSH",
    "A_HANDLE",
    "A_SIGNAL",
    "A_SNAPSHOT",
    "A_WAIT",
    "BUILD_PROFILE",
    "Core",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "EventEnvelope",
    "LoadResult",
    "NativeCheckpointClient",
    "NativeConnection",
    "NativeEventClient",
    "NativeEventStream",
    "NativeServer",
    "bench_raw_read",
    "reset_log_cache",
    "shutdown_logging",
    "quiesce",
    "__version__",
]

A_HANDLE: int
A_SIGNAL: int
A_FLUSH: int
A_SNAPSHOT: int
A_WAIT: int
A_DONE: int
DEFAULT_MAX_MESSAGE_SIZE: int
__version__: str
BUILD_PROFILE: str

_CheckpointTuple = Tuple[str, str, str, Optional[float]]

@final
class EventEnvelope:
    """An event as the processor sees it (immutable; ``data`` decoded on first access)."""

    def __new__(
        cls,
        event: str,
        kind: str,
        raw_data: Union[bytes, str],
        cursor: Optional[str] = None,
        time: Union[datetime.datetime, float, None] = None,
    ) -> "EventEnvelope": ...
    @property
    def event(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def cursor(self) -> Optional[str]: ...
    @property
    def raw_data(self) -> bytes: ...
    @property
    def data(self) -> Any: ...
    @property
    def time(self) -> datetime.datetime: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class NativeConnection:
    def __new__(
        cls,
        endpoint: str,
        api_key: Optional[str] = None,
        bearer_token: Optional[str] = None,
        client_id: Optional[str] = None,
        tls_ca_file: Optional[str] = None,
        tls_server_name: Optional[str] = None,
        keepalive_interval: float = 20.0,
        keepalive_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        max_message_size: int = 4194304,
    ) -> "NativeConnection": ...

@final
class NativeCheckpointClient:
    def __new__(cls, connection: NativeConnection) -> "NativeCheckpointClient": ...
    def get(self, client_id: str) -> Awaitable[_CheckpointTuple]: ...
    def put(self, client_id: str, content_type: str, value_json: str) -> Awaitable[_CheckpointTuple]: ...

@final
class NativeEventStream:
    def recv(self) -> Awaitable[EventEnvelope]: ...
    def close(self) -> None: ...

@final
class NativeEventClient:
    def __new__(cls, connection: NativeConnection) -> "NativeEventClient": ...
    def subscribe(self, request: Dict[str, Any]) -> Awaitable[NativeEventStream]: ...

@final
class LoadResult:
    @property
    def text(self) -> Optional[str]: ...

@final
class Core:
    def __new__(
        cls,
        *,
        wake_fd: int,
        events: Any,
        checkpoints: Any,
        content_type: str,
        client_id: str,
        kinds: List[str],
        conversation_ids: List[str],
        entry_channels: List[str],
        entry_content_types: List[str],
        entry_roles: List[str],
        scope: str,
        after_cursor: Optional[str],
        justification: Optional[str],
        checkpoint_interval: float,
        checkpoint_every: int,
        reconnect_min: float,
        reconnect_max: float,
        stale_cursor: str,
        buffer_size: int,
        max_batch: int,
        stop_timeout: float,
    ) -> "Core": ...
    def load(self) -> Awaitable[LoadResult]: ...
    def start(self, loaded: Optional[LoadResult] = None) -> None: ...
    def next_action(self) -> Tuple[int, Any]: ...
    def handled(self) -> None: ...
    def flushed(self) -> None: ...
    def submit_snapshot(self, json: str) -> None: ...
    def abort(self) -> None: ...
    def stop(self) -> None: ...
    def stop_requested(self) -> bool: ...
    def stats(self) -> Dict[str, Any]: ...

@final
class NativeServer:
    def __new__(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        unix_path: Optional[str] = None,
        api_keys: Optional[Dict[str, str]] = None,
        queue_capacity: int = 65536,
        data_dir: Optional[str] = None,
        tls_cert_file: Optional[str] = None,
        tls_key_file: Optional[str] = None,
    ) -> "NativeServer": ...
    def start(self) -> str: ...
    def stop(self) -> None: ...
    @property
    def endpoint(self) -> Optional[str]: ...
    @property
    def port(self) -> int: ...
    def publish_many(self, events: List[Tuple[str, str, bytes]]) -> List[str]: ...
    def purge(self, through: int) -> None: ...
    def invalidate(self, reason: str) -> None: ...
    def evict_all(self, reason: str) -> None: ...
    def drop_streams(self, message: str) -> None: ...
    def fail(self, rpc: str, code: str, count: int, message: str) -> None: ...
    def set_paused(self, paused: bool) -> None: ...
    def subscriber_count(self) -> int: ...
    def outbox_range(self) -> Tuple[int, int]: ...
    def requests(self) -> List[Tuple[str, Dict[str, str], Optional[str], Optional[str]]]: ...
    def get_checkpoint(self, client_id: str) -> Optional[Tuple[str, str, float]]: ...
    def put_checkpoint(self, client_id: str, content_type: str, value_json: str) -> None: ...
    def delete_checkpoint(self, client_id: str) -> bool: ...

def reset_log_cache() -> None: ...
def shutdown_logging() -> None: ...
def quiesce(timeout: float = 1.0) -> None: ...
def bench_raw_read(endpoint: str, count: int, after_cursor: str = "start", api_key: Optional[str] = None) -> float: ...
