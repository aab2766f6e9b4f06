"""The example processors (examples/*.py) against a real LocalMemoryService, and the demo.

They run through the testing kit (`run_until_handled`), as a processor author's tests would."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from conftest import EXAMPLES, SummaryEvents, cfg, load_example, run, wait_until
from memory_service_processor import Config, EventEnvelope, GrpcCheckpointClient
from memory_service_processor.testing import LocalMemoryService, run_until_handled
from memory_service_processor.testing.events import Activity

REPO = Path(__file__).resolve().parents[1]






def run_until(processor: Any, server: LocalMemoryService, config: Config, last_cursor: str, mode: str = "full") -> None:
    """Runs ``processor`` with the testing kit until it has handled ``last_cursor``, then stops it
    gracefully; the stored checkpoint then covers ``last_cursor``. ``mode``: the payload shape
    the processor is sent (``full``, as the runtime asks, or ``summary``)."""
    clients: Dict[str, Any] = {}
    if mode == "summary":
        clients = {"events": SummaryEvents(server.endpoint), "checkpoints": GrpcCheckpointClient(server.endpoint)}
    result = run(run_until_handled(processor, server, config, until_cursor=last_cursor, **clients))
    assert result.checkpoint is not None and result.checkpoint.value["lastEventCursor"] == last_cursor


MODES = pytest.mark.parametrize("mode", ["full", "summary"])


def conversations(server: LocalMemoryService, n: int = 3) -> List[str]:
    """``n`` conversations owned by alice (their ids are UUIDs)."""
    return [server.create_conversation(owner="alice", title=f"Conversation {i}") for i in range(n)]


def turns(server: LocalMemoryService, convs: List[str], n: int, start: int = 0) -> List[str]:
    """``n`` history entries, USER and AI alternating, over ``convs`` round-robin; returns the
    cursors."""
    cursors = []
    for i in range(start, start + n):
        role = "USER" if i % 2 == 0 else "AI"
        server.append_entry(convs[i % len(convs)], [{"role": role, "text": f"message {i}"}])
        cursors.append(server.last_cursor)
    return cursors


def entries(n: int, start: int = 0, conversations: int = 3) -> List[Tuple[str, str, Dict[str, Any]]]:
    """Raw ``entry/created`` summary payloads (for tests that build envelopes by hand)."""
    return [
        ("entry", "created", {
            "conversation": f"c{(start + i) % conversations}", "conversation_group": "g",
            "entry": f"e{start + i}", "entry_channel": "history", "entry_content_type": "history",
            "entry_role": "USER" if (start + i) % 2 == 0 else "AI",
        })
        for i in range(n)
    ]


# -- entry_counter ---------------------------------------------------------------------------------


@MODES
def test_entry_counter_counts_and_resumes(server: LocalMemoryService, mode: str) -> None:
    EntryCounter = load_example("entry_counter").EntryCounter
    convs = conversations(server, 1)
    turns(server, convs, 10)
    server.append_entry(convs[0], [{"role": "AI", "text": "a note"}], channel="context")  # not counted
    last = server.add_member(convs[0], "bob", "reader")
    first = EntryCounter()
    run_until(first, server, cfg("counter", after_cursor="start"), last, mode)
    assert first.count == 10 and first.by_role == {"USER": 5, "AI": 5}
    assert server.checkpoint("counter").value == {"count": 10, "byRole": {"USER": 5, "AI": 5}, "lastEventCursor": last}

    cursors = turns(server, convs, 4, start=10)
    second = EntryCounter()
    run_until(second, server, cfg("counter", after_cursor="start"), cursors[-1], mode)
    assert second.count == 14 and second.by_role == {"USER": 7, "AI": 7}  # loaded 10, counted 4 more


def test_entry_counter_accepts_a_reset_state() -> None:
    counter = load_example("entry_counter").EntryCounter()
    counter.load({})
    assert counter.count == 0 and counter.last_event_cursor is None
    counter.load({"lastEventCursor": "12"})
    assert counter.last_event_cursor == "12"


# -- sqlite_projection -----------------------------------------------------------------------------


def _db_rows(path: Path) -> Tuple[int, Dict[str, int], int]:
    with sqlite3.connect(str(path)) as db:
        rows = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        stats = dict(db.execute("SELECT conversation, entries FROM conversation_stats").fetchall())
        distinct = db.execute("SELECT COUNT(DISTINCT cursor) FROM entries").fetchone()[0]
    return rows, stats, distinct


@MODES
def test_sqlite_projection_is_idempotent_across_replays(server: LocalMemoryService, tmp_path: Path, mode: str) -> None:
    SqliteProjection = load_example("sqlite_projection").SqliteProjection
    db = tmp_path / "projection.sqlite3"
    c0, c1, c2 = convs = conversations(server)
    cursors = turns(server, convs, 30)

    first = SqliteProjection(str(db))
    run_until(first, server, cfg("sqlite", after_cursor="start"), cursors[-1], mode)
    first.close()
    assert _db_rows(db) == (30, {c0: 10, c1: 10, c2: 10}, 30)
    with sqlite3.connect(str(db)) as conn:
        texts = [t for (t,) in conn.execute("SELECT text FROM entries ORDER BY CAST(cursor AS INTEGER)")]
        roles = [r for (r,) in conn.execute("SELECT role FROM entries ORDER BY CAST(cursor AS INTEGER)")]
    # the text is in full payloads only; the role in both shapes
    assert texts == ([f"message {i}" for i in range(30)] if mode == "full" else [None] * 30)
    assert roles == ["USER", "AI"] * 15

    # A crash after the commit but before the checkpoint: the checkpoint lags the database, and
    # the runtime delivers events 11..30 again. They must change nothing.
    server.put_checkpoint("sqlite", SqliteProjection.CONTENT_TYPE, {"lastEventCursor": cursors[9]})
    more = turns(server, convs, 6, start=30)
    second = SqliteProjection(str(db))
    run_until(second, server, cfg("sqlite", after_cursor="start"), more[-1], mode)
    assert second.inserted == 6  # 20 replayed duplicates ignored
    assert second.top_conversations(1) == [(min(convs), 12, 6)]  # a tie: the smallest id first
    second.close()
    assert _db_rows(db) == (36, {c0: 12, c1: 12, c2: 12}, 36)


def test_sqlite_projection_never_checkpoints_uncommitted_rows(tmp_path: Path) -> None:
    """Between two flushes the snapshot keeps the committed cursor; a crash loses nothing."""
    SqliteProjection = load_example("sqlite_projection").SqliteProjection
    db = tmp_path / "p.sqlite3"
    p = SqliteProjection(str(db))
    events = [EventEnvelope("appended", "entry", __import__("json").dumps(d).encode(), str(i + 1))
              for i, (_, _, d) in enumerate(entries(5))]
    for e in events[:3]:
        p.handle(e)
    p.flush()
    assert p.snapshot()["lastEventCursor"] == "3"
    for e in events[3:]:
        p.handle(e)
    p.handle(events[4])  # a duplicate delivery
    assert p.last_event_cursor == "5" and p.snapshot()["lastEventCursor"] == "3"
    p.close()  # "crash": the open transaction is rolled back
    assert _db_rows(db)[0] == 3

    again = SqliteProjection(str(db))
    again.load({"lastEventCursor": "3"})
    for e in events[3:]:  # what the runtime re-delivers after the checkpoint
        again.handle(e)
    again.flush()
    assert again.snapshot()["lastEventCursor"] == "5"
    again.close()
    assert _db_rows(db) == (5, {"c0": 2, "c1": 2, "c2": 1}, 5)


def test_sqlite_projection_from_the_command_line(server: LocalMemoryService, tmp_path: Path) -> None:
    """``run examples/sqlite_projection.py:SqliteProjection --arg path=...``, then SIGTERM."""
    db = tmp_path / "cli.sqlite3"
    convs = conversations(server)
    cursors = turns(server, convs, 25)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_SERVICE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory_service_processor", "run", "examples/sqlite_projection.py:SqliteProjection",
         "--arg", f"path={db}", "--endpoint", server.endpoint, "--client-id", "sqlite-cli",
         "--after-cursor", "start", "--kinds", "entry", "--checkpoint-interval", "100ms"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    def done() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        cp = server.checkpoint("sqlite-cli")
        return cp is not None and cp.value.get("lastEventCursor") == cursors[-1]

    try:
        run(wait_until(done, "the projection's checkpoint at the last cursor", interval=0.02))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert _db_rows(db) == (25, {convs[0]: 9, convs[1]: 8, convs[2]: 8}, 25)


# -- turn_counter and the demo ---------------------------------------------------------------------


@MODES
def test_turn_counter_matches_the_activity(server: LocalMemoryService, mode: str) -> None:
    TurnCounter = load_example("turn_counter").TurnCounter
    activity = Activity(server, conversations=20, seed=5)
    cursors = activity.emit(1500)
    counter = TurnCounter()
    config = cfg("turns", after_cursor="start", entry_channels=["history", "context"])
    run_until(counter, server, config, cursors[-1], mode)

    turns_: Counter = Counter()
    user: Counter = Counter()
    notes: Counter = Counter()
    responses: Counter = Counter()
    shared: Dict[str, set] = {}
    archived: Dict[str, bool] = {}
    for e in activity.emitted:
        if e.kind == "entry" and e.channel == "history":
            turns_[e.conversation] += 1
            user[e.conversation] += e.role == "USER"
        elif e.kind == "entry":
            notes[e.conversation] += 1
        elif e.kind == "response" and e.status == "completed":
            responses[e.conversation] += 1
        elif e.kind == "membership":
            users = shared.setdefault(e.conversation, set())
            (users.discard if e.event == "deleted" else users.add)(e.user)
        elif e.status in ("archived", "unarchived"):
            archived[e.conversation] = e.status == "archived"
    # the activity is varied enough to test every handler
    assert notes and responses and shared and archived
    assert {c: s.turns for c, s in counter.conversations.items() if s.turns} == dict(turns_)
    assert {c: s.user_turns for c, s in counter.conversations.items() if s.user_turns} == {c: n for c, n in user.items() if n}
    assert {c: s.notes for c, s in counter.conversations.items() if s.notes} == dict(notes)
    assert {c: s.responses for c, s in counter.conversations.items() if s.responses} == dict(responses)
    assert {c: s.archived for c, s in counter.conversations.items() if c in archived} == archived
    for c, users in shared.items():
        assert sorted(counter.members.get(counter.conversations[c].group or "", [])) == sorted(users)
    assert len(counter.conversations) == 20
    top = counter.busiest(3)
    assert [s.turns for s in top] == sorted(turns_.values(), reverse=True)[:3]
    # titles come with full payloads only
    assert all(bool(s.title) == (mode == "full") for s in top)
    assert counter.events_seen == len(cursors)  # nothing filtered, nothing hard-deleted
    # The checkpoint holds the whole state: a fresh counter loaded from it is the same.
    restored = TurnCounter()
    restored.load(server.checkpoint("turns").value)
    assert restored.snapshot() == counter.snapshot()


def _demo(data_dir: Path) -> "subprocess.CompletedProcess[str]":
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_SERVICE_")}
    return subprocess.run(
        [sys.executable, "-m", "memory_service_processor", "demo", "--events", "800", "--duration", "1.5",
         "--data-dir", str(data_dir), "--live-rate", "100"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


def test_demo_runs_by_itself_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    first = _demo(tmp_path / "demo")
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "no checkpoint for demo-turn-counter yet" in out
    assert re.search(r"^progress: phase=\w+ handled=\d+", out, re.M), out  # plain lines: not a terminal
    assert "Busiest conversations" in out and "Summary" in out
    saved = re.search(r"the last one is at cursor (\d+)", out)
    assert saved, out
    assert f"Run it again with --data-dir {tmp_path / 'demo'}" in out

    second = _demo(tmp_path / "demo")
    assert second.returncode == 0, second.stderr
    assert f"resuming demo-turn-counter from its checkpoint at cursor {saved.group(1)}" in second.stdout
    assert f"resumed      from cursor {saved.group(1)}" in second.stdout

    with LocalMemoryService(data_dir=tmp_path / "demo") as server:
        cp = server.checkpoint("demo-turn-counter")
        assert cp is not None
        # Every published event was counted exactly once over the two runs.
        assert cp.value["eventsSeen"] == int(cp.value["lastEventCursor"])


def test_examples_shipped_with_the_package_match_the_repository() -> None:
    """The demo needs examples/turn_counter.py at run time. If the installed package carries
    copies (memory_service_processor/examples/), they must be the repository's files."""
    import memory_service_processor

    shipped = Path(memory_service_processor.__file__).resolve().parent / "examples"
    if not (shipped / "turn_counter.py").is_file():
        pytest.skip("the examples are not shipped inside the package: ship them in the wheel so that `demo` works without a checkout")
    for name in ("entry_counter.py", "sqlite_projection.py", "turn_counter.py"):
        assert (shipped / name).read_bytes() == (EXAMPLES / name).read_bytes(), f"{name} differs from examples/{name}"
