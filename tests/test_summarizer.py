"""examples/conversation_summarizer.py against a real LocalMemoryService, through the testing kit.

Both payload shapes (summary and ``detail="full"`` entries), the rolling summaries, the bounded
pending windows, the quiet-period flush, and restarts in the middle (a graceful stop, and a run
ended by a failing model call) that end in exactly the state of one clean run: the summaries
chain a digest of every entry in order, so a lost, repeated or reordered entry would show.

The runs use ``max_concurrency`` when ``Config`` has it (the runtime's keyed concurrency,
docs/semantics.md), and run one event at a time otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from conftest import cfg, run, wait_until
from memory_service_processor import Config, EventEnvelope
from memory_service_processor._cli.demo import run_demo
from memory_service_processor._cli.loader import load_processor
from memory_service_processor.examples.conversation_summarizer import (
    ConversationSummarizer,
    FakeModel,
    PendingEntry,
)
from memory_service_processor.testing import LocalMemoryService, ProcessorRun, run_until_handled

REPO = Path(__file__).resolve().parents[1]

#: The runtime runs several conversations at once (Config.max_concurrency exists).
CONCURRENT = "max_concurrency" in {f.name for f in dataclasses.fields(Config)}

EventTuple = Tuple[str, str, Dict[str, Any]]

#: Long enough that only max_batch (never the quiet period) closes a window during a test.
NEVER = 3600.0


def config(client_id: str, concurrency: int = 16, **kw: Any) -> Config:
    """A test config replaying from the start, concurrent when the runtime supports it."""
    if CONCURRENT:
        kw.setdefault("max_concurrency", concurrency)
    return cfg(client_id, after_cursor="start", **kw)


def summary_entry(conversation: str, n: int, role: str) -> EventTuple:
    """An entry as a summary payload: ids and the role, no content."""
    return ("entry", "created", {
        "conversation": conversation, "conversation_group": f"g-{conversation}", "entry": f"{conversation}-e{n}",
        "entry_channel": "history", "entry_content_type": "history", "entry_role": role,
    })


def full_entry(conversation: str, n: int, role: str, channel: str = "history") -> EventTuple:
    """An entry as a ``detail="full"`` payload: the stored entry, camelCase, with its text."""
    return ("entry", "created", {
        "id": f"{conversation}-e{n}", "conversationId": conversation, "userId": "alice", "channel": channel,
        "epoch": 1, "seq": n, "contentType": "history", "content": [{"role": role, "text": f"message {n} of {conversation}"}],
        "createdAt": "2026-05-19T12:00:00.123Z", "conversationGroupId": f"g-{conversation}",
    })


def stream(shape: str, conversations: int, per_conversation: int) -> List[EventTuple]:
    """Entries interleaved over ``conversations`` conversations, roles alternating."""
    make = summary_entry if shape == "summary" else full_entry
    out = []
    for n in range(per_conversation):
        for c in range(conversations):
            out.append(make(f"c{c}", n, "USER" if n % 2 == 0 else "AI"))
    return out


def as_pending(spec: EventTuple) -> PendingEntry:
    """What the summarizer keeps of a published entry (read the same way, with the payload helpers)."""
    _, event, data = spec
    envelope = EventEnvelope(event, "entry", json.dumps(data).encode(), "1")
    return ConversationSummarizer()._pending_entry(envelope)


def expected(published: Sequence[EventTuple], max_batch: int) -> Dict[str, Dict[str, Any]]:
    """The checkpoint form of every conversation after one clean run in which only
    ``max_batch`` closes windows: a summary per full batch, the rest pending."""
    by_conversation: Dict[str, List[PendingEntry]] = {}
    for spec in published:
        data = spec[2]
        cid = data.get("conversation") or data.get("conversationId")
        by_conversation.setdefault(cid, []).append(as_pending(spec))
    model = FakeModel(delay=0)
    out = {}
    for cid, items in by_conversation.items():
        summary, calls, done = "", 0, 0
        while len(items) - done >= max_batch:
            summary = run(model(summary, items[done:done + max_batch]))
            calls += 1
            done += max_batch
        out[cid] = {"summary": summary, "entries": done, "calls": calls, "pending": items[done:]}
    return out


# -- both payload shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["summary", "full"])
def test_summaries_on_both_payload_shapes(server: LocalMemoryService, shape: str) -> None:
    published = stream(shape, conversations=5, per_conversation=11)
    cursors = server.publish_many(published)
    processor = ConversationSummarizer(quiet_period=NEVER, max_batch=4, model_delay=0.002)
    result = run(run_until_handled(processor, server, config(f"sum-{shape}")))

    state = result.checkpoint.value
    assert state["lastEventCursor"] == cursors[-1]
    assert state["conversations"] == expected(published, 4)
    for cid, doc in state["conversations"].items():
        # 11 entries: two batches of 4 summarized, 3 pending in the checkpoint.
        assert (doc["entries"], doc["calls"], len(doc["pending"])) == (8, 2, 3), cid
        assert doc["summary"].startswith("8 turns (4 by users); latest AI: ")
        if shape == "full":
            assert doc["summary"].split(": ", 1)[1].startswith(f"message 7 of {cid} #")
            assert doc["pending"][0] == {"id": f"{cid}-e8", "role": "USER", "text": f"message 8 of {cid}"}
        else:  # summary payloads carry no text: the model sees the entry's id
            assert f"(entry {cid}-e7)" in doc["summary"]
            assert doc["pending"][0] == {"id": f"{cid}-e8", "role": "USER", "text": ""}
    assert processor.summary("c0") == state["conversations"]["c0"]["summary"]
    assert processor.pending_total == 15


def test_other_channels_and_kinds_are_left_out(server: LocalMemoryService) -> None:
    server.publish_many([
        ("conversation", "created", {"conversation": "c0", "conversation_group": "g"}),
        full_entry("c0", 0, "USER"),
        full_entry("c0", 1, "AI", channel="context"),  # no entry_channel key: the server lets it through
        ("response", "created", {"conversation": "c0", "conversation_group": "g", "recording": "c0", "status": "started"}),
        ("membership", "created", {"conversation_group": "g", "user": "bob", "role": "reader"}),
        summary_entry("c0", 2, "AI"),
    ])
    processor = ConversationSummarizer(quiet_period=NEVER, max_batch=2, model_delay=0)
    result = run(run_until_handled(processor, server, config("sum-kinds")))
    doc = result.checkpoint.value["conversations"]["c0"]
    assert doc["entries"] == 2 and doc["pending"] == []
    assert doc["summary"].startswith("2 turns (1 by users); latest AI: (entry c0-e2)")


def test_a_deleted_conversation_is_forgotten(server: LocalMemoryService) -> None:
    server.publish_many([summary_entry("c0", 0, "USER"), summary_entry("c1", 0, "USER")])
    server.publish("conversation", "deleted", {"conversation": "c0", "conversation_group": "g", "members": ["a"]})
    processor = ConversationSummarizer(quiet_period=NEVER, max_batch=4, model_delay=0)
    result = run(run_until_handled(processor, server, config("sum-deleted")))
    assert set(result.checkpoint.value["conversations"]) == {"c1"}
    assert processor.pending_total == 1


# -- bounded pending windows -------------------------------------------------------------------


class Bounded(ConversationSummarizer):
    """Records the pending counts of every checkpoint taken."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.seen: List[Tuple[int, int]] = []  # (entries pending in all, largest window)

    def snapshot(self) -> Dict[str, Any]:
        value = super().snapshot()
        windows = [len(doc["pending"]) for doc in value["conversations"].values()]
        self.seen.append((sum(windows), max(windows, default=0)))
        return value


