"""Crash safety (issue "Never lose an event", item 6): SIGKILL the processor process at random
moments while events are published, restart it each time, and check that every published event
is handled at least once, that the saved checkpoint never points past a handled event, that each
restart resumes exactly after the saved checkpoint, and that duplicates stay bounded. Variants:
the server stopped/started in-process mid-stream, and the server process SIGKILLed and
restarted from its data directory.

The processor runs as a subprocess (tests/helpers/crash_processor.py): it appends every handled
cursor to a file with one unbuffered write before handle() returns, so the file is the ground
truth of what was handled, even across SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

import conftest
from conftest import spawn_python
from memory_service_processor.testing import LocalMemoryService

HELPER = Path(__file__).parent / "helpers" / "crash_processor.py"
CLIENT_ID = "crash-recorder"
#: max_batch in the helper; with checkpoint_every=1 a kill re-delivers at most the events
#: handled since the last completed write: a batch or two. The bound below is deliberately loose.
MAX_BATCH = 16
DUPLICATES_PER_KILL_BOUND = 20 * MAX_BATCH

pytestmark = pytest.mark.timeout(120)


class Publisher(threading.Thread):
    """Publishes ``per_tick`` entry events every ``tick`` seconds until :meth:`finish`."""

    def __init__(self, server: LocalMemoryService, per_tick: int = 8, tick: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.per_tick = per_tick
        self.tick = tick
        self.last = 0
        self._done = threading.Event()
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        n = 0
        try:
            while not self._done.is_set():
                batch = [("entry", "appended", {"conversation": "c", "entry": f"e{n + i}"}) for i in range(self.per_tick)]
                n += self.per_tick
                cursors = self.server.publish_many(batch)
                self.last = int(cursors[-1])
                self._done.wait(self.tick)
        except BaseException as e:  # pragma: no cover - reported by the test
            self.error = e

    def finish(self) -> int:
        self._done.set()
        self.join(10)
        assert self.error is None, self.error
        return self.last


def spawn_processor(endpoint: str, out: Path, logs: Path, n: int, delay: float = 0.0005) -> subprocess.Popen:
    return spawn_python([str(HELPER), endpoint, CLIENT_ID, str(out), str(delay)], logs / f"processor-{n}.stderr")


def read_segments(out: Path) -> List[Dict[str, Any]]:
    """The file as one segment per process: ``{"load": cursor|None|"-", "cursors": [...], "stopped": bool}``.

    ``load`` is ``"-"`` when the process never called load (first run, or killed before)."""
    segments: List[Dict[str, Any]] = []
    if not out.exists():
        return segments
    for line in out.read_text().splitlines():
        if line.startswith("START"):
            segments.append({"load": "-", "cursors": [], "stopped": False})
        elif line.startswith("LOAD"):
            value = line.split(" ", 1)[1]
            segments[-1]["load"] = None if value == "None" else value
        elif line == "STOPPED":
            segments[-1]["stopped"] = True
        elif line:
            segments[-1]["cursors"].append(int(line))
    return segments


def handled_set(out: Path) -> set:
    return {c for s in read_segments(out) for c in s["cursors"]}


def checkpoint_cursor(server: LocalMemoryService) -> Optional[int]:
    cp = server.checkpoint(CLIENT_ID)
    if cp is None or cp.value.get("lastEventCursor") is None:
        return None
    return int(cp.value["lastEventCursor"])


class InvariantSampler:
    """Checks, as often as it can, that the stored checkpoint never points past a handled event.

    The checkpoint is read *before* the file: the file only grows, so a correct checkpoint is
    always found in it."""

    def __init__(self, server: LocalMemoryService, out: Path) -> None:
        self.server = server
        self.out = out
        self.samples = 0
        self.violations: List[str] = []

    def sample(self) -> None:
        cp = checkpoint_cursor(self.server)
        if cp is None:
            return
        handled = handled_set(self.out)
        self.samples += 1
        if cp not in handled:
            self.violations.append(f"checkpoint {cp} not handled (max handled {max(handled, default=None)})")

    def sample_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sample()
            time.sleep(0.01)


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    conftest.wait_for(predicate, what, timeout)


def stop_gracefully(proc: subprocess.Popen) -> int:
    """SIGTERM, then the exit code. (Whether the *process* exits cleanly after ``run()`` returned
    is checked by :func:`test_graceful_stop_exits_the_process_cleanly`; the invariants tests only
    need ``run()`` to have returned, which the ``STOPPED`` line proves.)"""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()
        raise


def check_segments(segments: List[Dict[str, Any]]) -> List[int]:
    """The per-restart invariants; returns the duplicates caused by each restart."""
    duplicates: List[int] = []
    seen: set = set()
    for i, seg in enumerate(segments):
        cursors = seg["cursors"]
        if cursors:
            # one process handles events exactly once, in order
            assert cursors == list(range(cursors[0], cursors[0] + len(cursors))), (
                f"segment {i} is not consecutive: {cursors[:10]}..."
            )
        load = seg["load"]
        if load not in ("-", None):
            # the saved checkpoint never points past a handled event
            assert int(load) in seen, f"segment {i} loaded cursor {load}, which was never handled"
        resume_after = int(load) if load not in ("-", None) else 0
        if cursors:
            # resumes exactly after the saved checkpoint: nothing skipped
            assert cursors[0] == resume_after + 1, f"segment {i} started at {cursors[0]}, expected {resume_after + 1}"
            if seen:
                duplicates.append(max(seen) - resume_after)
        seen.update(cursors)
    return duplicates


def test_processor_sigkill_at_random_moments_loses_nothing(tmp_path):
    rnd = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    out = tmp_path / "handled.txt"
    server = LocalMemoryService()
    endpoint = server.start_sync()
    publisher = Publisher(server)
    sampler = InvariantSampler(server, out)
    kills = 0
    try:
        publisher.start()
        for n in range(6):
            proc = spawn_processor(endpoint, out, tmp_path, n)
            wait_for(lambda: len(read_segments(out)) == n + 1, "the processor's START line")
            # random moments: during connect, load, catch-up replay or live handling
            sampler.sample_for(rnd.uniform(0.0, 0.7))
            proc.kill()
            proc.wait(10)
            kills += 1
            sampler.sample()
        proc = spawn_processor(endpoint, out, tmp_path, 99)
        sampler.sample_for(rnd.uniform(0.2, 0.5))
        last = publisher.finish()
        wait_for(lambda: last in handled_set(out), f"cursor {last} handled", timeout=40)
        stop_gracefully(proc)
        sampler.sample()
    finally:
        publisher.finish()
        server.stop_sync()

    segments = read_segments(out)
    assert kills >= 5 and len(segments) == kills + 1
    assert segments[-1]["stopped"]
    handled = handled_set(out)
    missing = sorted(set(range(1, last + 1)) - handled)
    assert not missing, f"{len(missing)} published events never handled: {missing[:20]}"
    assert not sampler.violations, sampler.violations[:5]
    assert sampler.samples > 10
    duplicates = check_segments(segments)
    print(f"kills={kills} published={last} handled per process={[len(s['cursors']) for s in segments]} "
          f"loads={[s['load'] for s in segments]} duplicates per restart={duplicates}")
    assert all(0 <= d <= DUPLICATES_PER_KILL_BOUND for d in duplicates), duplicates
    # the final graceful stop saved everything
    assert checkpoint_cursor(server) == last
    # kills landed while events were being handled (not only during start-up)
    assert sum(1 for s in segments[:-1] if s["cursors"]) >= 3, [len(s["cursors"]) for s in segments]


def test_server_stop_start_mid_stream_with_a_processor_process(tmp_path):
    rnd = random.Random()
    out = tmp_path / "handled.txt"
    server = LocalMemoryService()
    endpoint = server.start_sync()
    publisher = Publisher(server)
    sampler = InvariantSampler(server, out)
    try:
        publisher.start()
        proc = spawn_processor(endpoint, out, tmp_path, 0)
        wait_for(lambda: len(handled_set(out)) > 0, "the processor to handle events")
        for _ in range(4):
            sampler.sample_for(rnd.uniform(0.1, 0.5))
            server.stop_sync()  # open streams end with UNAVAILABLE; publishing goes on
            time.sleep(rnd.uniform(0.05, 0.3))  # the outage (not an assertion)
            server.start_sync()
        sampler.sample_for(0.2)
        last = publisher.finish()
        wait_for(lambda: last in handled_set(out), f"cursor {last} handled", timeout=40)
        stop_gracefully(proc)
    finally:
        publisher.finish()
        server.stop_sync()

    segments = read_segments(out)
    assert len(segments) == 1 and segments[0]["stopped"]
    # one process, server restarts only: every event exactly once, in order
    assert segments[0]["cursors"] == list(range(1, last + 1))
    assert not sampler.violations, sampler.violations[:5]
    assert checkpoint_cursor(server) == last


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server_process(port: int, data_dir: Path, preload: int, logs: Path, n: int) -> subprocess.Popen:
    with open(logs / f"server-{n}.stderr", "wb") as err:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "memory_service_processor.testing", "serve", "--port", str(port),
             "--data-dir", str(data_dir), "--preload", str(preload)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), f"server did not start: {line!r}"
    assert line.split()[1].endswith(f":{port}")
    return proc


def test_server_process_sigkill_and_restart_from_its_data_dir(tmp_path):
    """The server process is killed hard and restarted on the same port and data directory
    (each start preloads more events); the processor process rides through every outage."""
    import asyncio

    from memory_service_processor import GrpcCheckpointClient

    rnd = random.Random()
    port = _free_port()
    data = tmp_path / "data"
    out = tmp_path / "handled.txt"
    endpoint = f"127.0.0.1:{port}"
    server = _start_server_process(port, data, 1500, tmp_path, 0)
    total = 1500
    proc = None
    try:
        proc = spawn_processor(endpoint, out, tmp_path, 0)
        wait_for(lambda: len(handled_set(out)) > 0, "the processor to handle events")
        for n in range(1, 4):
            time.sleep(rnd.uniform(0.1, 0.4))  # a random moment (not an assertion)
            server.kill()
            server.wait(10)
            server = _start_server_process(port, data, 500, tmp_path, n)
            total += 500
        wait_for(lambda: total in handled_set(out), f"cursor {total} handled", timeout=40)
        stop_gracefully(proc)
        proc = None
        stored = asyncio.run(GrpcCheckpointClient(endpoint).get(CLIENT_ID))
    finally:
        if proc is not None:
            proc.kill()
        server.send_signal(signal.SIGTERM)
        server.wait(10)

    segments = read_segments(out)
    assert len(segments) == 1 and segments[0]["stopped"]
    assert segments[0]["cursors"] == list(range(1, total + 1))
    assert stored.value["lastEventCursor"] == str(total)


def test_graceful_stop_exits_the_process_cleanly(tmp_path):
    """SIGTERM to an idle, live processor process: ``run()`` returns and the interpreter must
    then exit with status 0. Repeated, because a crash during interpreter finalization (native
    threads still calling into Python after ``run()`` returned) only shows up now and then."""
    server = LocalMemoryService()
    endpoint = server.start_sync()
    results = []
    try:
        for n in range(10):
            out = tmp_path / f"handled-{n}.txt"
            last = int(server.publish_many([("entry", "appended", {"n": i}) for i in range(50)])[-1])
            proc = spawn_processor(endpoint, out, tmp_path, n, delay=0.0)
            try:
                wait_for(lambda: last in handled_set(out), f"cursor {last} handled")
                wait_for(lambda: checkpoint_cursor(server) == last, "the checkpoint")
            finally:
                rc = stop_gracefully(proc)
            stopped = read_segments(out)[-1]["stopped"]
            err = (tmp_path / f"processor-{n}.stderr").read_text(errors="replace").strip().splitlines()
            results.append((rc, stopped, err[0] if err else ""))
    finally:
        server.stop_sync()
    assert all(stopped for _, stopped, _ in results), results
    bad = [r for r in results if r[0] != 0]
    assert not bad, f"{len(bad)} of {len(results)} graceful stops crashed the process after run() returned: {bad}"
