"""Structured logging for memory-service-processor: typed record fields and JSON lines.

The Rust core logs through Python :mod:`logging` (loggers ``memory_service_processor.driver``,
``.stream_loop``, ``.checkpoint_writer``, ``.server``). Its records carry their fields as
record attributes (``record.client_id``, ``record.cursor``, ``record.after_cursor``,
``record.attempt``, ``record.reason``: the Rust side passes them as structured key-values, as
strings); the message text is for humans only. :class:`StructuredLogFilter` gives those
attributes their Python types (``attempt`` an ``int``, an absent cursor or reason ``None``).
:class:`JsonFormatter` writes one JSON object per line with ``time``, ``level``, ``logger``,
``message`` and every extra field. :func:`configure_logging` wires both to a stream handler,
as the command line does::

    import logging
    from memory_service_processor._logging import StructuredLogFilter, JsonFormatter

    handler = logging.StreamHandler()
    handler.addFilter(StructuredLogFilter())
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)

A filter attached to a *handler* sees the records of every logger that propagates to it; a
filter attached to a logger would only see records logged on that exact logger.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from typing import Any, Callable, Dict, Mapping, Optional, TextIO, Tuple

__all__ = [
    "STRUCTURED_KEYS",
    "StructuredLogFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
]


def _text(value: Any) -> Any:
    """A client id (``None`` stays ``None``)."""
    return value if value is None else str(value)


def _optional_text(value: Any) -> Optional[str]:
    """A cursor or reason: the core sends ``""`` when there is none."""
    if value is None:
        return None
    text = str(value)
    return text if text else None


def _count(value: Any) -> Any:
    """An attempt number (left as it is if it is not one)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value))
    except ValueError:
        return value


#: The structured fields of the core's records and how each is typed on the record.
FIELD_TYPES: Mapping[str, Callable[[Any], Any]] = {
    "client_id": _text,
    "cursor": _optional_text,
    "after_cursor": _optional_text,
    "attempt": _count,
    "reason": _optional_text,
}

#: The structured fields of the core's records.
STRUCTURED_KEYS: Tuple[str, ...] = tuple(FIELD_TYPES)

#: The logger namespace of the package (and of the Rust core's records).
LOGGER_PREFIX = "memory_service_processor"

# Attributes every LogRecord has; anything else on a record is an "extra" field.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)).keys()
) | {"message", "asctime", "taskName"}


class StructuredLogFilter(logging.Filter):
    """Types the structured fields (``client_id``, ``cursor``, ``after_cursor``, ``attempt``,
    ``reason``) of records of the ``memory_service_processor`` loggers.

    Attach it to a *handler* (it then sees records propagated from every logger). It never
    drops a record, never adds an attribute a record does not have, and leaves records of
    other loggers untouched.
    """

    def __init__(self, prefix: str = LOGGER_PREFIX, fields: Mapping[str, Callable[[Any], Any]] = FIELD_TYPES) -> None:
        super().__init__()
        self.prefix = prefix
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        """Types ``record``'s structured fields in place; always returns ``True``."""
        name = record.name
        if name != self.prefix and not name.startswith(self.prefix + "."):
            return True
        attrs = record.__dict__
        for key, convert in self.fields.items():
            if key in attrs:
                attrs[key] = convert(attrs[key])
        return True


def _extras(record: logging.LogRecord) -> Dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, then every extra attribute of the record (``client_id``, ``cursor``, ... and
    whatever the caller passed with ``extra=``), and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        doc: Dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            if key not in doc:
                doc[key] = _jsonable(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2026-01-31 12:00:00,123 INFO memory_service_processor.driver: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure_logging(
    level: str = "info",
    fmt: str = "text",
    stream: Optional[TextIO] = None,
) -> logging.Handler:
    """Sends all logging to ``stream`` (default ``sys.stderr``) at ``level``, as ``text`` or
    ``json`` lines, with :class:`StructuredLogFilter` enrichment. Replaces handlers that an
    earlier call installed; returns the new handler.

    Raises ``ValueError`` for an unknown level or format.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r} (use debug, info, warning, error)")
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (use text or json)")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(StructuredLogFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._msp_installed = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_msp_installed", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # The Rust bridge caches logger levels; make it see the new configuration.
    try:
        from . import _native

        _native.reset_log_cache()
    except Exception:  # pragma: no cover - the native module is always there when installed
        pass
    return handler