def test_pending_windows_stay_bounded(server: LocalMemoryService) -> None:
    published = stream("full", conversations=40, per_conversation=7)
    server.publish_many(published)
    processor = Bounded(quiet_period=NEVER, max_batch=5, max_pending=30, model_delay=0.002)
    result = run(run_until_handled(processor, server, config("sum-bounded", checkpoint_every=1)))

    assert processor.seen, "no checkpoint was taken"
    assert all(total <= 30 and largest <= 4 for total, largest in processor.seen), processor.seen
    docs = result.checkpoint.value["conversations"]
    assert sum(len(doc["pending"]) for doc in docs.values()) == processor.pending_total <= 30
    # Nothing lost: every entry is summarized or pending, in order.
    for c in range(40):
        doc = docs[f"c{c}"]
        assert doc["entries"] + len(doc["pending"]) == 7
        assert [e["id"] for e in doc["pending"]] == [f"c{c}-e{n}" for n in range(doc["entries"], 7)]
        assert doc["summary"].startswith(f"{doc['entries']} turns") or doc["entries"] == 0


def test_quiet_conversations_are_summarized_at_flush(server: LocalMemoryService) -> None:
    published = stream("full", conversations=3, per_conversation=3)
    server.publish_many(published)
    model = FakeModel(delay=0.001)
    now = [1000.0]
    processor = ConversationSummarizer(model, quiet_period=60, max_batch=8, clock=lambda: now[0])

    async def scenario() -> Dict[str, Any]:
        async with ProcessorRun(processor, server, config("sum-quiet", checkpoint_interval=0.05)) as running:
            await running.until_handled()
            assert processor.pending_total == 9
            assert model.calls == 0  # not quiet yet: flushes leave the windows alone
            now[0] += 61
            await wait_until(lambda: processor.pending_total == 0, "the quiet windows summarized")
            assert model.calls == 3
        return running.result.checkpoint.value

    state = run(scenario())
    for c in range(3):
        doc = state["conversations"][f"c{c}"]
        assert (doc["entries"], doc["calls"], doc["pending"]) == (3, 1, [])
        assert doc["summary"].startswith(f"3 turns (2 by users); latest USER: message 2 of c{c} #")


