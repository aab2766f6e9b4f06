"""`Config`: what a processor subscribes to and how the loop behaves.

Each field is declared once, with its :class:`~memory_service_processor._settings.Setting`
(check, flag, environment variable, help text) in the field's metadata; :data:`CONFIG_SETTINGS`
lists them in field order.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any, Dict, Optional, Sequence, Tuple

from ._settings import (
    BUFFER_BYTES_MAX,
    CLIENT_ID_MAX_BYTES,
    COUNTER_MAX,
    EVENT_COUNT_MAX,
    Check,
    Duration,
    Setting,
    check_bool,
    check_client_id,
    check_count,
    check_duration,
    check_one_of,
    check_optional_text,
    check_text_list,
    parse_duration,
)
from .errors import ConfigurationError

__all__ = ["CONFIG_SETTINGS", "Config", "Duration", "parse_duration"]

#: The largest ``max_concurrency``: far more handler tasks than one event loop can usefully run.
MAX_CONCURRENCY_MAX = 100_000

#: The largest ``max_attempts``.
MAX_ATTEMPTS_MAX = 1_000_000

#: The largest ``shard_count``.
SHARD_COUNT_MAX = 1024

#: The key of a field's :class:`Setting` in ``dataclasses.Field.metadata``.
SETTING = "memory_service_processor.setting"

_ENV_PREFIX = "MEMORY_SERVICE_PROCESS_"


def _declare(
    kind: str,
    help: str,
    check: Optional[Check],
    *,
    metavar: Optional[str] = None,
    choices: Tuple[str, ...] = (),
    default_doc: Optional[str] = None,
    required: bool = False,
    maximum: Optional[float] = None,
    minimum: Optional[float] = None,
) -> Dict[str, Setting]:
    """The metadata of a :class:`Config` field: its :class:`Setting`, completed by
    :func:`_declared` with the field's name and default, the flag ``--kebab-name`` and the
    variable ``MEMORY_SERVICE_PROCESS_UPPER_NAME``. Durations accept
    :data:`~memory_service_processor._settings.DURATION_MIN` to ``DURATION_MAX``; an ``int``
    declares its ``maximum``."""
    if check is None and kind == "choice":
        check = check_one_of(*choices)
    declared = Setting(
        name="",
        kind=kind,
        help=help,
        check=check,
        group="config",
        choices=choices,
        metavar=metavar,
        default_doc=default_doc,
        required=required,
        maximum=maximum,
        minimum=minimum,
    )
    return {SETTING: declared}


def _check_index(name: str, value: Any) -> int:
    """A whole number of at least 0 (the setting's maximum is checked by
    :meth:`Setting.normalize`)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ConfigurationError(f"{name} must be at least 0, got {value}")
    return value


def _secs(value: Duration) -> float:
    """Seconds of a duration field (already normalized to a float by ``Config``)."""
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return float(value)


