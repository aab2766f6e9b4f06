"""Shards end to end against a LocalMemoryService (docs/semantics.md, "Shards"): the pinned
hash, two shards in one process over the same events (disjoint, complete, per-key order), the
default key filtered in Rust (no foreign event reaches Python), a custom ``key()`` used by the
filter, ``events_foreign``, the stored layout and the refusal of another one, and a restart
that resumes past trailing foreign events."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional

import pytest

from memory_service_processor import (
    Config,
    ConfigurationError,
    EventEnvelope,
    EventProcessor,
    Runtime,
    shard_of,
)
from memory_service_processor.testing import ProcessorRun, run_until_handled

from conftest import cfg, run

pytestmark = pytest.mark.timeout(120)

CT = "application/vnd.test.shards+json;v=1"

#: ``(key, shard of 3, shard of 16)``: FNV-1a 64 of the UTF-8 bytes, modulo the count. The
#: same vectors are pinned in src/shard_tests.rs and written in docs/semantics.md.
VECTORS = [
    ("", 2, 5),
    ("a", 1, 12),
    ("foobar", 0, 8),
    ("conv-1", 0, 13),
    ("6f1c2d3e-0000-4000-8000-000000000001", 0, 4),
    ("caf\u00e9", 2, 9),
    ("\u4f1a\u8bdd-7", 0, 3),
]


def fnv1a64(data: bytes) -> int:
    """The documented hash, written out in Python (another language's implementation)."""
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@pytest.mark.parametrize("key, of3, of16", VECTORS)
def test_shard_of_is_the_documented_hash(key: str, of3: int, of16: int) -> None:
    assert shard_of(key, 3) == of3
    assert shard_of(key, 16) == of16
    assert shard_of(key, 1) == 0
    for count in (2, 5, 1024):
        assert shard_of(key, count) == fnv1a64(key.encode("utf-8")) % count


def test_shard_of_none_is_zero_and_bad_counts_are_refused() -> None:
    assert shard_of(None, 7) == 0
    for bad in (0, -1):
        with pytest.raises(ValueError, match="shard_count"):
            shard_of("a", bad)
    with pytest.raises(TypeError):
        shard_of(b"a", 3)  # type: ignore[arg-type]
    assert "FNV-1a" in (shard_of.__doc__ or "")


# ---------------------------------------------------------------------------------------------
# Two shards in one process


def publish(server: Any, n: int, conversations: int = 23, first: int = 0) -> List[str]:
    """``n`` entry events over ``conversations`` (every 9th without one: key None)."""
    specs = []
    for i in range(first, first + n):
        data: Dict[str, Any] = {"entry": f"e{i}"}
        if i % 9:
            data["conversation"] = f"conv-{i % conversations}"
        specs.append(("entry", "appended", data))
    return server.publish_many(specs)


class Counting(EventProcessor):
    """Records every handle call (cursor and key) and counts the key() calls."""

    CONTENT_TYPE = CT

    def __init__(self) -> None:
        self.handled: List[str] = []
        self.keys_of_handled: List[Optional[str]] = []
        self.key_calls = 0

    def load(self, state: Any) -> None:
        pass

    async def handle(self, event: EventEnvelope) -> None:
        await asyncio.sleep(0)
        self.handled.append(event.cursor or "")
        self.keys_of_handled.append(EventProcessor.key(self, event))

    def snapshot(self) -> Any:
        return {"handled": len(self.handled)}


class CountingKey(Counting):
    """Counts the key() calls (the default key, computed in Python)."""

    def key(self, event: EventEnvelope) -> Optional[str]:
        self.key_calls += 1
        return super().key(event)


class CustomKey(Counting):
    """A key unrelated to the conversation: the cursor modulo 7."""

    def key(self, event: EventEnvelope) -> Optional[str]:
        self.key_calls += 1
        return f"k{int(event.cursor or 0) % 7}"


def shard_config(index: int, count: int, max_concurrency: int, **kw: Any) -> Config:
    return cfg(
        f"shard-{index}", after_cursor="start", shard_index=index, shard_count=count,
        max_concurrency=max_concurrency, max_batch=32, **kw,
    )


async def two_shards(server: Any, processors: List[Counting], max_concurrency: int) -> List[Any]:
    return list(
        await asyncio.gather(
            *(
                run_until_handled(p, server, shard_config(i, len(processors), max_concurrency))
                for i, p in enumerate(processors)
            )
        )
    )


def key_of(server_cursor: str, conversations: int = 23) -> Optional[str]:
    i = int(server_cursor) - 1
    return None if i % 9 == 0 else f"conv-{i % conversations}"


@pytest.mark.parametrize("max_concurrency", [1, 8])
def test_two_shards_split_the_events_disjointly_with_the_default_key_in_rust(server: Any, max_concurrency: int) -> None:
    cursors = publish(server, 400)
    assert cursors == [str(i) for i in range(1, 401)]
    processors: List[Counting] = [Counting(), Counting()]
    results = run(two_shards(server, processors, max_concurrency))
    union: List[str] = []
    for index, (p, r) in enumerate(zip(processors, results)):
        mine = [c for c in cursors if shard_of(key_of(c), 2) == index]
        assert mine and len(mine) < len(cursors)
        # Only this shard's events reached Python: no foreign event was ever handed out.
        assert sorted(p.handled, key=int) == mine
        assert all(shard_of(k, 2) == index for k in p.keys_of_handled)
        assert r.stats["events_handled"] == len(mine)
        assert r.stats["events_foreign"] == len(cursors) - len(mine)
        # Per key, stream order.
        per_key: Dict[Optional[str], List[int]] = {}
        for c, k in zip(p.handled, p.keys_of_handled):
            per_key.setdefault(k, []).append(int(c))
        assert all(v == sorted(v) for v in per_key.values())
        if max_concurrency == 1:
            assert p.handled == mine
        # Each shard's checkpoint covers the whole stream and records its layout.
        assert r.state["lastEventCursor"] == cursors[-1]
        assert r.state["shardLayout"] == {"index": index, "count": 2}
        union.extend(p.handled)
    assert sorted(union, key=int) == cursors


@pytest.mark.parametrize("max_concurrency", [1, 8])
def test_the_default_key_is_never_asked_from_python(server: Any, max_concurrency: int) -> None:
    """A processor that overrides key() with the default's answer is asked for every event;
    one that does not override it is asked for none (the key is read in Rust)."""
    cursors = publish(server, 120)
    overriding: List[Counting] = [CountingKey(), CountingKey()]
    run(two_shards(server, overriding, max_concurrency))
    assert [p.key_calls for p in overriding] == [len(cursors), len(cursors)]
    assert sorted(overriding[0].handled + overriding[1].handled, key=int) == cursors
    # The same split as the default key computed in Rust.
    for index, p in enumerate(overriding):
        assert sorted(p.handled, key=int) == [c for c in cursors if shard_of(key_of(c), 2) == index]


@pytest.mark.parametrize("max_concurrency", [1, 8])
def test_a_custom_key_decides_the_shard(server: Any, max_concurrency: int) -> None:
    cursors = publish(server, 210)
    processors: List[Counting] = [CustomKey(), CustomKey()]
    results = run(two_shards(server, processors, max_concurrency))
    for index, (p, r) in enumerate(zip(processors, results)):
        mine = [c for c in cursors if shard_of(f"k{int(c) % 7}", 2) == index]
        assert sorted(p.handled, key=int) == mine
        assert p.key_calls == len(cursors)
        assert r.stats["events_foreign"] == len(cursors) - len(mine)
        assert r.state["lastEventCursor"] == cursors[-1]
    assert sorted(processors[0].handled + processors[1].handled, key=int) == cursors


def test_one_shard_is_the_unsharded_format(server: Any) -> None:
    cursors = publish(server, 30)
    r = run(run_until_handled(Counting(), server, cfg("whole", after_cursor="start")))
    assert r.stats["events_foreign"] == 0
    assert r.stats["events_handled"] == len(cursors)
    assert "shardLayout" not in r.state


# ---------------------------------------------------------------------------------------------
# Layout and restarts


def test_a_restart_with_another_layout_is_refused_naming_both(server: Any) -> None:
    publish(server, 40)
    run(run_until_handled(Counting(), server, shard_config(1, 2, 1)))
    assert server.checkpoint("shard-1").value["shardLayout"] == {"index": 1, "count": 2}
    for changed in (shard_config(1, 3, 1), shard_config(1, 3, 8), cfg("shard-1", after_cursor="start")):
        p = Counting()
        with pytest.raises(ConfigurationError) as info:
            run(Runtime(p, changed, endpoint=server.endpoint).run())
        text = str(info.value)
        for part in ("client_id=shard-1", "shard 1 of 2", f"shard {changed.shard_index} of {changed.shard_count}",
                     "new client ids", "Scaling out"):
            assert part in text, (part, text)
        assert p.handled == []
    # The stored checkpoint is untouched, and the old layout still resumes.
    assert server.checkpoint("shard-1").value["shardLayout"] == {"index": 1, "count": 2}
    run(run_until_handled(Counting(), server, shard_config(1, 2, 1)))


def test_an_unsharded_checkpoint_is_refused_by_a_sharded_run(server: Any) -> None:
    publish(server, 10)
    run(run_until_handled(Counting(), server, cfg("shard-0", after_cursor="start")))
    with pytest.raises(ConfigurationError, match="shard 0 of 1"):
        run(Runtime(Counting(), shard_config(0, 2, 1), endpoint=server.endpoint).run())


@pytest.mark.parametrize("max_concurrency", [1, 8])
def test_a_restart_resumes_past_trailing_foreign_events(server: Any, max_concurrency: int) -> None:
    index = shard_of("conv-0", 2)
    other = next(f"conv-{i}" for i in range(1, 50) if shard_of(f"conv-{i}", 2) != index)
    first = server.publish_many(
        [("entry", "appended", {"conversation": "conv-0", "entry": f"m{i}"}) for i in range(5)]
        + [("entry", "appended", {"conversation": other, "entry": f"o{i}"}) for i in range(40)]
    )
    r1 = run(run_until_handled(Counting(), server, shard_config(index, 2, max_concurrency)))
    assert sorted(r1.processor.handled, key=int) == first[:5]
    assert r1.stats["events_foreign"] == 40
    # The stored position is past the trailing foreign events.
    assert int(r1.state["lastEventCursor"]) >= int(first[-1])
    second = server.publish_many(
        [("entry", "appended", {"conversation": other, "entry": "o-late"}),
         ("entry", "appended", {"conversation": "conv-0", "entry": "m-late"})]
    )
    r2 = run(run_until_handled(Counting(), server, shard_config(index, 2, max_concurrency)))
    assert r2.processor.handled == [second[1]], "nothing of the first run is redone"
    assert r2.stats["events_foreign"] == 1, "the old foreign events are not read again"
    assert r2.state["lastEventCursor"] == second[-1]


def test_a_sharded_snapshot_must_be_an_object(server: Any) -> None:
    class Listy(Counting):
        def snapshot(self) -> Any:
            return [len(self.handled)]

    publish(server, 5)
    with pytest.raises(ValueError, match="shard_count > 1"):
        run(run_until_handled(Listy(), server, shard_config(0, 2, 1)))


@pytest.mark.parametrize("max_concurrency", [1, 8])
def test_the_testing_kit_waits_for_a_foreign_cursor(server: Any, max_concurrency: int) -> None:
    """``until_handled(cursor)`` of an event of another shard returns once the shard's
    watermark passed it (the processor never sees it)."""
    index = shard_of("conv-0", 2)
    other = next(f"conv-{i}" for i in range(1, 50) if shard_of(f"conv-{i}", 2) != index)
    p = Counting()

    async def main() -> None:
        async with ProcessorRun(p, server, shard_config(index, 2, max_concurrency)) as r:
            mine = server.publish_many([("entry", "appended", {"conversation": "conv-0"})])
            theirs = server.publish_many([("entry", "appended", {"conversation": other})] * 3)
            await r.until_handled(theirs[-1], timeout=20)
            assert p.handled == mine
            assert r.runtime.stats()["watermark"] == theirs[-1]

    run(main())
