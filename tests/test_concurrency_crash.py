"""SIGKILL of a concurrent processor process at random moments (docs/semantics.md,
"Concurrency"): with ``max_concurrency=32`` and a handler that changes its state only after
its last ``await``, every event is handled and the per-conversation counts in the final
checkpoint equal those of one clean run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict

import pytest

from conftest import lines, spawn_python, wait_for
from memory_service_processor.testing import LocalMemoryService

pytestmark = pytest.mark.timeout(180)

HELPER = Path(__file__).parent / "helpers" / "conc_processor.py"
CLIENT_ID = "conc-crash"
EVENTS = 3000
CONVERSATIONS = 40


def spawn(endpoint: str, out: Path, logs: Path, n: int) -> subprocess.Popen:
    return spawn_python([str(HELPER), endpoint, CLIENT_ID, str(out)], logs / f"conc-processor-{n}.stderr")


def test_sigkill_with_max_concurrency_32_ends_in_the_state_of_one_clean_run(tmp_path):
    rnd = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    out = tmp_path / "handled.txt"
    server = LocalMemoryService()
    endpoint = server.start_sync()
    expected: Dict[str, int] = {}
    specs = []
    for i in range(EVENTS):
        conversation = f"c{rnd.randrange(CONVERSATIONS)}"
        expected[conversation] = expected.get(conversation, 0) + 1
        specs.append(("entry", "appended", {"conversation": conversation, "entry": f"e{i}"}))
    cursors = server.publish_many(specs)
    kills = 0
    try:
        for n in range(4):
            proc = spawn(endpoint, out, tmp_path, n)
            starts = n + 1
            wait_for(lambda: sum(1 for l in lines(out) if l.startswith("START")) == starts, "START")
            handled_before = sum(1 for l in lines(out) if not l.startswith(("START", "STOPPED")))
            # a random moment after some events of this process were handled
            wait_for(
                lambda: sum(1 for l in lines(out) if not l.startswith(("START", "STOPPED"))) > handled_before + 20
                or proc.poll() is not None,
                "handling",
            )
            time.sleep(rnd.uniform(0.0, 0.4))
            proc.kill()
            proc.wait(10)
            kills += 1
        proc = spawn(endpoint, out, tmp_path, 99)

        def done() -> bool:
            cp = server.checkpoint(CLIENT_ID)
            return cp is not None and cp.value.get("lastEventCursor") == cursors[-1]

        wait_for(done, "the final watermark", timeout=90)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        cp = server.checkpoint(CLIENT_ID)
        handled = {l.split(" ", 1)[0] for l in lines(out) if not l.startswith(("START", "STOPPED"))}
    finally:
        server.stop_sync()
    assert kills >= 3
    assert lines(out)[-1] == "STOPPED"
    assert set(cursors) <= handled, "every event handled"
    assert cp is not None
    assert cp.value.get("completedAboveWatermark") is None
    assert cp.value["counts"] == expected, "per-conversation counts equal one clean run"
