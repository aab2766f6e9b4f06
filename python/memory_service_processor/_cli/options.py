"""The command line's options: every setting's flag and environment variable, and their values.

The options of ``Config`` and ``ConnectionOptions`` come from their declarations
(:data:`~memory_service_processor._config.CONFIG_SETTINGS`,
:data:`~memory_service_processor._connection.CONNECTION_SETTINGS`); the options that only the
command line has (the checkpoint store, logging, metrics) are declared here. Every value comes
from its flag or, when the flag is absent, from its environment variable, else from its default.

The README's configuration tables are generated from the same declarations:
``python scripts/settings_tables.py`` prints them, ``--write README.md`` replaces them in place
(a test fails when they differ).
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

from .._config import CONFIG_SETTINGS, Config
from .._connection import CONNECTION_SETTINGS
from .._health import DEFAULT_LIVENESS_TIMEOUT
from .._settings import BOOL_TEXTS, PORT_MAX, Setting, parse_duration, shown_value
from .errors import UsageError

__all__ = [
    "CLI_SETTINGS",
    "OPTIONS",
    "OneLineParser",
    "add_options",
    "build_config",
    "connection_kwargs",
    "markdown_tables",
    "require",
    "resolve_options",
    "shard_index_from_hostname",
]

#: The options only the command line has.
CLI_SETTINGS: Tuple[Setting, ...] = (
    Setting(
        "checkpoint_store", "str",
        "where checkpoints live: `grpc` (the server's checkpoint service; needs an admin credential), "
        "`file:PATH` (one JSON document per client id in directory `PATH`, written atomically) or "
        "`memory` (this process only: every start is a first run)",
        default="grpc", flag="--checkpoint-store", env="MEMORY_SERVICE_PROCESS_CHECKPOINT_STORE",
        group="connection", metavar="STORE",
    ),
    Setting(
        "log_level", "choice", "`debug`, `info`, `warning` or `error`",
        default="info", flag="--log-level", env="MEMORY_SERVICE_PROCESS_LOG_LEVEL", group="cli",
        choices=("debug", "info", "warning", "error"),
    ),
    Setting(
        "log_format", "choice",
        "`text`, or `json`: one object per line with `time`, `level`, `logger`, `message`, `client_id`, "
        "`cursor`, ...",
        default="text", flag="--log-format", env="MEMORY_SERVICE_PROCESS_LOG_FORMAT", group="cli",
        choices=("text", "json"),
    ),
    Setting(
        "metrics_port", "int",
        "serve Prometheus metrics at `http://ADDR:PORT/metrics` (needs the `[prometheus]` extra)",
        flag="--metrics-port", env="MEMORY_SERVICE_PROCESS_METRICS_PORT", group="cli", metavar="PORT",
        default_doc="off", minimum=0, maximum=PORT_MAX,
    ),
    Setting(
        "metrics_addr", "str", "address the metrics and health servers listen on",
        default="0.0.0.0", flag="--metrics-addr", env="MEMORY_SERVICE_PROCESS_METRICS_ADDR", group="cli",
        metavar="ADDR", default_doc="`0.0.0.0`",
    ),
    Setting(
        "health_port", "int",
        "serve the health probes `/healthz` (liveness) and `/readyz` (readiness) at `http://ADDR:PORT` "
        "(standard library only; the metrics server answers them too)",
        flag="--health-port", env="MEMORY_SERVICE_PROCESS_HEALTH_PORT", group="cli", metavar="PORT",
        default_doc="off", minimum=0, maximum=PORT_MAX,
    ),
    Setting(
        "liveness_timeout", "duration",
        "`/healthz` fails (503) while one handler call (with `max_concurrency` 1: the batch in hand) "
        "has been running for longer than this",
        default=DEFAULT_LIVENESS_TIMEOUT, flag="--liveness-timeout", env="MEMORY_SERVICE_PROCESS_LIVENESS_TIMEOUT",
        group="cli", metavar="DURATION", default_doc="`10m`",
    ),
    Setting(
        "shard_index_from_hostname", "bool",
        "take `shard_index` from the trailing `-<ordinal>` of the host name (a StatefulSet pod "
        "name such as `summarizer-2` is shard 2); an error if the name has none or an explicit "
        "`--shard-index` differs",
        default=False, flag="--shard-index-from-hostname",
        env="MEMORY_SERVICE_PROCESS_SHARD_INDEX_FROM_HOSTNAME", group="config", metavar="{true,false}",
    ),
)

#: ``run``'s ``--arg``: its flag and help (a plain argparse option, listed in the README's table).
PROCESSOR_ARG_FLAG = "--arg"
PROCESSOR_ARG_METAVAR = "NAME=VALUE"
PROCESSOR_ARG_HELP = "keyword argument for the processor's constructor (string value; repeatable)"

#: Every setting of ``run`` that has a flag: connection options, the checkpoint store,
#: ``Config`` fields, logging and metrics.
OPTIONS: Tuple[Setting, ...] = (
    tuple(s for s in CONNECTION_SETTINGS if s.flag)
    + tuple(s for s in CLI_SETTINGS if s.group == "connection")
    + CONFIG_SETTINGS
    + tuple(s for s in CLI_SETTINGS if s.group == "config")
    + tuple(s for s in CLI_SETTINGS if s.group == "cli")
)

_BY_NAME = {o.name: o for o in OPTIONS}

_GROUP_TITLES = {"connection": "connection", "config": "processing (Config)", "cli": "logging, metrics and health"}

# -- argument parsing -------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit with code 2."""

    def error(self, message: str) -> NoReturn:  # noqa: D401 - argparse API
        raise UsageError(f"{message} (see {self.prog} --help)")


