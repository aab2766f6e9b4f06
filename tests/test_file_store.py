"""FileCheckpointStore and InMemoryCheckpointStore (issue "Pluggable clients and a testing kit",
item 2): one JSON document per client id, written atomically (temporary file, fsync, rename,
directory fsync), so a crash at any instant leaves the previous or the new document.

The crash test SIGKILLs a subprocess that writes checkpoints in a loop, at random moments,
several times, and checks after each kill that the document parses and holds one of the
values written: the last one the writer confirmed, or the one it was writing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import List

import pytest

from conftest import run
from memory_service_processor import (
    Checkpoint,
    CheckpointNotFoundError,
    ConfigurationError,
    FileCheckpointStore,
    InMemoryCheckpointStore,
)

pytestmark = pytest.mark.timeout(120)

CT = "application/vnd.test+json;v=1"


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    return InMemoryCheckpointStore() if request.param == "memory" else FileCheckpointStore(tmp_path)


# ----------------------------------------------------------------------------------------------
# Both stores: the CheckpointClient contract
# ----------------------------------------------------------------------------------------------


def test_get_missing_raises_checkpoint_not_found(store):
    with pytest.raises(CheckpointNotFoundError) as info:
        run(store.get("nobody"))
    assert isinstance(info.value, LookupError)
    assert info.value.client_id == "nobody"


@pytest.mark.parametrize(
    "value",
    [
        {"lastEventCursor": "42", "nested": {"a": [1, 2.5, None, True, "é✓"]}},
        [1, "two", {"three": 3}],
        "just a string",
        7,
        None,
    ],
)
def test_put_then_get_round_trips_any_json_value(store, value):
    async def main() -> None:
        written = await store.put("proc", CT, value)
        assert isinstance(written, Checkpoint)
        assert (written.client_id, written.content_type, written.value) == ("proc", CT, value)
        got = await store.get("proc")
        assert (got.client_id, got.content_type, got.value) == ("proc", CT, value)
        assert got.updated_at is not None and got.updated_at.tzinfo is not None
        assert abs((dt.datetime.now(dt.timezone.utc) - got.updated_at).total_seconds()) < 3600

    run(main())


def test_put_replaces_and_client_ids_are_independent(store):
    async def main() -> None:
        await store.put("a", CT, {"n": 1})
        await store.put("b", CT, {"n": 10})
        await store.put("a", CT, {"n": 2})
        assert (await store.get("a")).value == {"n": 2}
        assert (await store.get("b")).value == {"n": 10}

    run(main())


def test_stored_values_are_copies(store):
    value = {"list": [1]}

    async def main() -> None:
        await store.put("proc", CT, value)
        value["list"].append(2)
        got = await store.get("proc")
        got.value["list"].append(3)
        assert (await store.get("proc")).value == {"list": [1]}

    run(main())


def test_non_json_values_are_refused(store):
    for bad in ({"x": float("nan")}, {"x": object()}):
        with pytest.raises((TypeError, ValueError)):
            run(store.put("proc", CT, bad))
    with pytest.raises(CheckpointNotFoundError):
        run(store.get("proc"))


# ----------------------------------------------------------------------------------------------
# FileCheckpointStore
# ----------------------------------------------------------------------------------------------


def test_file_document_format_and_permissions(tmp_path):
    store = FileCheckpointStore(tmp_path / "new" / "dir")  # created on demand
    run(store.put("proc", CT, {"lastEventCursor": "3"}))
    path = store.path_for("proc")
    assert path.parent == tmp_path / "new" / "dir"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["client_id"] == "proc" and doc["content_type"] == CT
    assert doc["value"] == {"lastEventCursor": "3"}
    assert dt.datetime.fromisoformat(doc["updated_at"]).tzinfo is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["proc.json"]  # no temporary left


def test_file_store_is_readable_by_a_new_instance(tmp_path):
    run(FileCheckpointStore(tmp_path).put("proc", CT, {"n": 1}))
    assert run(FileCheckpointStore(tmp_path).get("proc")).value == {"n": 1}


@pytest.mark.parametrize("client_id", ["a/b", "../escape", "..", "tenant:proc v2", "ünïcode✓", "x" * 100])
def test_client_ids_map_to_one_safe_file_each(tmp_path, client_id):
    store = FileCheckpointStore(tmp_path / "cp")
    run(store.put(client_id, CT, {"id": client_id}))
    path = store.path_for(client_id)
    assert path.parent == tmp_path / "cp"
    assert [p.name for p in (tmp_path / "cp").iterdir()] == [path.name]
    assert run(store.get(client_id)).value == {"id": client_id}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp"]  # nothing written outside


def test_empty_client_id_is_refused(tmp_path):
    store = FileCheckpointStore(tmp_path)
    with pytest.raises(ConfigurationError):
        run(store.put("", CT, {}))
    with pytest.raises(ConfigurationError):
        run(store.get(""))


def test_a_damaged_document_is_a_readable_error(tmp_path):
    store = FileCheckpointStore(tmp_path)
    store.path_for("proc").write_text('{"client_id": "proc", "content_ty')
    with pytest.raises(ConfigurationError, match="not a valid checkpoint document"):
        run(store.get("proc"))
    store.path_for("proc").write_text("[1, 2]")
    with pytest.raises(ConfigurationError, match="proc.json"):
        run(store.get("proc"))


def test_overlapping_puts_leave_the_last_call(tmp_path):
    """The executor may run overlapping puts in any order; the document holds the value of the
    put that was called last."""
    store = FileCheckpointStore(tmp_path)

    async def main() -> None:
        for round_ in range(5):
            await asyncio.gather(*(store.put("proc", CT, {"n": round_ * 100 + i}) for i in range(20)))
            assert (await store.get("proc")).value == {"n": round_ * 100 + 19}

    run(main())
    assert [p.name for p in tmp_path.iterdir()] == ["proc.json"]


def test_a_failed_write_keeps_the_previous_document_and_no_temporary(tmp_path, monkeypatch):
    store = FileCheckpointStore(tmp_path)
    run(store.put("proc", CT, {"n": 1}))

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        run(store.put("proc", CT, {"n": 2}))
    monkeypatch.undo()
    assert run(store.get("proc")).value == {"n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["proc.json"]


def test_puts_do_not_block_the_event_loop(tmp_path, monkeypatch):
    """The file I/O runs in a worker thread: the loop stays free while a write is in progress."""
    store = FileCheckpointStore(tmp_path)
    entered = threading.Event()
    release = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        entered.set()
        release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)

    async def main() -> None:
        put = asyncio.ensure_future(store.put("proc", CT, {"n": 1}))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, entered.wait, 30)
        # The write is stuck in fsync, yet the loop runs this coroutine.
        assert not put.done()
        release.set()
        assert (await put).value == {"n": 1}

    run(main())


# ----------------------------------------------------------------------------------------------
# Crash safety: SIGKILL between (and during) writes
# ----------------------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from memory_service_processor import FileCheckpointStore

    directory, start, pad = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    async def main():
        store = FileCheckpointStore(directory)
        n = start
        while True:
            n += 1
            # A value whose every part depends on n: a torn or mixed document cannot pass.
            await store.put("writer", "application/x-crash-test", {"n": n, "pad": str(n % 10) * pad})
            print(n, flush=True)   # confirmed: put returned

    asyncio.run(main())
    """
)


