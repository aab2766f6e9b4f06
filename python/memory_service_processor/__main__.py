"""``memory-service-processor`` / ``python -m memory_service_processor``: the command line.

Commands: ``run`` (a processor until SIGINT/SIGTERM), ``demo`` (an example end to end against
an embedded Memory Service) and ``checkpoint get|put|reset``. See ``docs/cli.md``.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from ._cli import main as cli_main

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
