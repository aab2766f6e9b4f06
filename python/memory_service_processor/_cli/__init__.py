"""The ``memory-service-processor`` command line: ``run``, ``demo`` and ``checkpoint``.

Every setting comes from a flag or, when the flag is absent, from an environment variable
(the ecosystem's names where they exist: ``MEMORY_SERVICE_GRPC_ENDPOINT``,
``MEMORY_SERVICE_PROCESS_CLIENT_ID``, ...), else from its default. Flags win.

Exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error, 130 a second
Ctrl-C (immediate exit). Every failure ends with one line ``memory-service-processor: error:
...`` on stderr; configuration errors print no traceback.

One module per concern: :mod:`.options` (the settings as flags and variables), :mod:`.loader`
(the user's processor), :mod:`.signals`, :mod:`.telemetry` (logging and metrics set-up),
:mod:`.errors` (exit codes and messages), and one module per command (:mod:`.run`,
:mod:`.demo`, :mod:`.checkpoint`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .._version import PrintVersion
from ..errors import ConfigurationError, MemoryServiceProcessorError
from . import checkpoint, demo, run
from .errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    CommandFailure,
    UsageError,
    describe,
    one_line,
    report_traceback,
)
from .loader import load_processor
from .options import OPTIONS, OneLineParser, resolve_options

__all__ = ["OPTIONS", "UsageError", "build_parser", "load_processor", "main", "resolve_options"]


def build_parser() -> argparse.ArgumentParser:
    """The full parser (``run``, ``demo``, ``checkpoint``)."""
    parser = OneLineParser(
        prog=PROG,
        description="Run Memory Service event processors written in Python.",
        epilog="Exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error, "
        "130 a second Ctrl-C. See docs/cli.md.",
    )
    parser.add_argument("--version", action=PrintVersion)
    commands = parser.add_subparsers(dest="command", metavar="{run,demo,checkpoint}", parser_class=OneLineParser)
    run.add_parser(commands)
    demo.add_parser(commands)
    checkpoint.add_parser(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console entry point; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        if not args.command:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if args.command == "run":
            return run.cmd_run(args)
        if args.command == "demo":
            return demo.cmd_demo(args)
        return checkpoint.cmd_checkpoint(args)
    except UsageError as e:
        print(f"{PROG}: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigurationError as e:
        print(f"{PROG}: error: {describe(e)}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailure as e:
        print(f"{PROG}: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_FAILURE
    except MemoryServiceProcessorError as e:
        print(f"{PROG}: error: {describe(e)}", file=sys.stderr)
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
        report_traceback(e)
        print(f"{PROG}: error: {type(e).__name__}: {describe(e)}", file=sys.stderr)
        return EXIT_FAILURE
