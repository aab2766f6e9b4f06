"""Per-conversation entry counts, ready to run as shards and to be resharded.

Run three shards against a Memory Service (each its own process, usually a StatefulSet pod)::

    memory-service-processor run examples/sharded_counter.py:ShardedCounter \\
        --endpoint localhost:8082 --client-id counter-0 --after-cursor start \\
        --kinds entry --shard-count 3 --shard-index 0          # and 1, 2 with counter-1, counter-2

Each shard sees only its conversations (the runtime drops the others' events before Python),
keeps its own checkpoint under its own client id, and records the shard layout in it.

What makes it reshardable: every conversation's state carries the cursor of the last event
applied to it (``last``), and ``handle`` ignores an event at or before that cursor. Resharding
(see the README, "Scaling out") starts the new shards from the *smallest* watermark of the old
ones, so a new shard sees again some events that an old shard already applied; ``last`` makes
those no-ops. Memory Service cursors are decimal numbers increasing in commit order, which is
what the comparison relies on.

:func:`reshard` turns the old shards' checkpoint values into the new shards' values; as a
script it reads ``checkpoint get`` output files and writes one value file per new shard for
``checkpoint put --value-file``::

    python examples/sharded_counter.py --count 4 --out-dir new/ old-0.json old-1.json old-2.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from memory_service_processor import EventEnvelope, EventProcessor, payload, shard_of

CONTENT_TYPE = "application/vnd.example.sharded-counter+json;v=1"


class ShardedCounter(EventProcessor):
    """Counts entry events per conversation; each conversation remembers its last cursor."""

    CONTENT_TYPE = CONTENT_TYPE

    def __init__(self) -> None:
        #: conversation id -> {"count": int, "last": cursor of the last event applied}
        self.conversations: Dict[str, Dict[str, Any]] = {}

    def load(self, state: Any) -> None:
        self.conversations = {c: dict(v) for c, v in state.get("conversations", {}).items()}

    def handle(self, event: EventEnvelope) -> None:
        if event.kind != "entry":
            return
        conversation = payload.conversation_id(event)
        if conversation is None:
            return
        state = self.conversations.setdefault(conversation, {"count": 0, "last": None})
        if event.cursor is not None and state["last"] is not None and int(event.cursor) <= int(state["last"]):
            return  # applied before a reshard: the new layout replays from the smallest old watermark
        state["count"] += 1
        if event.cursor is not None:
            state["last"] = event.cursor

    def snapshot(self) -> Any:
        return {"conversations": self.conversations}


def _layout(value: Mapping[str, Any]) -> Mapping[str, int]:
    return value.get("shardLayout") or {"index": 0, "count": 1}


def reshard(old: Sequence[Mapping[str, Any]], count: int) -> List[Dict[str, Any]]:
    """The checkpoint values of ``count`` new shards from the values of every old shard.

    Every old shard of one layout must be given (else its conversations would be lost). Each
    conversation goes to ``shard_of(conversation, count)``; every new shard starts after the
    smallest old watermark (``lastEventCursor``) and records its new layout. Raises
    ``ValueError`` when the old values are not one complete layout or a watermark is missing.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    layouts = [_layout(v) for v in old]
    old_count = {int(l["count"]) for l in layouts}
    if len(old_count) != 1 or sorted(int(l["index"]) for l in layouts) != list(range(next(iter(old_count)))):
        raise ValueError(f"give the checkpoint of every shard of one layout; got layouts {layouts}")
    cursors = [c for c in (v.get("lastEventCursor") for v in old) if isinstance(c, str)]
    if len(cursors) != len(old):
        raise ValueError("every old shard must have a watermark (lastEventCursor); let each run once first")
    start = min(cursors, key=int)
    new: List[Dict[str, Any]] = [{"conversations": {}, "lastEventCursor": start} for _ in range(count)]
    for value in old:
        for conversation, state in value.get("conversations", {}).items():
            new[shard_of(conversation, count)]["conversations"][conversation] = dict(state)
    if count > 1:
        for index, value in enumerate(new):
            value["shardLayout"] = {"index": index, "count": count}
    return new


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python examples/sharded_counter.py --count N --out-dir DIR OLD.json...``"""
    parser = argparse.ArgumentParser(description="Reshard ShardedCounter checkpoints.")
    parser.add_argument("--count", type=int, required=True, help="the new shard count")
    parser.add_argument("--out-dir", type=Path, required=True, help="writes shard-<i>.json here")
    parser.add_argument("old", nargs="+", type=Path, help="`checkpoint get` output of every old shard")
    args = parser.parse_args(argv)
    old = [json.loads(p.read_text())["value"] for p in args.old]
    try:
        new = reshard(old, args.count)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for index, value in enumerate(new):
        (args.out_dir / f"shard-{index}.json").write_text(json.dumps(value))
    print(f"{len(new)} checkpoint values in {args.out_dir}, starting after cursor {new[0]['lastEventCursor']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
