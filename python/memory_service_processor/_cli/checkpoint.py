"""``checkpoint get|put|reset``: a processor's checkpoint on a server."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, Mapping, Optional

from .._clients import GrpcCheckpointClient
from .._model import Checkpoint
from ..errors import CheckpointNotFoundError
from .errors import EXIT_OK, PROG, CommandFailure, UsageError
from .options import OPTIONS, OneLineParser, add_options, connection_kwargs, require, resolve_options
from .telemetry import setup_logging

__all__ = ["add_parser", "cmd_checkpoint"]


def add_parser(commands: Any) -> None:
    """Adds ``checkpoint`` and its actions to the parser's subcommands."""
    checkpoint = commands.add_parser(
        "checkpoint",
        help="inspect, write or reset a processor's checkpoint on a server",
        description="Inspect (get), write (put) or reset a processor's checkpoint through "
        "AdminCheckpointService (needs the admin role).",
    )
    actions = checkpoint.add_subparsers(dest="action", metavar="{get,put,reset}", parser_class=OneLineParser)
    connection = [o.name for o in OPTIONS if o.group == "connection"] + ["client_id"]

    def add_common(parser: argparse.ArgumentParser) -> None:
        add_options(parser, ("connection", "config"), only=connection)
        add_options(parser, ("cli",), only=("log_level", "log_format"))

    get = actions.add_parser("get", help="print the stored checkpoint as JSON")
    add_common(get)
    put = actions.add_parser("put", help="store a checkpoint")
    put.add_argument("--content-type", required=True, help="the processor's content type")
    source = put.add_mutually_exclusive_group(required=True)
    source.add_argument("--value", metavar="JSON", help="the checkpoint value as JSON")
    source.add_argument("--value-file", metavar="PATH", help="read the JSON value from this file (- = stdin)")
    add_common(put)
    reset = actions.add_parser(
        "reset",
        help="make the processor start over (or from --cursor)",
        description="Replace the stored checkpoint by an empty state {} (the processor then "
        "starts from its --after-cursor) or by {\"lastEventCursor\": CURSOR} with --cursor. The "
        "content type is kept. The previous checkpoint is printed first, so it can be put back.",
    )
    reset.add_argument("--cursor", metavar="CURSOR", help="resume after this cursor instead of starting over")
    reset.add_argument("--content-type", help="content type to store (default: the stored one)")
    add_common(reset)


def _checkpoint_client(values: Mapping[str, Any]) -> GrpcCheckpointClient:
    endpoint = require(values, "endpoint")
    require(values, "client_id")
    try:
        return GrpcCheckpointClient(endpoint, client_id=values["client_id"], **connection_kwargs(values))
    except (ValueError, TypeError, ArithmeticError) as e:  # a value the native side refused
        raise UsageError(str(e)) from None


def _checkpoint_json(checkpoint: Checkpoint) -> str:
    return json.dumps(
        {
            "client_id": checkpoint.client_id,
            "content_type": checkpoint.content_type,
            "value": checkpoint.value,
            "updated_at": checkpoint.updated_at.isoformat() if checkpoint.updated_at else None,
        },
        indent=2,
        ensure_ascii=False,
    )


async def _get(client: GrpcCheckpointClient, client_id: str) -> int:
    try:
        checkpoint = await client.get(client_id)
    except CheckpointNotFoundError:
        raise CommandFailure(f"no checkpoint for client id {client_id!r}") from None
    print(_checkpoint_json(checkpoint))
    return EXIT_OK


async def _put(client: GrpcCheckpointClient, client_id: str, args: argparse.Namespace) -> int:
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
    checkpoint = await client.put(client_id, args.content_type, value)
    print(_checkpoint_json(checkpoint))
    return EXIT_OK


async def _reset(client: GrpcCheckpointClient, client_id: str, args: argparse.Namespace) -> int:
    try:
        old: Optional[Checkpoint] = await client.get(client_id)
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
    checkpoint = await client.put(client_id, content_type, empty)
    print(_checkpoint_json(checkpoint))
    return EXIT_OK


def cmd_checkpoint(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> int:
    """``checkpoint get|put|reset``."""
    if not args.action:
        raise UsageError(f"{PROG} checkpoint: choose get, put or reset (see --help)")
    values = resolve_options(args, environ)
    setup_logging(values, "warning")
    client = _checkpoint_client(values)
    client_id = values["client_id"]
    if args.action == "get":
        return asyncio.run(_get(client, client_id))
    if args.action == "put":
        return asyncio.run(_put(client, client_id, args))
    return asyncio.run(_reset(client, client_id, args))
