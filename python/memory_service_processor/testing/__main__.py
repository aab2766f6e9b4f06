"""``python -m memory_service_processor.testing serve``: run LocalMemoryService as a process.

Prints one ready line, ``READY <endpoint>``, on stdout once it accepts connections, then serves
until SIGINT/SIGTERM. With ``--data-dir`` the outbox and checkpoints persist across restarts.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import List, Optional

from .events import synthetic_entries
from .server import LocalMemoryService


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m memory_service_processor.testing")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a LocalMemoryService until SIGINT/SIGTERM")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    serve.add_argument("--unix", metavar="PATH", help="listen on this Unix socket instead of TCP")
    serve.add_argument("--data-dir", metavar="DIR", help="persist the outbox and checkpoints here")
    serve.add_argument("--queue-capacity", type=int, default=65536, help="live events queued per subscriber before eviction")
    serve.add_argument(
        "--api-keys",
        metavar="JSON",
        help='API keys and roles, e.g. \'{"admin-key": "admin", "user-key": "user"}\' (default: no auth)',
    )
    serve.add_argument("--preload", type=int, default=0, metavar="N", help="publish N synthetic entry events first")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the ``serve`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = _parser().parse_args(argv)
    api_keys = None
    if args.api_keys:
        try:
            api_keys = json.loads(args.api_keys)
        except ValueError as e:
            print(f"error: --api-keys is not JSON: {e}", file=sys.stderr)
            return 2
    server = LocalMemoryService(
        args.port,
        api_keys,
        host=args.host,
        unix_path=args.unix,
        queue_capacity=args.queue_capacity,
        data_dir=args.data_dir,
    )
    endpoint = server.start_sync()
    if args.preload:
        for chunk in synthetic_entries(args.preload, chunk=10_000):
            server.publish_many(chunk)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"READY {endpoint}", flush=True)
    while not done.wait(0.5):
        pass
    server.stop_sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
