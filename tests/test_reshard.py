"""The resharding procedure of README "Scaling out", end to end with examples/sharded_counter.py:
two shards run (one ahead of the other), are stopped, their checkpoints are resharded into
three, the three new shards start from the smallest old watermark under new client ids, more
events arrive, and the result equals one clean run over every event: nothing lost, nothing
counted twice, every conversation on exactly one new shard."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import load_example
from memory_service_processor import Config, ConfigurationError, shard_of
from memory_service_processor.testing import LocalMemoryService, run_until_handled
from memory_service_processor.testing.events import synthetic_entries


pytestmark = pytest.mark.timeout(120)





def publish(server: LocalMemoryService, count: int, seed: int, expected: Counter) -> str:
    last = ""
    for chunk in synthetic_entries(count, conversations=60, seed=seed):
        last = server.publish_many(chunk)[-1]
        expected.update(data["conversationId"] for _, _, data in chunk)
    return last


async def run_shard(module: Any, server: LocalMemoryService, client_id: str, index: int, count: int) -> Any:
    config = Config(client_id=client_id, after_cursor="start", shard_index=index, shard_count=count)
    result = await run_until_handled(module.ShardedCounter(), server, config)
    return result.processor


def test_reshard_two_shards_into_three_equals_one_clean_run(tmp_path: Path) -> None:
    module = load_example("sharded_counter")
    server = LocalMemoryService()
    server.start_sync()
    expected: Counter = Counter()
    try:
        # The old layout, two shards; shard 0 then runs further than shard 1.
        publish(server, 1500, seed=1, expected=expected)
        for index in (0, 1):
            asyncio.run(run_shard(module, server, f"old-{index}", index, 2))
        publish(server, 700, seed=2, expected=expected)
        asyncio.run(run_shard(module, server, "old-0", 0, 2))
        old = [server.checkpoint(f"old-{i}") for i in (0, 1)]
        assert all(cp is not None for cp in old)
        assert int(old[0].value["lastEventCursor"]) > int(old[1].value["lastEventCursor"])

        # Reshard through the example's script, as an operator would (checkpoint get output files).
        files = []
        for i, cp in enumerate(old):
            path = tmp_path / f"old-{i}.json"
            path.write_text(json.dumps({"client_id": f"old-{i}", "value": cp.value}))
            files.append(str(path))
        assert module.main(["--count", "3", "--out-dir", str(tmp_path / "new"), *files]) == 0
        for i in range(3):
            value = json.loads((tmp_path / "new" / f"shard-{i}.json").read_text())
            assert value["lastEventCursor"] == old[1].value["lastEventCursor"], "the smallest old watermark"
            server.put_checkpoint(f"new-{i}", module.CONTENT_TYPE, value)

        publish(server, 800, seed=3, expected=expected)
        processors = [asyncio.run(run_shard(module, server, f"new-{i}", i, 3)) for i in range(3)]
    finally:
        server.stop_sync()

    seen: Dict[str, int] = {}
    for index, processor in enumerate(processors):
        for conversation, state in processor.conversations.items():
            assert shard_of(conversation, 3) == index
            assert conversation not in seen
            seen[conversation] = state["count"]
    assert seen == dict(expected), "every event counted exactly once across the reshard"


def test_reshard_refuses_an_incomplete_layout() -> None:
    module = load_example("sharded_counter")
    only_one = [{"conversations": {}, "lastEventCursor": "10", "shardLayout": {"index": 0, "count": 2}}]
    with pytest.raises(ValueError, match="every shard of one layout"):
        module.reshard(only_one, 3)
    no_watermark = [{"conversations": {}}]
    with pytest.raises(ValueError, match="watermark"):
        module.reshard(no_watermark, 2)


def test_a_shard_started_on_another_layouts_checkpoint_refuses(tmp_path: Path) -> None:
    module = load_example("sharded_counter")
    server = LocalMemoryService()
    server.start_sync()
    try:
        publish(server, 200, seed=4, expected=Counter())
        asyncio.run(run_shard(module, server, "layout", 1, 2))
        with pytest.raises(ConfigurationError, match="(?s)shard.*Scaling out"):
            asyncio.run(run_shard(module, server, "layout", 1, 3))
    finally:
        server.stop_sync()