def add_options(
    parser: argparse.ArgumentParser, groups: Sequence[str], only: Optional[Sequence[str]] = None
) -> None:
    """Adds the options of ``groups`` (all, or those named in ``only``) to ``parser``."""
    for group in groups:
        arguments = parser.add_argument_group(_GROUP_TITLES[group])
        for o in OPTIONS:
            if o.group != group or (only is not None and o.name not in only):
                continue
            assert o.flag is not None
            env = f" [env {o.env}]" if o.env else ""
            shown = o.required or o.default_doc is not None or o.default not in (None, ())
            default = "" if not shown else (" (required)" if o.required else f" (default {o.default_text})")
            if o.kind == "list":
                default = " (comma-separated or repeated)" + default
            kwargs: Dict[str, Any] = {
                "dest": o.name,
                "default": None,
                "help": f"{o.help_text}{default}{env}".replace("%", "%%"),
            }
            if o.kind == "list":
                kwargs["action"] = "append"
            if o.kind == "bool":
                # `--flag` alone means `--flag true`; `--flag false` still turns it off.
                kwargs["nargs"] = "?"
                kwargs["const"] = "true"
            if o.choices:
                kwargs["metavar"] = "{" + ",".join(o.choices) + "}"
            elif o.metavar:
                kwargs["metavar"] = o.metavar
            arguments.add_argument(o.flag, **kwargs)


