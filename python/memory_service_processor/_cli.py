"""The ``memory-service-processor`` command line: ``run``, ``demo`` and ``checkpoint``.

Every setting comes from a flag or, when the flag is absent, from an environment variable
(the ecosystem's names where they exist: ``MEMORY_SERVICE_GRPC_ENDPOINT``,
``MEMORY_SERVICE_PROCESS_CLIENT_ID``, ...), else from its default. Flags win.

Exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error, 130 a second
Ctrl-C (immediate exit). Every failure ends with one line ``memory-service-processor: error:
...`` on stderr; configuration errors print no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
import traceback
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

from ._config import Config, parse_duration
from .errors import (
    CheckpointNotFoundError,
    ConfigurationError,
    MemoryServiceProcessorError,
    ServerStatusError,
    StaleCursorError,
)

__all__ = ["main", "OPTIONS", "Option", "UsageError", "load_processor", "resolve_options"]

PROG = "memory-service-processor"

log = logging.getLogger("memory_service_processor.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A bad command line or configuration value: exit code 2, one line, no traceback."""


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its flag, environment variable, type, default and meaning."""

    dest: str
    flag: str
    env: Optional[str]
    kind: str  # "str" | "list" | "duration" | "int" | "choice" | "secret"
    default: Any
    help: str
    group: str  # "config" | "connection" | "cli"
    choices: Tuple[str, ...] = ()
    metavar: Optional[str] = None

    @property
    def default_text(self) -> str:
        """The default as the docs show it."""
        if self.default is None or self.default == ():
            return "(none)"
        if self.kind == "duration":
            return _duration_text(self.default)
        return str(self.default)


def _duration_text(seconds: float) -> str:
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{int(round(seconds * 1000))}ms"


_C = Config.__dataclass_fields__  # the defaults come from Config itself


def _d(name: str) -> Any:
    return _C[name].default


#: Every setting of ``run`` (``Config`` fields, connection options, CLI options).
OPTIONS: Tuple[Option, ...] = (
    # -- connection -------------------------------------------------------------------------
    Option("endpoint", "--endpoint", "MEMORY_SERVICE_GRPC_ENDPOINT", "str", None,
           "the Memory Service gRPC endpoint: host:port, http://host:port, https://host:port (TLS) "
           "or unix:///path.sock (required)", "connection", metavar="URL"),
    Option("api_key", "--api-key", "MEMORY_SERVICE_API_KEY", "secret", None,
           "API key sent as x-api-key (prefer the environment variable: flags show in ps)",
           "connection", metavar="KEY"),
    Option("bearer_token", "--bearer-token", "MEMORY_SERVICE_BEARER_TOKEN", "secret", None,
           "bearer token sent as authorization: Bearer ... (prefer the environment variable)",
           "connection", metavar="TOKEN"),
    Option("tls_ca_file", "--tls-ca-file", "MEMORY_SERVICE_GRPC_TLS_CA_FILE", "str", None,
           "PEM file of the CA that signed the server certificate (https:// endpoints; "
           "default: system roots)", "connection", metavar="PATH"),
    Option("tls_server_name", "--tls-server-name", "MEMORY_SERVICE_GRPC_TLS_SERVER_NAME", "str", None,
           "server name expected in the certificate, if not the endpoint's host", "connection",
           metavar="NAME"),
    Option("keepalive_interval", "--keepalive-interval", "MEMORY_SERVICE_GRPC_KEEPALIVE_INTERVAL",
           "duration", 20.0, "HTTP/2 keepalive ping interval", "connection", metavar="DURATION"),
    Option("keepalive_timeout", "--keepalive-timeout", "MEMORY_SERVICE_GRPC_KEEPALIVE_TIMEOUT",
           "duration", 10.0, "a connection whose ping is not answered within this is dead",
           "connection", metavar="DURATION"),
    Option("connect_timeout", "--connect-timeout", "MEMORY_SERVICE_GRPC_CONNECT_TIMEOUT", "duration",
           10.0, "budget for establishing a connection", "connection", metavar="DURATION"),
    Option("request_timeout", "--request-timeout", "MEMORY_SERVICE_GRPC_REQUEST_TIMEOUT", "duration",
           30.0, "budget for one checkpoint RPC", "connection", metavar="DURATION"),
    Option("max_message_size", "--max-message-size", "MEMORY_SERVICE_GRPC_MAX_MESSAGE_SIZE", "int",
           4 * 1024 * 1024, "largest gRPC message accepted (bytes)", "connection", metavar="BYTES"),
    Option("checkpoint_store", "--checkpoint-store", "MEMORY_SERVICE_PROCESS_CHECKPOINT_STORE", "str",
           "grpc", "where checkpoints live: grpc (the server's checkpoint service, needs an admin "
           "credential), file:PATH (one JSON document per client id in directory PATH) or memory "
           "(this process only)", "connection", metavar="STORE"),
    # -- Config -----------------------------------------------------------------------------
    Option("client_id", "--client-id", "MEMORY_SERVICE_PROCESS_CLIENT_ID", "str", None,
           "identifies the processor and its checkpoint (required)", "config", metavar="ID"),
    Option("kinds", "--kinds", "MEMORY_SERVICE_PROCESS_KINDS", "list", _d("kinds"),
           "only these kinds: conversation, entry, response, membership (comma-separated or "
           "repeated; default: all)", "config", metavar="LIST"),
    Option("entry_channels", "--entry-channels", "MEMORY_SERVICE_PROCESS_ENTRY_CHANNELS", "list",
           _d("entry_channels"), "entry events only: these channels (server default: history)",
           "config", metavar="LIST"),
    Option("entry_content_types", "--entry-content-types", "MEMORY_SERVICE_PROCESS_ENTRY_CONTENT_TYPES",
           "list", _d("entry_content_types"), "entry events only: these content types (default: any)",
           "config", metavar="LIST"),
    Option("entry_roles", "--entry-roles", "MEMORY_SERVICE_PROCESS_ENTRY_ROLES", "list",
           _d("entry_roles"), "entry events only: these roles (default: any)", "config", metavar="LIST"),
    Option("conversation_ids", "--conversation-ids", "MEMORY_SERVICE_PROCESS_CONVERSATION_IDS", "list",
           _d("conversation_ids"), "only events of these conversations (default: all)", "config",
           metavar="LIST"),
    Option("scope", "--scope", "MEMORY_SERVICE_PROCESS_SCOPE", "choice", _d("scope"),
           "admin (every user's events; needs the admin role) or user", "config",
           choices=("admin", "user")),
    Option("after_cursor", "--after-cursor", "MEMORY_SERVICE_PROCESS_AFTER_CURSOR", "str",
           _d("after_cursor"), "where a first run (no checkpoint yet) starts: start = the retained "
           "start, a cursor, or empty = the live tail", "config", metavar="CURSOR"),
    Option("justification", "--justification", "MEMORY_SERVICE_PROCESS_JUSTIFICATION", "str",
           _d("justification"), "audit text sent with the subscription (may be required for admin "
           "scope)", "config", metavar="TEXT"),
    Option("checkpoint_interval", "--checkpoint-interval", "MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL",
           "duration", _d("checkpoint_interval"), "flush and checkpoint at least this often "
           "(5s, 500ms, 1m or seconds)", "config", metavar="DURATION"),
    Option("checkpoint_every", "--checkpoint-every", "MEMORY_SERVICE_PROCESS_CHECKPOINT_EVERY", "int",
           _d("checkpoint_every"), "a checkpoint write is due after this many handled events "
           "(writes never block handling and coalesce under load)", "config", metavar="N"),
    Option("reconnect_min", "--reconnect-min", "MEMORY_SERVICE_PROCESS_RECONNECT_MIN", "duration",
           _d("reconnect_min"), "first reconnect delay; doubles up to --reconnect-max", "config",
           metavar="DURATION"),
    Option("reconnect_max", "--reconnect-max", "MEMORY_SERVICE_PROCESS_RECONNECT_MAX", "duration",
           _d("reconnect_max"), "longest reconnect delay", "config", metavar="DURATION"),
    Option("stale_cursor", "--stale-cursor", "MEMORY_SERVICE_PROCESS_STALE_CURSOR", "choice",
           _d("stale_cursor"), "when the checkpointed cursor fell out of retention: fail, restart "
           "(from the retained start) or tail (from the live tail)", "config",
           choices=("fail", "restart", "tail")),
    Option("buffer_size", "--buffer-size", "MEMORY_SERVICE_PROCESS_BUFFER_SIZE", "int",
           _d("buffer_size"), "events buffered between the network and the processor", "config",
           metavar="N"),
    Option("max_batch", "--max-batch", "MEMORY_SERVICE_PROCESS_MAX_BATCH", "int", _d("max_batch"),
           "most events handed to the processor per batch", "config", metavar="N"),
    Option("stop_timeout", "--stop-timeout", "MEMORY_SERVICE_PROCESS_STOP_TIMEOUT", "duration",
           _d("stop_timeout"), "budget for the final flush and checkpoint on stop", "config",
           metavar="DURATION"),
    # -- command line -----------------------------------------------------------------------
    Option("log_level", "--log-level", "MEMORY_SERVICE_PROCESS_LOG_LEVEL", "choice", "info",
           "debug, info, warning or error", "cli", choices=("debug", "info", "warning", "error")),
    Option("log_format", "--log-format", "MEMORY_SERVICE_PROCESS_LOG_FORMAT", "choice", "text",
           "text, or json (one object per line with time, level, logger, message, client_id, "
           "cursor, ...)", "cli", choices=("text", "json")),
    Option("metrics_port", "--metrics-port", "MEMORY_SERVICE_PROCESS_METRICS_PORT", "int", None,
           "serve Prometheus metrics on this port at /metrics (needs the [prometheus] extra)",
           "cli", metavar="PORT"),
    Option("metrics_addr", "--metrics-addr", "MEMORY_SERVICE_PROCESS_METRICS_ADDR", "str", "0.0.0.0",
           "address the metrics server listens on", "cli", metavar="ADDR"),
)

_BY_DEST = {o.dest: o for o in OPTIONS}

# -- argument parsing -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit with code 2."""

    def error(self, message: str) -> NoReturn:  # noqa: D401 - argparse API
        raise UsageError(f"{message} (see {self.prog} --help)")