@dataclasses.dataclass(frozen=True)
class Config:
    """Configuration of a processor run.

    Durations accept seconds (``float``), :class:`datetime.timedelta` or text such as ``"5s"``
    and are stored as seconds; lists are stored as tuples of strings; ``scope`` and
    ``stale_cursor`` lower-case. Durations must lie between 10 ms and 365 days; counts between 1
    and their declared maximum; ``client_id`` must be printable ASCII of at most 1,024 bytes (it
    travels as gRPC metadata). Every value is checked at construction: a bad one raises
    :class:`~memory_service_processor.ConfigurationError` (a ``ValueError``) or ``TypeError``
    naming the field; an unknown field raises ``TypeError``. The meaning of each field is its
    setting's help text (the README's "Processing" table, ``run --help``).
    """

    client_id: str = dataclasses.field(
        metadata=_declare(
            "str",
            "identifies the processor and its checkpoint; sent as gRPC metadata, so printable ASCII "
            f"without leading or trailing spaces, at most {CLIENT_ID_MAX_BYTES} bytes",
            check_client_id,
            metavar="ID", required=True,
        ),
    )
    kinds: Sequence[str] = dataclasses.field(
        default=(), metadata=_declare(
            "list", "only these kinds: `conversation`, `entry`, `response`, `membership`", check_text_list,
            metavar="LIST", default_doc="all",
        ),
    )
    entry_channels: Sequence[str] = dataclasses.field(
        default=(), metadata=_declare(
            "list", "entry events only: these channels", check_text_list,
            metavar="LIST", default_doc="server default (`history`)",
        ),
    )
    entry_content_types: Sequence[str] = dataclasses.field(
        default=(), metadata=_declare(
            "list", "entry events only: these content types", check_text_list,
            metavar="LIST", default_doc="any",
        ),
    )
    entry_roles: Sequence[str] = dataclasses.field(
        default=(), metadata=_declare(
            "list", "entry events only: these roles", check_text_list,
            metavar="LIST", default_doc="any",
        ),
    )
    scope: str = dataclasses.field(
        default="admin", metadata=_declare(
            "choice", "`admin` (every user's events; needs the admin role) or `user` (the caller's)",
            None, choices=("admin", "user"),
        ),
    )
    after_cursor: Optional[str] = dataclasses.field(
        default=None, metadata=_declare(
            "str",
            "where a first run (no checkpoint yet) starts: `start` (the retained start), a cursor, or "
            "empty (the live tail). With a checkpoint, the run resumes after its `lastEventCursor`",
            check_optional_text, metavar="CURSOR", default_doc="the live tail",
        ),
    )
    justification: Optional[str] = dataclasses.field(
        default=None, metadata=_declare(
            "str", "audit text sent with the subscription (some servers require it for admin scope)",
            check_optional_text, metavar="TEXT",
        ),
    )
    checkpoint_interval: Duration = dataclasses.field(
        default=5.0, metadata=_declare(
            "duration", "`flush()` and checkpoint at least this often", check_duration,
            metavar="DURATION",
        ),
    )
    checkpoint_every: int = dataclasses.field(
        default=1, metadata=_declare(
            "int",
            "a checkpoint write is due after this many handled events; writes never block handling "
            "and coalesce under load. Raise it to write less",
            check_count, metavar="N", maximum=COUNTER_MAX,
        ),
    )
    reconnect_min: Duration = dataclasses.field(
        default=1.0, metadata=_declare(
            "duration", "first reconnect delay; doubles up to `reconnect_max`", check_duration,
            metavar="DURATION",
        ),
    )
    reconnect_max: Duration = dataclasses.field(
        default=30.0, metadata=_declare(
            "duration", "longest reconnect delay", check_duration, metavar="DURATION",
        ),
    )
    stale_cursor: str = dataclasses.field(
        default="fail", metadata=_declare(
            "choice",
            "when the checkpointed cursor fell out of the server's retention: `fail` (exit 1), "
            "`restart` (from the retained start) or `tail` (from the live tail)",
            None, choices=("fail", "restart", "tail"),
        ),
    )
    conversation_ids: Sequence[str] = dataclasses.field(
        default=(), metadata=_declare(
            "list", "only events of these conversations", check_text_list,
            metavar="LIST", default_doc="all",
        ),
    )
    buffer_size: int = dataclasses.field(
        default=4096, metadata=_declare(
            "int", "events buffered between the network and the processor", check_count,
            metavar="N", maximum=EVENT_COUNT_MAX,
        ),
    )
    buffer_bytes: int = dataclasses.field(
        default=64 * 1024 * 1024, metadata=_declare(
            "int", "bytes of event data buffered between the network and the processor (an event "
            "larger than this is still let through, alone)", check_count,
            metavar="BYTES", maximum=BUFFER_BYTES_MAX,
        ),
    )
    max_batch: int = dataclasses.field(
        default=512, metadata=_declare(
            "int", "most events handed to the processor per batch (a stop waits for the batch in hand)",
            check_count, metavar="N", maximum=EVENT_COUNT_MAX,
        ),
    )
    stop_timeout: Duration = dataclasses.field(
        default=5.0, metadata=_declare(
            "duration", "budget for the final flush and checkpoint on stop", check_duration,
            metavar="DURATION",
        ),
    )

    detect_other_writers: bool = dataclasses.field(
        default=True, metadata=_declare(
            "bool",
            "read the stored checkpoint back now and then (at most once per `checkpoint_interval`, "
            "and before the final write) and stop with an error if another instance wrote it: "
            "two processors with one `client_id` would overwrite each other's position",
            check_bool, metavar="{true,false}",
        ),
    )
    max_concurrency: int = dataclasses.field(
        default=1, metadata=_declare(
            "int",
            "most events handled at once; events with the same `key()` (default: the conversation) "
            "never overlap and keep stream order. `1` handles one event at a time; above 1 "
            "`handle` must be `async`",
            check_count, metavar="N", maximum=MAX_CONCURRENCY_MAX,
        ),
    )
    max_attempts: int = dataclasses.field(
        default=1, metadata=_declare(
            "int", "tries per event before it counts as failed (`1` = no retry)", check_count,
            metavar="N", maximum=MAX_ATTEMPTS_MAX,
        ),
    )
    retry_min: Duration = dataclasses.field(
        default=1.0, metadata=_declare(
            "duration", "first delay before retrying a failed event; doubles (with jitter) up to "
            "`retry_max`", check_duration, metavar="DURATION",
        ),
    )
    retry_max: Duration = dataclasses.field(
        default=30.0, metadata=_declare(
            "duration", "longest delay between tries of one event", check_duration, metavar="DURATION",
        ),
    )
    on_failure: str = dataclasses.field(
        default="stop", metadata=_declare(
            "choice",
            "an event that failed every try: `stop` (the run ends with its exception) or `skip` "
            "(the processor's `on_failure(event, error)` hook is called once and the run goes on)",
            None, choices=("stop", "skip"),
        ),
    )
    shard_count: int = dataclasses.field(
        default=1, metadata=_declare(
            "int",
            "split the stream among this many processes (shards): each handles the events whose "
            "`key()` hashes to its `shard_index` and drops the others before they reach Python. "
            "Each shard needs its own `client_id`",
            check_count, metavar="N", maximum=SHARD_COUNT_MAX,
        ),
    )
    shard_index: int = dataclasses.field(
        default=0, metadata=_declare(
            "int", "which shard this process is, `0` to `shard_count - 1`", _check_index,
            metavar="I", minimum=0, maximum=SHARD_COUNT_MAX - 1,
        ),
    )

    def __post_init__(self) -> None:
        for setting in CONFIG_SETTINGS:
            value = setting.normalize(getattr(self, setting.name))
            object.__setattr__(self, setting.name, value)  # a frozen dataclass
        low, high = _secs(self.reconnect_min), _secs(self.reconnect_max)
        if high < low:
            raise ConfigurationError(f"reconnect_max ({high}s) must be at least reconnect_min ({low}s)")
        low, high = _secs(self.retry_min), _secs(self.retry_max)
        if high < low:
            raise ConfigurationError(f"retry_max ({high}s) must be at least retry_min ({low}s)")
        if self.shard_index >= self.shard_count:
            raise ConfigurationError(
                f"shard_index ({self.shard_index}) must be less than shard_count ({self.shard_count}): "
                f"shards are numbered 0 to {self.shard_count - 1}"
            )

    def replace(self, **changes: Any) -> "Config":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)



def _declared(field: "dataclasses.Field[Any]") -> Setting:
    setting: Setting = field.metadata[SETTING]
    default = None if field.default is dataclasses.MISSING else field.default
    return dataclasses.replace(
        setting,
        name=field.name,
        default=default,
        flag="--" + field.name.replace("_", "-"),
        env=_ENV_PREFIX + field.name.upper(),
    )


#: The settings of :class:`Config`, in field order.
CONFIG_SETTINGS: Tuple[Setting, ...] = tuple(_declared(f) for f in dataclasses.fields(Config))