def test_flush_and_handlers_racing_on_one_conversation_lose_nothing() -> None:
    """A flush summarizes a quiet window while a handler of the same conversation awaits the
    model: the later of the two sees the summary changed and redoes its work from the new state."""

    async def scenario() -> ConversationSummarizer:
        gate = asyncio.Event()
        fake = FakeModel(delay=0)

        async def model(previous: str, entries: Sequence[PendingEntry]) -> str:
            if len(entries) == 3:  # the handler's window: held until the flush is done
                await gate.wait()
            return await fake(previous, entries)

        processor = ConversationSummarizer(model, quiet_period=0, max_batch=3)
        for n in range(2):
            await processor.handle(_envelope(full_entry("c0", n, "USER"), n + 1))
        handler = asyncio.ensure_future(processor.handle(_envelope(full_entry("c0", 2, "AI"), 3)))
        await asyncio.sleep(0)
        await processor.flush()  # summarizes e0, e1 while the handler waits on [e0, e1, e2]
        assert processor.conversations["c0"].entries == 2
        gate.set()
        await handler  # its result is stale: it starts again from the new state, e2 alone
        doc = processor.snapshot()["conversations"]["c0"]
        assert (doc["entries"], doc["calls"], [e["id"] for e in doc["pending"]]) == (2, 1, ["c0-e2"])
        await processor.flush()
        return processor

    processor = run(scenario())
    doc = processor.snapshot()["conversations"]["c0"]
    assert (doc["entries"], doc["calls"], doc["pending"]) == (3, 2, [])
    assert doc["summary"].startswith("3 turns (2 by users); latest AI: message 2 of c0 #")
    assert processor.pending_total == 0 and processor.last_event_cursor == "3"


def _envelope(spec: EventTuple, cursor: int) -> EventEnvelope:
    kind, event, data = spec
    return EventEnvelope(event, kind, json.dumps(data).encode(), str(cursor))


# -- restarts --------------------------------------------------------------------------------


def clean_run(server: LocalMemoryService, published: Sequence[EventTuple], max_batch: int) -> Dict[str, Any]:
    processor = ConversationSummarizer(quiet_period=NEVER, max_batch=max_batch, model_delay=0.001)
    result = run(run_until_handled(processor, server, config("sum-clean")))
    assert result.checkpoint.value["conversations"] == expected(published, max_batch)
    return result.checkpoint.value


def test_restart_from_a_checkpoint_in_the_middle_loses_nothing(server: LocalMemoryService) -> None:
    published = stream("full", conversations=20, per_conversation=9)
    # The first run sees only the first half (and a bit): it stops there whatever its speed,
    # with windows open; the rest is published before the clean run and the restart.
    half = len(published) // 2 + 4
    cursors = server.publish_many(published[:half])
    middle = cursors[-1]
    first = ConversationSummarizer(quiet_period=NEVER, max_batch=4, model_delay=0.002)
    result = run(run_until_handled(first, server, config("sum-restart"), until_cursor=middle))
    state = result.checkpoint.value
    assert int(state["lastEventCursor"]) >= int(middle)
    assert sum(len(doc["pending"]) for doc in state["conversations"].values()) > 0  # windows were open

    server.publish_many(published[half:])
    clean = clean_run(server, published, 4)

    second = ConversationSummarizer(quiet_period=NEVER, max_batch=4, model_delay=0.002)
    final = run(run_until_handled(second, server, config("sum-restart")))
    assert final.checkpoint.value == clean


class FailingModel(FakeModel):
    """A model whose ``fail_on``-th call raises (a provider outage ending the run)."""

    def __init__(self, fail_on: int) -> None:
        super().__init__(delay=0.002)
        self.fail_on = fail_on
        self.started = 0

    async def __call__(self, previous: str, entries: Sequence[PendingEntry]) -> str:
        self.started += 1
        if self.started == self.fail_on:
            await asyncio.sleep(0.001)
            raise RuntimeError("model unavailable")
        return await super().__call__(previous, entries)