def _add_options(p: argparse.ArgumentParser, groups: Sequence[str], only: Optional[Sequence[str]] = None) -> None:
    titles = {"connection": "connection", "config": "processing (Config)", "cli": "logging and metrics"}
    for group in groups:
        g = p.add_argument_group(titles[group])
        for o in OPTIONS:
            if o.group != group or (only is not None and o.dest not in only):
                continue
            env = f" [env {o.env}]" if o.env else ""
            default = "" if o.default is None or o.default == () else f" (default {o.default_text})"
            kwargs: Dict[str, Any] = {"dest": o.dest, "default": None, "help": f"{o.help}{default}{env}".replace("%", "%%")}
            if o.kind == "list":
                kwargs["action"] = "append"
            if o.choices:
                kwargs["metavar"] = "{" + ",".join(o.choices) + "}"
            elif o.metavar:
                kwargs["metavar"] = o.metavar
            g.add_argument(o.flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The full parser (``run``, ``demo``, ``checkpoint``)."""
    p = _Parser(
        prog=PROG,
        description="Run Memory Service event processors written in Python.",
        epilog="Exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error, "
        "130 a second Ctrl-C. See docs/cli.md.",
    )
    from ._version import PrintVersion

    p.add_argument("--version", action=PrintVersion)
    sub = p.add_subparsers(dest="command", metavar="{run,demo,checkpoint}", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run a processor until SIGINT/SIGTERM",
        description="Run an event processor against a Memory Service until SIGINT/SIGTERM "
        "(final flush and checkpoint, exit 0). A second Ctrl-C exits at once (130).",
    )
    run.add_argument(
        "target",
        metavar="TARGET",
        help="the processor: package.module:ClassName or path/to/file.py:ClassName (a class or "
        "factory called with no arguments, or an instance)",
    )
    run.add_argument(
        "--arg",
        dest="processor_args",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="keyword argument for the processor's constructor (string value; repeatable)",
    )
    _add_options(run, ("connection", "config", "cli"))

    demo = sub.add_parser(
        "demo",
        help="run an example processor end to end against an embedded Memory Service",
        description="Start an embedded LocalMemoryService, publish a realistic stream of "
        "conversations, then run examples/turn_counter.py against it: replay, then a live "
        "trickle, then a summary. Run again with the same --data-dir to resume.",
    )
    demo.add_argument("--data-dir", metavar="DIR", help="keep the service's outbox and checkpoints here "
                      "(default: a temporary directory, removed at exit)")
    demo.add_argument("--events", type=_int_at_least("--events", 1), default=10_000, metavar="N",
                      help="events to publish before the processor starts (default 10000)")
    demo.add_argument("--duration", type=_duration_arg("--duration"), default=10.0, metavar="DURATION",
                      help="how long the processor runs, replay and live trickle together (default 10s)")
    demo.add_argument("--live-rate", type=_int_at_least("--live-rate", 0), default=40, metavar="N",
                      help="events per second published during the live phase (default 40)")
    demo.add_argument("--client-id", default="demo-turn-counter", metavar="ID",
                      help="the demo processor's client id (default demo-turn-counter)")
    demo.add_argument("--top", type=_int_at_least("--top", 1), default=5, metavar="N",
                      help="busiest conversations to list (default 5)")
    demo.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                      help="progress display: auto (a bar on a terminal, lines otherwise), bar, lines, none")
    _add_options(demo, ("cli",))

    cp = sub.add_parser(
        "checkpoint",
        help="inspect, write or reset a processor's checkpoint on a server",
        description="Inspect (get), write (put) or reset a processor's checkpoint through "
        "AdminCheckpointService (needs the admin role).",
    )
    cps = cp.add_subparsers(dest="action", metavar="{get,put,reset}", parser_class=_Parser)
    conn = [o.dest for o in OPTIONS if o.group == "connection"] + ["client_id"]
    g = cps.add_parser("get", help="print the stored checkpoint as JSON")
    _add_options(g, ("connection", "config"), only=conn)
    _add_options(g, ("cli",), only=("log_level", "log_format"))
    pu = cps.add_parser("put", help="store a checkpoint")
    pu.add_argument("--content-type", required=True, help="the processor's content type")
    src = pu.add_mutually_exclusive_group(required=True)
    src.add_argument("--value", metavar="JSON", help="the checkpoint value as JSON")
    src.add_argument("--value-file", metavar="PATH", help="read the JSON value from this file (- = stdin)")
    _add_options(pu, ("connection", "config"), only=conn)
    _add_options(pu, ("cli",), only=("log_level", "log_format"))
    rs = cps.add_parser(
        "reset",
        help="make the processor start over (or from --cursor)",
        description="Replace the stored checkpoint by an empty state {} (the processor then "
        "starts from its --after-cursor) or by {\"lastEventCursor\": CURSOR} with --cursor. The "
        "content type is kept. The previous checkpoint is printed first, so it can be put back.",
    )
    rs.add_argument("--cursor", metavar="CURSOR", help="resume after this cursor instead of starting over")
    rs.add_argument("--content-type", help="content type to store (default: the stored one)")
    _add_options(rs, ("connection", "config"), only=conn)
    _add_options(rs, ("cli",), only=("log_level", "log_format"))
    return p


def _int_at_least(name: str, minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``, with a one-line error naming ``name``."""

    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be at least {minimum}, got {v}")
        return v

    return conv


def _duration_arg(name: str) -> Callable[[str], float]:
    def conv(text: str) -> float:
        try:
            return parse_duration(text, name)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return conv


# -- resolving flags and environment ------------------------------------------------------------


def _convert(o: Option, raw: Any, source: str) -> Any:
    """``raw`` (flag value or environment text) converted for ``o``; UsageError naming ``source``."""
    try:
        if o.kind == "list":
            parts: List[str] = []
            for item in raw if isinstance(raw, list) else [raw]:
                parts.extend(p.strip() for p in str(item).split(",") if p.strip())
            return tuple(parts)
        text = str(raw).strip()
        if o.kind == "duration":
            return parse_duration(text, o.dest)
        if o.kind == "int":
            try:
                number = int(text)
            except ValueError:
                raise ValueError(f"must be a whole number, got {text!r}") from None
            if number < (0 if o.dest == "metrics_port" else 1):
                raise ValueError(f"must be {'0 or more' if o.dest == 'metrics_port' else 'at least 1'}, got {number}")
            return number
        if o.kind == "choice":
            choice = text.lower()
            if choice not in o.choices:
                raise ValueError(f"must be one of {', '.join(o.choices)}, got {text!r}")
            return choice
        if o.kind == "secret":
            if not text:
                raise ValueError("must not be empty")
            return text
        return text
    except (ValueError, TypeError) as e:
        msg = str(e)
        if o.kind == "secret":  # never echo a secret, even a malformed one
            msg = "must be a non-empty string"
        raise UsageError(f"{source}: {msg}") from None


def resolve_options(
    args: argparse.Namespace,
    environ: Optional[Mapping[str, str]] = None,
    dests: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """The value of every option: the flag if given, else its environment variable if set and
    non-empty, else the default. Raises :class:`UsageError` naming the flag or variable."""
    env = os.environ if environ is None else environ
    out: Dict[str, Any] = {}
    for o in OPTIONS:
        if dests is not None and o.dest not in dests:
            continue
        if not hasattr(args, o.dest):
            continue
        flag_value = getattr(args, o.dest)
        if flag_value is not None:
            out[o.dest] = _convert(o, flag_value, o.flag)
        elif o.env and env.get(o.env, "").strip():
            out[o.dest] = _convert(o, env[o.env], o.env)
        else:  # an unset or empty variable means "not set"
            out[o.dest] = o.default
    return out


def _require(values: Mapping[str, Any], dest: str) -> Any:
    value = values.get(dest)
    if value is None or value == "":
        o = _BY_DEST[dest]
        raise UsageError(f"{o.flag} (or {o.env}) is required")
    return value


def build_config(values: Mapping[str, Any]) -> Config:
    """A :class:`Config` from resolved option values; UsageError for a bad combination."""
    kwargs = {f.name: values[f.name] for f in dataclasses.fields(Config) if f.name in values}
    _require(values, "client_id")
    try:
        return Config(**kwargs)
    except (ValueError, TypeError) as e:
        raise UsageError(f"configuration: {e}") from None


def connection_kwargs(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Keyword arguments for :class:`Runtime` / :class:`ConnectionOptions` (no endpoint)."""
    skip = ("endpoint", "checkpoint_store")
    return {o.dest: values[o.dest] for o in OPTIONS if o.group == "connection" and o.dest not in skip and o.dest in values}


# -- loading the processor ----------------------------------------------------------------------


def _import_target(spec: str) -> Tuple[Any, str]:
    """(module, attribute name or "") for ``module:attr`` / ``file.py:attr``."""
    module_part, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if not module_part:
        raise UsageError(f"processor {spec!r}: expected package.module:ClassName or path/to/file.py:ClassName")
    # Windows drive letters ("C:\\x.py") have no attribute part.
    if len(module_part) == 1 and module_part.isalpha() and ("\\" in attr or "/" in attr):
        module_part, attr = spec, ""
    is_file = module_part.endswith(".py") or os.sep in module_part or "/" in module_part
    if is_file:
        path = os.path.abspath(module_part)
        if not os.path.isfile(path):
            raise UsageError(f"processor {spec!r}: no such file {module_part!r}")
        name = os.path.splitext(os.path.basename(path))[0]
        mod_name = name if name.isidentifier() and name not in sys.modules else f"_msp_target_{abs(hash(path))}"
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)  # sibling imports of the user's file
        spec_obj = importlib.util.spec_from_file_location(mod_name, path)
        if spec_obj is None or spec_obj.loader is None:
            raise UsageError(f"processor {spec!r}: cannot load {module_part!r} as Python")
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[mod_name] = module
        spec_obj.loader.exec_module(module)
        return module, attr
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the working directory
    try:
        module = importlib.import_module(module_part)
    except ModuleNotFoundError as e:
        if e.name and (module_part == e.name or module_part.startswith(e.name + ".")):
            raise UsageError(f"processor {spec!r}: no module named {e.name!r}") from None
        raise
    return module, attr


def _is_processor(obj: Any) -> bool:
    return all(callable(getattr(obj, m, None)) for m in ("content_type", "load", "handle", "snapshot"))


def load_processor(spec: str, kwargs: Optional[Mapping[str, str]] = None) -> Any:
    """The processor named by ``spec`` (``module:Name`` or ``file.py:Name``), instantiated.

    ``Name`` may be a class or a factory (called with ``kwargs``) or an instance. Without
    ``:Name``, the module must define exactly one :class:`EventProcessor` subclass.
    Raises :class:`UsageError` for anything that is not a processor.
    """
    from ._processor import EventProcessor

    module, attr = _import_target(spec)
    if not attr:
        found = [
            v for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, EventProcessor) and v is not EventProcessor
            and v.__module__ == module.__name__
        ]
        if len(found) != 1:
            names = ", ".join(sorted(c.__name__ for c in found)) or "none"
            raise UsageError(f"processor {spec!r}: name the class as {spec}:ClassName (processor classes found: {names})")
        target: Any = found[0]
    else:
        target = module
        for part in attr.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise UsageError(f"processor {spec!r}: {module.__name__} has no attribute {attr!r}") from None
    kwargs = dict(kwargs or {})
    if isinstance(target, type) or (callable(target) and not _is_processor(target)):
        try:
            processor = target(**kwargs)
        except TypeError as e:
            raise UsageError(f"processor {spec!r}: cannot create it: {e}") from None
    else:
        if kwargs:
            raise UsageError(f"processor {spec!r} is an instance: --arg cannot be used")
        processor = target
    if not _is_processor(processor):
        raise UsageError(
            f"processor {spec!r}: {type(processor).__name__} is not an event processor "
            "(needs content_type, load, handle and snapshot methods)"
        )
    return processor


def _processor_kwargs(items: Sequence[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name.isidentifier():
            raise UsageError(f"--arg {item!r}: expected NAME=VALUE")
        out[name] = value
    return out


# -- signals ------------------------------------------------------------------------------------


class GracefulSignals:
    """SIGINT/SIGTERM call ``on_stop`` once (on the event loop); a second SIGINT exits at once.

    Uses ``signal.signal`` (not ``loop.add_signal_handler``) so that the second Ctrl-C works
    even while the loop is blocked in a slow synchronous ``handle``/``flush``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> None:
        self._loop = loop
        self._on_stop = on_stop
        self._stopping = False
        self._previous: Dict[int, Any] = {}
        self.received: Optional[str] = None

    def _handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            if signum == signal.SIGINT:
                # os.write: no buffered-IO re-entrancy trouble inside a signal handler.
                os.write(2, f"{PROG}: second {name}: exiting without the final checkpoint\n".encode())
                os._exit(EXIT_INTERRUPTED)
            self._loop.call_soon_threadsafe(
                log.info, "%s received again: still stopping (send SIGINT to exit at once)", name
            )
            return
        self._stopping = True
        self.received = name
        self._loop.call_soon_threadsafe(self._stop, name)

    def _stop(self, name: str) -> None:
        log.info("%s received: stopping (final flush and checkpoint); Ctrl-C again exits at once", name)
        self._on_stop()

    def __enter__(self) -> "GracefulSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except (ValueError, OSError):  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            try:
                signal.signal(sig, previous)
            except (ValueError, OSError, TypeError):
                pass


# -- commands -----------------------------------------------------------------------------------


def _setup_logging(values: Mapping[str, Any], default_level: str = "info") -> None:
    from ._logging import configure_logging

    configure_logging(values.get("log_level") or default_level, values.get("log_format") or "text")


def _start_metrics(values: Mapping[str, Any], source: Any) -> Any:
    port = values.get("metrics_port")
    if port is None:
        return None
    from ._metrics import prometheus_available, start_metrics_server

    if not prometheus_available():
        raise UsageError("--metrics-port needs prometheus-client: pip install 'memory-service-processor[prometheus]'")
    try:
        return start_metrics_server(source, port, values.get("metrics_addr") or "0.0.0.0")
    except OSError as e:
        raise UsageError(f"--metrics-port {port}: cannot listen: {e.strerror or e}") from None


def cmd_run(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> int:
    """``run``: load the processor, run it until a signal, exit 0."""
    values = resolve_options(args, environ)
    _setup_logging(values)
    endpoint = _require(values, "endpoint")
    config = build_config(values)
    processor = load_processor(args.target, _processor_kwargs(args.processor_args))
    from ._runtime import Runtime
    from ._stores import checkpoint_store_from_spec

    try:
        spec = (values.get("checkpoint_store") or "grpc").strip()
        # grpc: the Runtime builds its own client from the connection options
        checkpoints = None if spec.lower() == "grpc" else checkpoint_store_from_spec(spec)
        runtime = Runtime(
            processor, config, endpoint=endpoint, checkpoints=checkpoints, **connection_kwargs(values)
        )
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    metrics = _start_metrics(values, runtime)
    log.info(
        "running %s as client_id=%s against %s (after_cursor=%s)",
        type(processor).__name__,
        config.client_id,
        endpoint,
        config.after_cursor or "<tail>",
        extra={"client_id": config.client_id},
    )
    try:
        asyncio.run(_run_until_signal(runtime))
    finally:
        if metrics is not None:
            metrics.close()
    stats = runtime.stats()
    log.info(
        "stopped client_id=%s: %d events handled, %d checkpoints written, last cursor %s",
        config.client_id,
        stats.get("events_handled", 0),
        stats.get("checkpoints_written", 0),
        stats.get("last_cursor"),
        extra={"client_id": config.client_id, "cursor": stats.get("last_cursor")},
    )
    return EXIT_OK


async def _run_until_signal(runtime: Any) -> None:
    from .errors import TransientError

    loop = asyncio.get_running_loop()
    with GracefulSignals(loop, runtime.stop) as signals:
        try:
            await runtime.run()
        except TransientError as e:
            # Stopped while still retrying to reach the server (e.g. loading the checkpoint):
            # nothing was handled, so nothing is lost; a requested stop is a clean stop.
            if signals.received is None:
                raise
            log.warning("stopped before the server could be reached: %s", e)


def _checkpoint_client(values: Mapping[str, Any]) -> Any:
    from ._clients import GrpcCheckpointClient

    endpoint = _require(values, "endpoint")
    _require(values, "client_id")
    try:
        return GrpcCheckpointClient(endpoint, client_id=values["client_id"], **connection_kwargs(values))
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def _checkpoint_json(cp: Any) -> str:
    return json.dumps(
        {
            "client_id": cp.client_id,
            "content_type": cp.content_type,
            "value": cp.value,
            "updated_at": cp.updated_at.isoformat() if cp.updated_at else None,
        },
        indent=2,
        ensure_ascii=False,
    )


def cmd_checkpoint(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> int:
    """``checkpoint get|put|reset``."""
    if not args.action:
        raise UsageError(f"{PROG} checkpoint: choose get, put or reset (see --help)")
    values = resolve_options(args, environ)
    _setup_logging(values, "warning")
    client = _checkpoint_client(values)
    client_id = values["client_id"]

    async def go() -> int:
        if args.action == "get":
            try:
                cp = await client.get(client_id)
            except CheckpointNotFoundError:
                raise _Failure(f"no checkpoint for client id {client_id!r}") from None
            print(_checkpoint_json(cp))
            return EXIT_OK
        if args.action == "put":
            text = args.value
            if args.value_file is not None:
                try:
                    if args.value_file == "-":
                        text = sys.stdin.read()
                    else:
                        with open(args.value_file, encoding="utf-8") as f:
                            text = f.read()
                except OSError as e:
                    raise UsageError(f"--value-file: {e.strerror or e}: {args.value_file!r}") from None
            try:
                value = json.loads(text)
            except ValueError as e:
                raise UsageError(f"checkpoint value is not JSON: {e}") from None
            if not args.content_type.strip():
                raise UsageError("--content-type must not be empty")
            cp = await client.put(client_id, args.content_type, value)
            print(_checkpoint_json(cp))
            return EXIT_OK
        # reset
        try:
            old = await client.get(client_id)
        except CheckpointNotFoundError:
            old = None
        content_type = args.content_type or (old.content_type if old is not None else None)
        if old is None and not args.cursor:
            print(f"no checkpoint for client id {client_id!r}: nothing to reset", file=sys.stderr)
            return EXIT_OK
        if not content_type:
            raise UsageError("--content-type is required: there is no stored checkpoint to take it from")
        if old is not None:
            print("previous checkpoint:", file=sys.stderr)
            print(_checkpoint_json(old), file=sys.stderr)
        empty: Any = {"lastEventCursor": args.cursor} if args.cursor else {}
        cp = await client.put(client_id, content_type, empty)
        print(_checkpoint_json(cp))
        return EXIT_OK

    return asyncio.run(go())


class _Failure(Exception):
    """A runtime failure with a ready one-line message (exit 1)."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(e: BaseException) -> str:
    if isinstance(e, ServerStatusError):
        return _one_line(f"server refused: {e}")
    if isinstance(e, StaleCursorError):
        return _one_line(f"{e} (use --stale-cursor restart or tail to continue automatically)")
    return _one_line(str(e) or type(e).__name__)


def _report_traceback(e: BaseException) -> None:
    """The traceback on stderr: a log record when logging is JSON, plain text otherwise."""
    from ._logging import JsonFormatter

    json_logging = any(
        getattr(h, "_msp_installed", False) and isinstance(h.formatter, JsonFormatter)
        for h in logging.getLogger().handlers
    )
    text = _user_traceback(e)
    if json_logging:
        log.error("run failed: %s: %s", type(e).__name__, e, extra={"exception": text})
    else:
        sys.stderr.write(text)
        sys.stderr.flush()


def _user_traceback(e: BaseException) -> str:
    """The traceback of ``e`` without the frames of this package and of asyncio: what is left
    is the user's code (all frames if nothing is left)."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    asyncio_dir = os.path.dirname(os.path.abspath(asyncio.__file__))
    frames = traceback.extract_tb(e.__traceback__)
    mine = [
        f for f in frames
        if not os.path.abspath(f.filename).startswith((package_dir + os.sep, asyncio_dir + os.sep))
    ]
    lines = ["Traceback (most recent call last):\n"]
    lines.extend(traceback.format_list(mine or frames))
    lines.extend(traceback.format_exception_only(type(e), e))
    return "".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console entry point; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        if not args.command:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if args.command == "run":
            return cmd_run(args)
        if args.command == "demo":
            from ._demo import cmd_demo

            return cmd_demo(args)
        return cmd_checkpoint(args)
    except UsageError as e:
        print(f"{PROG}: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigurationError as e:
        print(f"{PROG}: error: {_describe(e)}", file=sys.stderr)
        return EXIT_USAGE
    except _Failure as e:
        print(f"{PROG}: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_FAILURE
    except MemoryServiceProcessorError as e:
        print(f"{PROG}: error: {_describe(e)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `... demo | head`: the reader went away; leave quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_FAILURE
    except Exception as e:  # the processor's own exception (or a bug): show where it happened
        _report_traceback(e)
        print(f"{PROG}: error: {type(e).__name__}: {_describe(e)}", file=sys.stderr)
        return EXIT_FAILURE
