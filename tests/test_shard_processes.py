"""Three shard processes over one LocalMemoryService (README "Scaling out", docs/semantics.md
"Shards"): 30,000 entry events over 500 conversations; each shard is SIGKILLed once at a
random moment and restarted. Together the shards handle every event, their conversations are
disjoint and each is the shard ``shard_of`` names, per-conversation order holds within every
process, and each shard's final checkpoint holds exactly the counts of one clean run over its
share, with its watermark at the end of the stream."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter as Tally
from pathlib import Path
from typing import Dict, List, Set

import pytest

from conftest import lines, spawn_python, wait_for
from memory_service_processor import shard_of
from memory_service_processor.testing import LocalMemoryService
from memory_service_processor.testing.events import synthetic_entries

pytestmark = pytest.mark.timeout(240)

HELPER = Path(__file__).parent / "helpers" / "conc_processor.py"
EVENTS = 30_000
CONVERSATIONS = 500
SHARDS = 3
#: One shard per mode: sequential batches, and keyed lanes with little and much concurrency.
CONCURRENCY = (1, 8, 32)


def spawn(endpoint: str, index: int, out: Path, logs: Path, n: int) -> subprocess.Popen:
    argv = [str(HELPER), endpoint, f"shard-{index}", str(out), str(CONCURRENCY[index]), str(index), str(SHARDS)]
    return spawn_python(argv, logs / f"shard-{index}-{n}.stderr")


def handled_lines(out: Path) -> List[str]:
    return [l for l in lines(out) if not l.startswith(("START", "STOPPED"))]


def runs(out: Path) -> List[List[List[str]]]:
    """The handled lines of each process (split at ``START``), as ``[cursor, conversation]``."""
    result: List[List[List[str]]] = []
    for line in lines(out):
        if line.startswith("START"):
            result.append([])
        elif line != "STOPPED":
            result[-1].append(line.split(" ", 1))
    return result


def test_three_shards_each_killed_once_handle_everything_once_per_share(tmp_path):
    rnd = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    server = LocalMemoryService()
    endpoint = server.start_sync()
    cursors: List[str] = []
    expected: List[Dict[str, int]] = [dict() for _ in range(SHARDS)]
    conversation_of: Dict[str, str] = {}
    for chunk in synthetic_entries(EVENTS, conversations=CONVERSATIONS):
        published = server.publish_many(chunk)
        for cursor, (_, _, data) in zip(published, chunk):
            conversation = data["conversationId"]
            conversation_of[cursor] = conversation
            share = expected[shard_of(conversation, SHARDS)]
            share[conversation] = share.get(conversation, 0) + 1
        cursors.extend(published)
    outs = [tmp_path / f"shard-{i}.txt" for i in range(SHARDS)]
    procs: List[subprocess.Popen] = []
    try:
        # Start all three, then kill each once at a random moment after it handled some events.
        procs = [spawn(endpoint, i, outs[i], tmp_path, 0) for i in range(SHARDS)]
        for i in rnd.sample(range(SHARDS), SHARDS):
            wait_for(lambda: len(handled_lines(outs[i])) > 200 or procs[i].poll() is not None, f"shard {i} handling")
            time.sleep(rnd.uniform(0.0, 0.3))
            procs[i].kill()
            procs[i].wait(10)
            procs[i] = spawn(endpoint, i, outs[i], tmp_path, 1)

        def at_end(i: int) -> bool:
            cp = server.checkpoint(f"shard-{i}")
            return cp is not None and cp.value.get("lastEventCursor") == cursors[-1]

        for i in range(SHARDS):
            wait_for(lambda: at_end(i), f"shard {i}'s final watermark", timeout=150)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(30) == 0
        checkpoints = [server.checkpoint(f"shard-{i}") for i in range(SHARDS)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        server.stop_sync()

    handled: List[Set[str]] = []
    for i, out in enumerate(outs):
        assert lines(out)[-1] == "STOPPED"
        assert sum(1 for l in lines(out) if l.startswith("START")) == 2, "killed once, restarted once"
        seen = {line.split(" ", 1)[0] for line in handled_lines(out)}
        handled.append(seen)
        # Only this shard's conversations ever reached this process's handler.
        assert {conversation_of[c] for c in seen} <= set(expected[i])
        assert all(shard_of(conversation_of[c], SHARDS) == i for c in seen)
        # Per-conversation order within each process.
        for run in runs(out):
            last: Dict[str, int] = {}
            for cursor, conversation in run:
                assert int(cursor) > last.get(conversation, -1), f"shard {i}: {conversation} out of order"
                last[conversation] = int(cursor)
    # Disjoint, and together every event.
    assert not (handled[0] & handled[1]) and not (handled[0] & handled[2]) and not (handled[1] & handled[2])
    assert set().union(*handled) == set(cursors)
    # Each share was real work (the hash spreads 500 conversations).
    sizes = Tally({i: sum(expected[i].values()) for i in range(SHARDS)})
    assert min(sizes.values()) > EVENTS // 6, sizes
    for i, cp in enumerate(checkpoints):
        assert cp is not None
        assert cp.value["counts"] == expected[i], f"shard {i}: per-conversation counts equal one clean run"
        assert cp.value.get("completedAboveWatermark") is None
        assert cp.value.get("shardLayout") == {"index": i, "count": SHARDS}
