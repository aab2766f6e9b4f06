"""One declaration per setting: :class:`Setting`, and the checks it refers to.

Every field of :class:`~memory_service_processor.Config` and every connection option of
:class:`~memory_service_processor.ConnectionOptions` is declared once, as a :class:`Setting`: its
name, kind, default, check (validation and normalization), command-line flag, environment
variable and help text. The constructors run the checks; the command line builds its options
and reads its environment variables from the same declarations, and the README's configuration
tables are generated from them (``python scripts/settings_tables.py``).

Every duration accepts :data:`DURATION_MIN` (10 ms) to :data:`DURATION_MAX` (365 days) and every
size declares its maximum, so that no value can reach an overflow or a panic in the native core;
a value outside its range is refused, never clamped.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
from typing import Any, Callable, Optional, Tuple, Union

from .errors import ConfigurationError

__all__ = [
    "CLIENT_ID_MAX_BYTES",
    "DURATION_MAX",
    "DURATION_MIN",
    "Duration",
    "Setting",
    "duration_text",
    "parse_duration",
]

#: A duration: seconds as a number, or a :class:`datetime.timedelta`.
Duration = Union[float, int, _dt.timedelta]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

#: The kinds of setting. The kind says how the command line parses the text of a flag or an
#: environment variable, and how the documentation shows the default.
KINDS = ("str", "secret", "list", "duration", "int", "choice", "bool")

#: How the command line and the environment write a ``bool`` setting (case-insensitive).
BOOL_TEXTS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "on": True, "off": False}

#: ``check(name, value)``: the normalized value, or ConfigurationError / TypeError naming ``name``.
Check = Callable[[str, Any], Any]

# -- limits ------------------------------------------------------------------------------------
#
# Every duration and size setting is range-checked at construction, so that no value can reach
# an overflow or a panic in the native core (Rust's ``Duration``, tokio's timers, ``Instant + d``,
# 32-bit lengths) and no value makes the runtime spin. A value outside its range is refused with
# a ConfigurationError naming the setting; nothing is clamped.

#: The shortest duration any setting accepts (10 ms). Shorter checkpoint intervals would call
#: ``flush()`` back to back, shorter keepalive or reconnect intervals would flood the server,
#: and no connection or request completes that fast.
DURATION_MIN = 0.01

#: The longest duration any setting accepts (365 days): far below what the native core's
#: durations, timers (about two years) and deadlines can represent.
DURATION_MAX = 365 * 86400.0

#: The largest ``max_message_size``: 2 GiB - 1, the largest length gRPC implementations
#: represent (a signed 32-bit integer).
MESSAGE_SIZE_MAX = 2**31 - 1

#: The largest ``buffer_size`` and ``max_batch``: events held in memory at once.
EVENT_COUNT_MAX = 1 << 20

#: The largest ``buffer_bytes`` (1 TiB): beyond any machine's memory, far below overflow.
BUFFER_BYTES_MAX = 1 << 40

#: The largest ``checkpoint_every`` (an unsigned 32-bit counter).
COUNTER_MAX = 2**32 - 1

#: The largest TCP port (``metrics_port``).
PORT_MAX = 65535

#: The longest ``client_id``, in bytes. It is sent with every call as the gRPC metadata
#: ``x-client-id``, which must stay well under the HTTP/2 header limits.
CLIENT_ID_MAX_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting, declared once.

    ``help`` is Markdown (backticks for code); the command line's ``--help`` shows it without
    the backticks. ``default_doc`` replaces the default in the documentation when the bare
    value would not say what happens (``"all"`` for an empty list of kinds). A setting without
    ``flag`` is not on the command line nor in the README's tables.
    """

    name: str
    kind: str
    help: str
    default: Any = None
    check: Optional[Check] = dataclasses.field(default=None, repr=False, compare=False)
    flag: Optional[str] = None
    env: Optional[str] = None
    #: ``"connection"``, ``"config"`` or ``"cli"``: the group in ``--help`` and in the README.
    group: str = ""
    choices: Tuple[str, ...] = ()
    metavar: Optional[str] = None
    default_doc: Optional[str] = None
    #: The smallest value of an ``int`` setting (default 1) or a ``duration`` setting, in
    #: seconds (default :data:`DURATION_MIN`); smaller values are refused.
    minimum: Optional[float] = None
    #: The largest value of an ``int`` setting (required for that kind) or a ``duration``
    #: setting, in seconds (default :data:`DURATION_MAX`); larger values are refused.
    maximum: Optional[float] = None
    #: Whether the setting has to be given (it then has no default).
    required: bool = False
    #: Whether the Python field holding it has another name (``_api_key`` for ``api_key``).
    attribute: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"setting {self.name}: unknown kind {self.kind!r}")
        if self.kind == "int" and self.maximum is None:
            raise ValueError(f"setting {self.name}: an int setting declares its maximum")

    @property
    def bounds(self) -> Optional[Tuple[float, float]]:
        """``(smallest, largest)`` accepted value of a ``duration`` (seconds) or ``int`` setting;
        ``None`` for the other kinds."""
        if self.kind == "duration":
            low = DURATION_MIN if self.minimum is None else self.minimum
            high = DURATION_MAX if self.maximum is None else self.maximum
            return (low, high)
        if self.kind == "int":
            assert self.maximum is not None
            return (1 if self.minimum is None else self.minimum, self.maximum)
        return None

    @property
    def range_text(self) -> str:
        """The accepted range in words (``10ms to 8760h (365 days)``, ``1 to 1048576``); empty
        for settings without one."""
        bounds = self.bounds
        if bounds is None:
            return ""
        low, high = bounds
        if self.kind == "duration":
            return f"{duration_text(low)} to {duration_text(high)}"
        return f"{int(low)} to {int(high)}"

    def check_range(self, value: Any) -> None:
        """Raises ConfigurationError naming the setting if ``value`` (already normalized: seconds
        or an int) is outside :attr:`bounds`."""
        bounds = self.bounds
        if bounds is None or value is None:
            return
        low, high = bounds
        if self.kind == "duration":
            shown = f"{value:g}s"
            if value < low:
                raise ConfigurationError(f"{self.name} must be at least {duration_text(low)}, got {shown}")
            if value > high:
                raise ConfigurationError(f"{self.name} must be at most {duration_text(high)}, got {shown}")
            return
        if value < low:
            raise ConfigurationError(f"{self.name} must be at least {int(low)}, got {shown_value(value)}")
        if value > high:
            raise ConfigurationError(f"{self.name} must be at most {int(high)}, got {shown_value(value)}")

    @property
    def field_name(self) -> str:
        """The attribute that holds the value on its object."""
        return self.attribute or self.name

    @property
    def default_text(self) -> str:
        """The default as plain text (``--help``): ``5s``, ``admin``, ``(none)``."""
        if self.required:
            return "(required)"
        if self.default_doc is not None:
            return self.default_doc.replace("`", "")
        if self.default is None or self.default == ():
            return "(none)"
        if self.kind == "bool":
            return str(self.default).lower()
        if self.kind == "duration":
            return duration_text(self.default)
        return str(self.default)

    @property
    def default_markdown(self) -> str:
        """The default as the README's tables show it."""
        if self.required:
            return "(required)"
        if self.default_doc is not None:
            return self.default_doc
        if self.kind == "choice" and self.default is not None:
            return f"`{self.default}`"
        if self.kind == "bool" and self.default is not None:
            return f"`{str(self.default).lower()}`"
        return self.default_text

    @property
    def help_markdown(self) -> str:
        """:attr:`help` followed by the accepted range, if the setting has one (the README)."""
        if not self.range_text:
            return self.help
        return f"{self.help}; values outside {self.range_text} are refused"

    @property
    def help_text(self) -> str:
        """:attr:`help_markdown` as plain text (``--help``)."""
        return self.help_markdown.replace("`", "")

    def normalize(self, value: Any) -> Any:
        """``value`` checked, normalized and range-checked (ConfigurationError or TypeError
        naming the setting)."""
        if self.check is not None:
            value = self.check(self.name, value)
        self.check_range(value)
        return value