def _check_document(directory: Path) -> int:
    """The document parses and holds a consistent value; returns its ``n``."""
    path = FileCheckpointStore(directory).path_for("writer")
    doc = json.loads(path.read_text(encoding="utf-8"))  # never torn
    assert doc["client_id"] == "writer" and doc["content_type"] == "application/x-crash-test"
    value = doc["value"]
    n = value["n"]
    assert isinstance(n, int)
    assert value["pad"] == str(n % 10) * len(value["pad"]), "mixed document"
    got = run(FileCheckpointStore(directory).get("writer"))
    assert got.value == value
    return n


def test_sigkill_between_writes_leaves_the_previous_or_the_new_document(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    directory = tmp_path / "store"
    rng = random.Random(os.environ.get("CRASH_SEED", os.getpid()))
    confirmed_total = 0
    last = 0
    kills = 6
    for attempt in range(kills):
        pad = rng.choice([10, 4000, 200_000])  # small and large documents (a large one takes longer to write)
        proc = subprocess.Popen(
            [sys.executable, str(script), str(directory), str(last), str(pad)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            first = proc.stdout.readline()  # wait for the first confirmed write of this process
            assert first.strip(), proc.stderr.read()
            seen = [first]
            # A random moment: after a random number of further confirmations plus a random delay.
            for _ in range(rng.randrange(0, 20)):
                seen.append(proc.stdout.readline())
            if rng.random() < 0.5:
                threading.Event().wait(rng.uniform(0, 0.02))
            os.kill(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        # Lines read before the kill, then the rest of what the writer printed.
        confirmed: List[int] = [int(line) for line in seen + out.split() if line.strip()]
        c = max(confirmed)
        n = _check_document(directory)
        # The last confirmed write, or the one in flight at the kill (written, not yet printed).
        assert n in (c, c + 1), f"document n={n}, last confirmed {c}"
        assert n > last
        confirmed_total += n - last
        last = n
    assert confirmed_total >= kills
    # The temporaries of killed writers never shadow the document; a new store removes them and
    # writes on.
    run(FileCheckpointStore(directory).put("writer", "application/x-crash-test", {"n": last + 1, "pad": ""}))
    assert _check_document(directory) == last + 1
    assert [p.name for p in directory.iterdir()] == ["writer.json"]


def test_temporaries_of_live_writers_and_foreign_files_are_kept(tmp_path):
    live = tmp_path / f".proc.json.{os.getppid()}.1.tmp"
    foreign = tmp_path / ".hidden.tmp"
    for p in (live, foreign):
        p.write_text("partial")
    FileCheckpointStore(tmp_path)
    assert live.exists() and foreign.exists()