def int_at_least(name: str, minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``, with a one-line error naming ``name``."""

    def convert(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {shown_value(text)}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be at least {minimum}, got {number}")
        return number

    return convert


def duration_argument(name: str) -> Callable[[str], float]:
    """An argparse type: a duration (``5s``, ``500ms``, seconds), with an error naming ``name``."""

    def convert(text: str) -> float:
        try:
            return parse_duration(text, name)
        except (ValueError, TypeError, ArithmeticError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


# -- resolving flags and environment ------------------------------------------------------------


def _convert(o: Setting, raw: Any, source: str) -> Any:
    """``raw`` (flag value or environment text) converted, checked and range-checked for ``o``
    as its constructor would; UsageError naming ``source`` (the flag or the variable) for any
    value that cannot be used, so that no ValueError, OverflowError or TypeError escapes."""
    try:
        value = _parse(o, raw)
        if value in ("", ()):
            return value  # unset: `require` or the default decides
        return o.normalize(value)
    except (ValueError, TypeError, ArithmeticError) as e:
        message = str(e)
        if o.kind == "secret":  # never echo a secret, even a malformed one
            message = "must be a non-empty string"
        raise UsageError(f"{source}: {message}") from None


def _parse(o: Setting, raw: Any) -> Any:
    """``raw`` as a value of ``o``'s kind (ValueError for text that is not one)."""
    if o.kind == "list":
        parts: List[str] = []
        for item in raw if isinstance(raw, list) else [raw]:
            parts.extend(p.strip() for p in str(item).split(",") if p.strip())
        return tuple(parts)
    text = str(raw).strip()
    if o.kind == "duration":
        return parse_duration(text, o.name)
    if o.kind == "int":
        try:
            return int(text)
        except ValueError:
            if re.fullmatch(r"[+-]?[0-9]+", text):  # digits beyond what int() converts
                bounds = o.bounds or (1, 0)
                limit = f"at least {int(bounds[0])}" if text.startswith("-") else f"at most {int(bounds[1])}"
                raise ValueError(f"{o.name} must be {limit}, got a number of {len(text)} digits") from None
            raise ValueError(f"must be a whole number, got {shown_value(text)}") from None
    if o.kind == "bool":
        if text.lower() not in BOOL_TEXTS:
            raise ValueError(f"must be true or false, got {shown_value(text)}")
        return BOOL_TEXTS[text.lower()]
    if o.kind == "choice":
        choice = text.lower()
        if choice not in o.choices:
            raise ValueError(f"must be one of {', '.join(o.choices)}, got {shown_value(text)}")
        return choice
    if o.kind == "secret" and not text:
        raise ValueError("must not be empty")
    return text


def resolve_options(
    args: argparse.Namespace,
    environ: Optional[Mapping[str, str]] = None,
    names: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """The value of every option of ``args`` (or of those in ``names``): the flag if given,
    else its environment variable if set and non-empty, else the default. Raises
    :class:`UsageError` naming the flag or variable."""
    env = os.environ if environ is None else environ
    values: Dict[str, Any] = {}
    for o in OPTIONS:
        if names is not None and o.name not in names:
            continue
        if not hasattr(args, o.name):
            continue
        flag_value = getattr(args, o.name)
        if flag_value is not None:
            values[o.name] = _convert(o, flag_value, o.flag or o.name)
        elif o.env and env.get(o.env, "").strip():
            values[o.name] = _convert(o, env[o.env], o.env)
        else:  # an unset or empty variable means "not set"
            values[o.name] = o.default
    return values


def require(values: Mapping[str, Any], name: str) -> Any:
    """The value of option ``name``; UsageError naming its flag and variable if it is unset."""
    value = values.get(name)
    if value is None or value == "":
        o = _BY_NAME[name]
        raise UsageError(f"{o.flag} (or {o.env}) is required")
    return value


_ORDINAL = re.compile(r"-([0-9]+)$")


def shard_index_from_hostname(
    values: Dict[str, Any],
    args: argparse.Namespace,
    hostname: str,
    environ: Optional[Mapping[str, str]] = None,
) -> None:
    """With ``shard_index_from_hostname`` on, sets ``values["shard_index"]`` to the ordinal
    at the end of ``hostname``'s first label (``summarizer-2`` and
    ``summarizer-2.summarizer.ns.svc`` give 2). Raises :class:`UsageError` when the name has
    no ``-<ordinal>``, or when ``--shard-index`` (or its variable) gives another index."""
    if not values.get("shard_index_from_hostname"):
        return
    name = hostname.strip().split(".", 1)[0]
    match = _ORDINAL.search(name)
    if match is None:
        raise UsageError(
            f"--shard-index-from-hostname: the host name {shown_value(hostname)} does not end "
            "with -<ordinal> (a StatefulSet pod name such as summarizer-2); pass --shard-index instead"
        )
    index = int(match.group(1))
    env = os.environ if environ is None else environ
    o = _BY_NAME["shard_index"]
    explicit = getattr(args, "shard_index", None) is not None or bool(env.get(o.env or "", "").strip())
    if explicit and values.get("shard_index") != index:
        raise UsageError(
            f"--shard-index-from-hostname: the host name {shown_value(hostname)} gives shard index "
            f"{index}, but {o.flag} (or {o.env}) says {values.get('shard_index')}; give one of them"
        )
    values["shard_index"] = index


def build_config(values: Mapping[str, Any]) -> Config:
    """A :class:`Config` from resolved option values; UsageError for a bad combination."""
    kwargs = {s.name: values[s.name] for s in CONFIG_SETTINGS if s.name in values}
    require(values, "client_id")
    try:
        return Config(**kwargs)
    except (ValueError, TypeError, ArithmeticError) as e:
        raise UsageError(f"configuration: {e}") from None


def connection_kwargs(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Keyword arguments for :class:`Runtime` / :class:`ConnectionOptions` (no endpoint)."""
    return {
        s.name: values[s.name]
        for s in CONNECTION_SETTINGS
        if s.flag and s.name != "endpoint" and s.name in values
    }


# -- the README's tables ----------------------------------------------------------------------------


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _markdown_table(group: str) -> str:
    lines = [
        _row(("field", "flag", "environment variable", "default", "meaning")),
        "|---|---|---|---|---|",
    ]
    for o in OPTIONS:
        if o.group != group:
            continue
        is_field = o in CONFIG_SETTINGS or o in CONNECTION_SETTINGS
        lines.append(_row((
            f"`{o.name}`" if is_field else "",
            f"`{o.flag}`",
            f"`{o.env}`",
            o.default_markdown,
            o.help_markdown,
        )))
    if group == "cli":
        lines.append(_row(("", f"`{PROCESSOR_ARG_FLAG} {PROCESSOR_ARG_METAVAR}`", "", "", PROCESSOR_ARG_HELP)))
    return "\n".join(lines)


def _begin(group: str) -> str:
    return f"<!-- settings table {group}: generated by scripts/settings_tables.py, do not edit -->"


def _end(group: str) -> str:
    return f"<!-- end of settings table {group} -->"


#: The groups of settings, in the README's order.
GROUPS = ("connection", "config", "cli")


def markdown_tables() -> Dict[str, str]:
    """The README's configuration tables, by group, each between its begin and end markers."""
    return {group: f"{_begin(group)}\n{_markdown_table(group)}\n{_end(group)}" for group in GROUPS}


def readme_tables(readme: str) -> Dict[str, Optional[str]]:
    """The tables found in ``readme`` between their markers (``None`` where missing)."""
    found: Dict[str, Optional[str]] = {}
    for group in GROUPS:
        begin = re.escape(f"<!-- settings table {group}:") + r"[^\n]*-->"
        match = re.search(begin + r".*?" + re.escape(_end(group)), readme, re.S)
        found[group] = match.group(0) if match else None
    return found


def replace_tables(readme: str) -> str:
    """``readme`` with each generated table replaced by the current one."""
    for group, table in markdown_tables().items():
        current = readme_tables(readme)[group]
        if current is None:
            raise ValueError(f"the README has no markers for the {group} settings table")
        readme = readme.replace(current, table)
    return readme