def duration_text(seconds: float) -> str:
    """``5s``, ``500ms``, ``8760h (365 days)``: a duration as the docs and ``--help`` write it."""
    if seconds >= 3600 and float(seconds / 3600).is_integer():
        hours = int(seconds // 3600)
        return f"{hours}h ({hours // 24} days)" if hours >= 48 and hours % 24 == 0 else f"{hours}h"
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{int(round(seconds * 1000))}ms"


def shown_value(value: Any, limit: int = 40) -> str:
    """``repr(value)``, shortened to about ``limit`` characters for one-line messages."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"  # repr may refuse
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 10]}...{text[-7:]} ({len(text)} characters)"


# -- checks ------------------------------------------------------------------------------------


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
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            seconds = math.inf
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
                f"{name} must be a duration such as 5s, 500ms or 1m, got {shown_value(value)}"
            ) from None
    else:
        raise TypeError(
            f"{name} must be a number of seconds or a timedelta, not {type(value).__name__}"
        )
    if math.isnan(seconds) or seconds <= 0:
        raise ConfigurationError(f"{name} must be a positive duration, got {shown_value(value)}")
    if math.isinf(seconds):
        raise ConfigurationError(f"{name} must be a finite duration, got {shown_value(value)}")
    return seconds


def check_duration(name: str, value: Any) -> float:
    """A positive duration, in seconds (the setting's range is checked by
    :meth:`Setting.normalize`)."""
    return parse_duration(value, name)


def check_required_text(name: str, value: Any) -> str:
    """A non-blank string."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ConfigurationError(f"{name} must be a non-empty string")
    return value


def check_client_id(name: str, value: Any) -> str:
    """A client id: non-blank printable ASCII without leading or trailing spaces (it travels as
    the gRPC metadata ``x-client-id``), at most :data:`CLIENT_ID_MAX_BYTES` bytes."""
    text = check_required_text(name, value)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > CLIENT_ID_MAX_BYTES:
        raise ConfigurationError(f"{name} must be at most {CLIENT_ID_MAX_BYTES} bytes, got {size} bytes")
    for position, char in enumerate(text):
        if not " " <= char <= "~":
            raise ConfigurationError(
                f"{name} must be printable ASCII (it is sent as gRPC metadata x-client-id), "
                f"got {char!r} at position {position}"
            )
    if text != text.strip():
        raise ConfigurationError(
            f"{name} must not start or end with spaces (it is sent as gRPC metadata x-client-id), got {text!r}"
        )
    return text


def check_optional_client_id(name: str, value: Any) -> Optional[str]:
    """``None`` or a client id (:func:`check_client_id`); a blank string means ``None``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return check_client_id(name, value)


def check_optional_text(name: str, value: Any) -> Optional[str]:
    """A string or ``None``; a blank string means ``None``."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        return None
    return value


def check_secret(name: str, value: Any) -> Optional[str]:
    """A non-blank string or ``None``; the message never shows the value."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigurationError(f"{name} must be a non-empty string or None")
    return value


def check_text_list(name: str, value: Any) -> Tuple[str, ...]:
    """A tuple of non-blank strings from any iterable of them (not a single string)."""
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


def check_count(name: str, value: Any) -> int:
    """A whole number of at least 1 (the setting's maximum is checked by
    :meth:`Setting.normalize`)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ConfigurationError(f"{name} must be at least 1, got {shown_value(value)}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """A whole number of at least 1 (any other value is a ConfigurationError)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, got {shown_value(value)}")
    return value


def check_readable_file(name: str, value: Any) -> Optional[str]:
    """``None``, or the path (``str`` or path-like) of an existing file, as a ``str``."""
    if value is None:
        return None
    path: str = os.fspath(value)
    if not os.path.isfile(path):
        raise ConfigurationError(f"{name} {path!r} is not a readable file")
    return path


def check_bool(name: str, value: Any) -> bool:
    """A ``bool`` (``True`` / ``False`` only: ``0``, ``1`` or text are refused, so a typo cannot
    switch a safety check off)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")
    return value


def check_one_of(*choices: str) -> Check:
    """A check accepting one of ``choices``, case-insensitively; stores it lower-case."""
    if len(choices) > 1:
        quoted = ", ".join(f'"{c}"' for c in choices[:-1]) + f' or "{choices[-1]}"'
    else:
        quoted = f'"{choices[0]}"'

    def check_choice(name: str, value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise ConfigurationError(f"{name} must be {quoted}, got {value!r}")
        return value.strip().lower()

    return check_choice
