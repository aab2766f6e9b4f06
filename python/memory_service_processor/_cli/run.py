"""``run``: a processor against a Memory Service until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any, Mapping, Optional

from .._runtime import Runtime
from .._stores import checkpoint_store_from_spec
from ..errors import TransientError
from .errors import EXIT_OK, UsageError, log
from .loader import load_processor, processor_kwargs
from .options import (
    PROCESSOR_ARG_FLAG,
    PROCESSOR_ARG_HELP,
    PROCESSOR_ARG_METAVAR,
    add_options,
    build_config,
    connection_kwargs,
    require,
    resolve_options,
    shard_index_from_hostname,
)
from .signals import GracefulSignals
from .telemetry import setup_logging, start_telemetry

__all__ = ["add_parser", "cmd_run"]


def add_parser(commands: Any) -> None:
    """Adds ``run`` to the parser's subcommands."""
    run = commands.add_parser(
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
        PROCESSOR_ARG_FLAG,
        dest="processor_args",
        action="append",
        default=[],
        metavar=PROCESSOR_ARG_METAVAR,
        help=PROCESSOR_ARG_HELP,
    )
    add_options(run, ("connection", "config", "cli"))


def cmd_run(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> int:
    """``run``: load the processor, run it until a signal, exit 0."""
    values = resolve_options(args, environ)
    setup_logging(values)
    endpoint = require(values, "endpoint")
    shard_index_from_hostname(values, args, socket.gethostname(), environ)
    config = build_config(values)
    processor = load_processor(args.target, processor_kwargs(args.processor_args))
    try:
        spec = (values.get("checkpoint_store") or "grpc").strip()
        # grpc: the Runtime builds its own client from the connection options
        checkpoints = None if spec.lower() == "grpc" else checkpoint_store_from_spec(spec)
        runtime = Runtime(
            processor, config, endpoint=endpoint, checkpoints=checkpoints, **connection_kwargs(values)
        )
    except (ValueError, TypeError, ArithmeticError) as e:  # a value the native side refused
        raise UsageError(str(e)) from None
    telemetry = start_telemetry(values, runtime)
    log.info(
        "running %s as client_id=%s against %s (after_cursor=%s, shard %d of %d)",
        type(processor).__name__,
        config.client_id,
        endpoint,
        config.after_cursor or "<tail>",
        config.shard_index,
        config.shard_count,
        extra={"client_id": config.client_id},
    )
    try:
        asyncio.run(_run_until_signal(runtime))
    finally:
        telemetry.close()
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


async def _run_until_signal(runtime: Runtime) -> None:
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