def test_a_run_ended_by_a_model_failure_resumes_to_the_clean_state(server: LocalMemoryService) -> None:
    published = stream("summary", conversations=12, per_conversation=9)
    cursors = server.publish_many(published)
    clean = clean_run(server, published, 3)

    failing = ConversationSummarizer(FailingModel(fail_on=15), quiet_period=NEVER, max_batch=3)
    with pytest.raises(RuntimeError, match="model unavailable"):
        run(run_until_handled(failing, server, config("sum-failure")))
    stored = server.checkpoint("sum-failure")
    assert stored is None or int(stored.value["lastEventCursor"]) < int(cursors[-1])

    second = ConversationSummarizer(quiet_period=NEVER, max_batch=3, model_delay=0.001)
    final = run(run_until_handled(second, server, config("sum-failure")))
    assert final.checkpoint.value == clean


# -- loading -----------------------------------------------------------------------------------


def test_the_cli_loader_builds_it_from_text_arguments() -> None:
    processor = load_processor(
        "memory_service_processor.examples.conversation_summarizer:ConversationSummarizer",
        {"max_batch": "3", "quiet_period": "2s", "model_delay": "5ms", "max_pending": "100"},
    )
    assert isinstance(processor, ConversationSummarizer)
    assert (processor.max_batch, processor.quiet_period, processor.max_pending) == (3, 2.0, 100)
    assert isinstance(processor.summarize, FakeModel) and processor.summarize.delay == pytest.approx(0.005)
    with pytest.raises(ValueError, match="max_batch"):
        ConversationSummarizer(max_batch=0)


def test_load_tolerates_an_empty_or_odd_state() -> None:
    processor = ConversationSummarizer()
    processor.load({})
    assert processor.conversations == {} and processor.pending_total == 0
    processor.load({"conversations": {"c": {"summary": "s", "entries": 2, "pending": [{"id": "e"}, "junk"]}},
                    "lastEventCursor": "9"})
    assert processor.pending_total == 1 and processor.last_event_cursor == "9"
    assert processor.snapshot()["conversations"]["c"] == {
        "summary": "s", "entries": 2, "calls": 0, "pending": [{"id": "e", "role": "", "text": ""}],
    }


# -- the command line and the demo -------------------------------------------------------------


def test_it_runs_under_the_cli_with_max_concurrency(server: LocalMemoryService) -> None:
    """``memory-service-processor run memory_service_processor.examples.conversation_summarizer:
    ConversationSummarizer --max-concurrency 64`` (without the flag on a runtime that lacks it)."""
    published = stream("full", conversations=10, per_conversation=6)
    cursors = server.publish_many(published)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_SERVICE_")}
    args = [
        sys.executable, "-m", "memory_service_processor", "run",
        "memory_service_processor.examples.conversation_summarizer:ConversationSummarizer",
        "--endpoint", server.endpoint, "--client-id", "sum-cli", "--after-cursor", "start",
        "--checkpoint-interval", "100ms", "--arg", "max_batch=4", "--arg", "quiet_period=1h",
        "--arg", "model_delay=2ms",
    ]
    if CONCURRENT:
        args += ["--max-concurrency", "64"]
    proc = subprocess.Popen(args, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:

        def done() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the processor exited early ({proc.returncode}): {proc.communicate()[1]}")
            cp = server.checkpoint("sum-cli")
            return cp is not None and cp.value.get("lastEventCursor") == cursors[-1]

        run(wait_until(done, "the checkpoint of the last event"))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert server.checkpoint("sum-cli").value["conversations"] == expected(published, 4)


def test_the_demo_runs_the_summarizer_and_resumes(tmp_path: Path) -> None:
    first_out, second_out = io.StringIO(), io.StringIO()
    options: Dict[str, Any] = dict(data_dir=str(tmp_path / "demo"), events=600, duration=1.5, live_rate=20,
                                   progress="none", processor="summarizer", model_delay=0.005, top=3)
    first = run_demo(out=first_out, **options)
    text = first_out.getvalue()
    assert "conversation_summarizer.py:ConversationSummarizer (client id demo-summarizer)" in text
    assert "no checkpoint for demo-summarizer yet" in text
    assert "Largest conversations and their rolling summaries" in text
    assert first["handled"] > 0 and first["checkpoint"] is not None
    assert first["summaries"] and any(summary for _, _, summary in first["summaries"])

    second = run_demo(out=second_out, **options)
    assert f"resuming demo-summarizer from its checkpoint at cursor {first['checkpoint']}" in second_out.getvalue()
    assert second["resumed_from"] == first["checkpoint"]
