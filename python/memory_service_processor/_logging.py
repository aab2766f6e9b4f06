"""Structured logging for memory-service-processor: ``key=value`` enrichment and JSON lines.

The Rust core logs through Python :mod:`logging` (loggers ``memory_service_processor.driver``,
``.stream_loop``, ``.checkpoint_writer``, ``.server``) with messages such as
``"subscribing client_id=orders after_cursor=1041"``. :class:`StructuredLogFilter` parses
those ``key=value`` tokens into attributes of the log record (``record.client_id``,
``record.cursor``, ...), so a formatter can emit them as fields. :class:`JsonFormatter` writes
one JSON object per line with ``time``, ``level``, ``logger``, ``message`` and every extra
field. :func:`configure_logging` wires both to a stream handler, as the command line does::

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
import re
import sys
from typing import Any, Dict, Iterable, Optional, TextIO, Tuple

__all__ = [
    "STRUCTURED_KEYS",
    "StructuredLogFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "parse_key_values",
]

#: The ``key=value`` tokens lifted from the core's messages into record attributes.
STRUCTURED_KEYS: Tuple[str, ...] = ("client_id", "cursor", "after_cursor", "attempt", "reason")

#: The logger namespace of the package (and of the Rust core's records).
LOGGER_PREFIX = "memory_service_processor"

# Values the core writes when there is no cursor.
_NO_VALUE = {"<none>", "<tail>", ""}

# A token ``key=`` at the start of the message or after whitespace / an opening bracket.
_KEY_RE = re.compile(r"(?:(?<=[\s(\[,])|^)([A-Za-z_][A-Za-z0-9_]*)=")
# "(attempt 3)" as the core writes it in retry messages.
_ATTEMPT_RE = re.compile(r"\(attempt (\d+)\)")
# Where a free-text value (``reason=slow consumer``) ends: ": " or the end of the text.
_FREE_TEXT_END = re.compile(r":\s")

# Attributes every LogRecord has; anything else on a record is an "extra" field.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)).keys()
) | {"message", "asctime", "taskName"}


def _clean_token(value: str) -> str:
    """A token value without trailing punctuation (``5:`` -> ``5``, ``p,`` -> ``p``)."""
    return value.rstrip(":,;)]").strip()


def parse_key_values(message: str, keys: Iterable[str] = STRUCTURED_KEYS) -> Dict[str, Any]:
    """The ``key=value`` pairs of ``message`` whose key is in ``keys``.

    Values are tokens up to the next whitespace (trailing ``:``, ``,``, ``;``, ``)`` are
    dropped); ``reason`` is free text and runs up to the next ``key=`` token or ``": "``.
    ``<none>`` / ``<tail>`` become ``None``; ``attempt`` becomes an ``int``. The core's
    ``(attempt N)`` spelling is understood as well.

    >>> parse_key_values("evicted client_id=p reason=slow consumer cursor=42: resuming")
    {'client_id': 'p', 'reason': 'slow consumer', 'cursor': '42'}
    """
    wanted = set(keys)
    out: Dict[str, Any] = {}
    matches = list(_KEY_RE.finditer(message))
    for i, m in enumerate(matches):
        key = m.group(1)
        if key not in wanted or key in out:
            continue
        start = m.end()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(message)
        raw = message[start:end]
        if key == "reason":
            stop = _FREE_TEXT_END.search(raw)
            value: Any = (raw[: stop.start()] if stop else raw).strip().rstrip(":,;")
        else:
            token = raw.split(None, 1)[0] if raw.strip() else ""
            value = _clean_token(token)
        if value in _NO_VALUE:
            value = None
        elif key == "attempt":
            try:
                value = int(value)
            except ValueError:
                pass
        out[key] = value
    if "attempt" in wanted and "attempt" not in out:
        m2 = _ATTEMPT_RE.search(message)
        if m2:
            out["attempt"] = int(m2.group(1))
    return out


class StructuredLogFilter(logging.Filter):
    """Adds ``client_id``, ``cursor``, ``after_cursor``, ``attempt`` and ``reason`` attributes
    to records of the ``memory_service_processor`` loggers, parsed from ``key=value`` text.

    Attach it to a *handler* (it then sees records propagated from every logger). It never
    drops a record, never overwrites an attribute the record already has (e.g. an ``extra=``
    given by the caller), and leaves records of other loggers untouched.
    """

    def __init__(self, prefix: str = LOGGER_PREFIX, keys: Iterable[str] = STRUCTURED_KEYS) -> None:
        super().__init__()
        self.prefix = prefix
        self.keys = tuple(keys)

    def filter(self, record: logging.LogRecord) -> bool:
        """Enriches ``record`` in place; always returns ``True``."""
        name = record.name
        if name != self.prefix and not name.startswith(self.prefix + "."):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format: leave it to the formatter to report
            return True
        for key, value in parse_key_values(message, self.keys).items():
            if not hasattr(record, key):
                setattr(record, key, value)
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
