"""One declaration per setting: :class:`Setting`, and the checks it refers to.

Every field of :class:`~memory_service_processor.Config` and every connection option of
:class:`~memory_service_processor.ConnectionOptions` is declared once, as a :class:`Setting`: its
name, kind, default, check (validation and normalization), command-line flag, environment
variable and help text. The constructors run the checks; the command line builds its options
and reads its environment variables from the same declarations, and the README's configuration
tables are generated from them (``python -m memory_service_processor._cli.options --markdown``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
from typing import Any, Callable, Optional, Tuple, Union

from .errors import ConfigurationError

__all__ = [
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
KINDS = ("str", "secret", "list", "duration", "int", "choice")

#: ``check(name, value)``: the normalized value, or ConfigurationError / TypeError naming ``name``.
Check = Callable[[str, Any], Any]


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
    #: The smallest value of an ``int`` setting.
    minimum: int = 1
    #: Whether the setting has to be given (it then has no default).
    required: bool = False
    #: Whether the Python field holding it has another name (``_api_key`` for ``api_key``).
    attribute: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"setting {self.name}: unknown kind {self.kind!r}")

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
        return self.default_text

    @property
    def help_text(self) -> str:
        """:attr:`help` as plain text."""
        return self.help.replace("`", "")

    def normalize(self, value: Any) -> Any:
        """``value`` checked and normalized (unchanged if the setting declares no check)."""
        return value if self.check is None else self.check(self.name, value)


def duration_text(seconds: float) -> str:
    """``5s``, ``500ms``: a duration as the docs and ``--help`` write it."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{int(round(seconds * 1000))}ms"


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


def check_duration(name: str, value: Any) -> float:
    """A positive duration, in seconds."""
    return parse_duration(value, name)


def check_required_text(name: str, value: Any) -> str:
    """A non-blank string."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ConfigurationError(f"{name} must be a non-empty string")
    return value


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
    """A whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ConfigurationError(f"{name} must be at least 1, got {value}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """A whole number of at least 1 (any other value is a ConfigurationError)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    return value


def check_readable_file(name: str, value: Any) -> Optional[str]:
    """``None``, or the path (``str`` or path-like) of an existing file, as a ``str``."""
    if value is None:
        return None
    path = os.fspath(value)
    if not os.path.isfile(path):
        raise ConfigurationError(f"{name} {path!r} is not a readable file")
    return path


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
