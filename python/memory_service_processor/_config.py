"""`Config`: what a processor subscribes to and how the loop behaves."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from typing import Any, Optional, Sequence, Tuple, Union

from .errors import ConfigurationError

__all__ = ["Config", "Duration", "parse_duration"]

#: A duration: seconds as a number, or a :class:`datetime.timedelta`.
Duration = Union[float, int, _dt.timedelta]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Union[Duration, str], name: str = "duration") -> float:
    """Seconds from a number, a ``timedelta`` or a string such as ``"5s"``, ``"500ms"``, ``"1m"``.

    Raises :class:`ConfigurationError` (a ``ValueError``) naming ``name`` for anything that is
    not a positive, finite duration, and :class:`TypeError` for a value of another type.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds or a timedelta, not bool")
    if isinstance(value, _dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        for unit in ("ms", "s", "m", "h"):
            if text.endswith(unit) and (unit != "s" or not text.endswith("ms")):
                number = text[: -len(unit)].strip()
                break
        else:
            unit, number = "s", text
        try:
            seconds = float(number) * _UNITS[unit]
        except ValueError:
            raise ConfigurationError(
                f"{name} must be a duration such as 5s, 500ms or 1m, got {value!r}"
            ) from None
    else:
        raise TypeError(
            f"{name} must be a number of seconds or a timedelta, not {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(f"{name} must be a positive duration, got {value!r}")
    return seconds


def _secs(value: Duration) -> float:
    """Seconds of a duration field (already normalized to a float by ``Config``)."""
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return float(value)


def _strings(value: Any, name: str) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        raise TypeError(f"{name} must be a list of strings, not a single string ({value!r})")
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of strings, not {type(value).__name__}") from None
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigurationError(f"{name} must contain non-empty strings, got {item!r}")
    return items


@dataclasses.dataclass(frozen=True)
class Config:
    """Configuration of a processor run (the seed's ``Config``, plus safe new options).

    Durations accept seconds (``float``) or :class:`datetime.timedelta` and are stored as
    seconds. Every value is checked at construction: a bad one raises
    :class:`~memory_service_processor.ConfigurationError` (a ``ValueError``) or ``TypeError``
    naming the field; an unknown field raises ``TypeError``.
    """

    #: Identifies the processor and its checkpoint (required, non-empty).
    client_id: str
    #: Only these kinds (conversation, entry, response, membership); empty = all.
    kinds: Sequence[str] = ()
    #: Entry events only: these channels (server default: ``["history"]``).
    entry_channels: Sequence[str] = ()
    #: Entry events only: these content types; empty = any.
    entry_content_types: Sequence[str] = ()
    #: Entry events only: these roles; empty = any.
    entry_roles: Sequence[str] = ()
    #: ``"admin"`` (every user's events; needs the admin role) or ``"user"``.
    scope: str = "admin"
    #: Where a first run starts: ``None`` = live tail only, ``"start"`` = the retained start,
    #: or a cursor.
    after_cursor: Optional[str] = None
    #: Audit text sent with the subscription (may be required for admin scope).
    justification: Optional[str] = None
    #: Flush and save at least this often (seconds).
    checkpoint_interval: Duration = 5.0
    #: A checkpoint write is due after this many handled events (1 = after every event, as
    #: the seed). Writes never block handling; under load they coalesce.
    checkpoint_every: int = 1
    #: First reconnect delay (seconds); doubles up to ``reconnect_max``.
    reconnect_min: Duration = 1.0
    #: Longest reconnect delay (seconds).
    reconnect_max: Duration = 30.0
    #: What to do when the stored cursor fell out of retention: ``"fail"`` (raise
    #: :class:`StaleCursorError`), ``"restart"`` (from the retained start) or ``"tail"``.
    stale_cursor: str = "fail"
    #: Only events of these conversations; empty = all.
    conversation_ids: Sequence[str] = ()
    #: Events buffered between the network and the processor (bounded memory).
    buffer_size: int = 4096
    #: Most events handed to the processor per batch.
    max_batch: int = 512
    #: Budget for the final flush + checkpoint on stop (seconds).
    stop_timeout: Duration = 5.0

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        if not isinstance(self.client_id, str):
            raise TypeError(f"client_id must be a str, not {type(self.client_id).__name__}")
        if not self.client_id.strip():
            raise ConfigurationError("client_id must be a non-empty string")
        for name in ("kinds", "entry_channels", "entry_content_types", "entry_roles", "conversation_ids"):
            set_(name, _strings(getattr(self, name), name))
        if not isinstance(self.scope, str) or self.scope.strip().lower() not in ("admin", "user"):
            raise ConfigurationError(f'scope must be "admin" or "user", got {self.scope!r}')
        set_("scope", self.scope.strip().lower())
        for name in ("after_cursor", "justification"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise TypeError(f"{name} must be a str or None, not {type(v).__name__}")
            if isinstance(v, str) and not v.strip():
                set_(name, None)
        for name in ("checkpoint_interval", "reconnect_min", "reconnect_max", "stop_timeout"):
            set_(name, parse_duration(getattr(self, name), name))
        rmin, rmax = _secs(self.reconnect_min), _secs(self.reconnect_max)
        if rmax < rmin:
            raise ConfigurationError(f"reconnect_max ({rmax}s) must be at least reconnect_min ({rmin}s)")
        for name in ("checkpoint_every", "buffer_size", "max_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, not {type(v).__name__}")
            if v < 1:
                raise ConfigurationError(f"{name} must be at least 1, got {v}")
        if not isinstance(self.stale_cursor, str) or self.stale_cursor.strip().lower() not in (
            "fail",
            "restart",
            "tail",
        ):
            raise ConfigurationError(
                f'stale_cursor must be "fail", "restart" or "tail", got {self.stale_cursor!r}'
            )
        set_("stale_cursor", self.stale_cursor.strip().lower())

    def replace(self, **changes: Any) -> "Config":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
