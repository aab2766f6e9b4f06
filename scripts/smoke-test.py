"""Smoke test of an installed memory-service-processor (a wheel or a build from the sdist).

Run it with the Python of the environment under test, from outside the source tree:

    python scripts/smoke-test.py [EXPECTED_VERSION]

It checks the version (against EXPECTED_VERSION, PEP 440, if given), runs a processor against an
in-process ``LocalMemoryService`` over TCP and over a Unix socket (the Rust core: gRPC stream,
checkpoints, resume after a restart), and runs the command line: ``--version``, ``--help`` and
``demo --help``. Prints one line per check and ``smoke test: N passed, 0 failed`` at the end;
exits non-zero at the first failure. Used by scripts/check-dist and the release workflow.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional

PASSED: List[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    """Records one check; exits at the first failure."""
    if not ok:
        print(f"FAIL {name}: {detail}", file=sys.stderr)
        sys.exit(1)
    PASSED.append(name)
    print(f"ok   {name}")


def check_version(expected: Optional[str]) -> None:
    import memory_service_processor as msp
    from memory_service_processor import _native

    here = os.path.realpath(os.path.dirname(msp.__file__))
    check("imported from the environment, not a source tree",
          here.startswith(os.path.realpath(sys.prefix) + os.sep), here)
    check("native module is a release build", getattr(_native, "BUILD_PROFILE", None) == "release",
          repr(getattr(_native, "BUILD_PROFILE", None)))
    if expected is not None:
        check(f"__version__ == {expected}", msp.__version__ == expected, msp.__version__)


async def run_processor(endpoint_kind: str, tmp: str) -> None:
    from memory_service_processor import EventEnvelope, EventProcessor
    from memory_service_processor.testing import LocalMemoryService, run_until_handled

    class Counter(EventProcessor):
        CONTENT_TYPE = "application/vnd.smoke-test+json;v=1"

        def __init__(self) -> None:
            self.count = 0
            self.last_event_cursor = None

        def load(self, state: Any) -> None:
            super().load(state)
            self.count = int(state.get("count", 0)) if isinstance(state, dict) else 0

        def handle(self, event: EventEnvelope) -> None:
            if event.kind == "entry":
                self.count += 1
            super().handle(event)

        def snapshot(self) -> Dict[str, Any]:
            return {"count": self.count, "lastEventCursor": self.last_event_cursor}

    options: Dict[str, Any] = {}
    if endpoint_kind == "unix":
        options["unix_path"] = os.path.join(tmp, "ms.sock")
    events = [("entry", "appended", {"conversation": "c1", "entry_role": "USER"})] * 3
    events.append(("conversation", "created", {"conversation": "c2"}))
    async with LocalMemoryService(**options) as server:
        first = await run_until_handled(Counter(), server, "smoke", publish=events, timeout=60)
        check(f"processor over {endpoint_kind}: handles every event",
              first.processor.count == 3 and len(first.cursors) == 4, repr(first.cursors))
        stored = first.checkpoint.value if first.checkpoint is not None else None
        check(f"processor over {endpoint_kind}: checkpoint stored",
              isinstance(stored, dict) and stored.get("count") == 3, repr(stored))
        again = await run_until_handled(Counter(), server, "smoke", publish=events[:1], timeout=60)
        check(f"processor over {endpoint_kind}: resumes from the checkpoint",
              again.processor.count == 4 and len(again.cursors) == 1, repr(again.cursors))


def cli(*args: str) -> "subprocess.CompletedProcess[str]":
    """Runs the console script installed next to this interpreter (else ``-m``)."""
    bindir = os.path.dirname(sys.executable)
    script = os.path.join(bindir, "memory-service-processor")
    cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "memory_service_processor"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120)


def check_cli(expected: Optional[str]) -> None:
    bindir = os.path.dirname(sys.executable)
    check("console script installed", os.path.exists(os.path.join(bindir, "memory-service-processor")), bindir)
    r = cli("--version")
    out = r.stdout.strip()
    check("memory-service-processor --version", r.returncode == 0 and out.startswith("memory-service-processor ")
          and "native core" in out and (expected is None or f" {expected} " in out), out + r.stderr)
    print(f"     {out}")
    r = cli("--help")
    check("memory-service-processor --help", r.returncode == 0 and "demo" in r.stdout, r.stdout + r.stderr)
    r = cli("demo", "--help")
    check("memory-service-processor demo --help", r.returncode == 0 and "usage:" in r.stdout, r.stdout + r.stderr)


def main() -> int:
    expected = sys.argv[1] if len(sys.argv) > 1 else None
    print(f"smoke test with {sys.executable} (Python {sys.version.split()[0]})")
    check_version(expected)
    # /tmp keeps the Unix socket's path short (macOS allows 104 bytes; its $TMPDIR is long).
    with tempfile.TemporaryDirectory(prefix="msp-smoke-", dir="/tmp" if os.path.isdir("/tmp") else None) as tmp:
        asyncio.run(run_processor("tcp", tmp))
        asyncio.run(run_processor("unix", tmp))
    check_cli(expected)
    print(f"smoke test: {len(PASSED)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
