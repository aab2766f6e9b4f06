"""One rolling summary per conversation, written by a (slow) model: why ``max_concurrency`` exists.

Shaped like a Memory Service cognition processor: per conversation, new ``history`` entries
wait in a *pending window* until the conversation has been quiet for ``quiet_period`` or the
window holds ``max_batch`` entries; then ``summarize(previous_summary, entries)`` (a model
call, 50 ms to seconds) folds the window into the conversation's summary. Run it with many
conversations in flight at once::

    memory-service-processor run \\
        memory_service_processor.examples.conversation_summarizer:ConversationSummarizer \\
        --endpoint localhost:8082 --client-id summarizer --after-cursor start \\
        --max-concurrency 64 --arg model_delay=50ms --arg max_batch=8

(or ``memory-service-processor demo --processor summarizer``). The shipped model is
:class:`FakeModel`: it sleeps, then returns a deterministic summary; pass your own async
callable as ``summarize=``.

What makes it crash-safe:

* the pending windows live in the checkpoint (``snapshot``/``load``), bounded by
  ``max_batch`` per conversation and ``max_pending`` in all, so a crash loses no entry;
* it follows the state-after-await rule: every handler reads the state, awaits the model,
  and only then changes the state, with no ``await`` in between. An event whose handler has
  not returned has changed nothing, so the runtime can redo it after a crash without applying
  it twice;
* the quiet windows are summarized in ``flush()`` (every ``checkpoint_interval``), which runs
  next to handlers still awaiting the model: each change checks that the conversation's summary
  is still the one the model saw (its generation), else the result is dropped and the work
  redone from the current state.

It reads entries with :mod:`memory_service_processor.payload`, so it works with summary
payloads (no text: the model sees roles and entry ids) and with ``detail="full"`` ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Union

from memory_service_processor import EventEnvelope, EventProcessor, parse_duration, payload

__all__ = ["ConversationSummarizer", "FakeModel", "PendingEntry", "Rolling", "Summarize"]

log = logging.getLogger(__name__)

#: One entry waiting to be summarized: ``{"id": ..., "role": ..., "text": ...}`` (strings;
#: ``text`` is ``""`` for summary payloads, which carry no content).
PendingEntry = Dict[str, str]

#: The model: ``await summarize(previous_summary, entries)`` returns the new summary.
Summarize = Callable[[str, Sequence[PendingEntry]], Awaitable[str]]


def _seconds(value: Union[float, int, str], name: str) -> float:
    """A duration (seconds, or text such as ``"50ms"`` from ``--arg``); ``0`` is allowed."""
    if isinstance(value, str):
        return 0.0 if value.strip() in ("0", "0s") else parse_duration(value, name)
    seconds = float(value)
    if not seconds >= 0:
        raise ValueError(f"{name} must be at least 0 seconds, got {value!r}")
    return seconds


def _count(value: Union[int, str], name: str) -> int:
    """A positive count (an ``int``, or its text from ``--arg``)."""
    number = int(value)
    if number < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}")
    return number


class FakeModel:
    """A deterministic stand-in for a language model: sleeps ``delay`` seconds, then returns
    ``"<n> turns (<u> by users); latest <ROLE>: <text> #<digest>"``.

    The digest chains the previous summary with every entry (id, role, text) in order, so two
    runs give the same summary exactly when they fed the model the same entries in the same
    batches: a lost, repeated or reordered entry shows.
    """

    def __init__(self, delay: float = 0.02, snippet: int = 60) -> None:
        self.delay = delay
        self.snippet = snippet
        #: Calls made (not part of any checkpoint; for tests and the demo).
        self.calls = 0

    async def __call__(self, previous: str, entries: Sequence[PendingEntry]) -> str:
        """The new summary of ``previous`` followed by ``entries``."""
        await asyncio.sleep(self.delay)
        self.calls += 1
        match = re.match(r"(\d+) turns \((\d+) by users\)", previous)
        turns, users = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        digest = hashlib.sha256(previous.encode())
        for entry in entries:
            digest.update(f"\0{entry['id']}\0{entry['role']}\0{entry['text']}".encode())
        turns += len(entries)
        users += sum(1 for entry in entries if entry["role"].upper() == "USER")
        last = entries[-1] if entries else {"role": "", "text": ""}
        text = " ".join(last["text"].split()) or f"(entry {last.get('id', '?')})"
        if len(text) > self.snippet:
            text = text[: self.snippet - 1] + "…"
        return f"{turns} turns ({users} by users); latest {last['role'] or '?'}: {text} #{digest.hexdigest()[:12]}"


class Rolling:
    """One conversation: its summary, how many entries it covers, and the pending window."""

    __slots__ = ("summary", "entries", "calls", "pending", "generation")

    def __init__(self) -> None:
        self.summary = ""
        #: Entries folded into :attr:`summary`.
        self.entries = 0
        #: Model calls that produced it.
        self.calls = 0
        #: Entries not summarized yet, oldest first.
        self.pending: List[PendingEntry] = []
        #: Bumped whenever :attr:`summary` changes (not saved: a loaded state starts again at 0).
        self.generation = 0

    def to_json(self) -> Dict[str, Any]:
        """The checkpoint form."""
        return {"summary": self.summary, "entries": self.entries, "calls": self.calls,
                "pending": [dict(e) for e in self.pending]}

    @classmethod
    def from_json(cls, doc: Any) -> "Rolling":
        """The inverse of :meth:`to_json` (tolerates missing or odd fields)."""
        rolling = cls()
        doc = doc if isinstance(doc, dict) else {}
        rolling.summary = str(doc.get("summary") or "")
        rolling.entries = int(doc.get("entries") or 0)
        rolling.calls = int(doc.get("calls") or 0)
        rolling.pending = [
            {"id": str(e.get("id", "")), "role": str(e.get("role", "")), "text": str(e.get("text", ""))}
            for e in (doc.get("pending") or []) if isinstance(e, dict)
        ]
        return rolling


class ConversationSummarizer(EventProcessor):
    """Keeps one rolling summary per conversation, summarizing entries in debounced batches.

    ``summarize``: the model (default :class:`FakeModel` sleeping ``model_delay``).
    ``quiet_period``: a window is summarized at the first ``flush()`` after its conversation
    has had no new entry for this long (keep ``checkpoint_interval`` at or below it).
    ``max_batch``: a window reaching this many entries is summarized by the handler of its
    last entry. ``max_pending``: entries pending over all conversations; at the limit, every
    new entry is summarized at once with its window. ``max_entry_chars``: text kept per
    pending entry. ``flush_concurrency``: model calls at once in ``flush()``. Values may be
    strings (``--arg max_batch=8 --arg quiet_period=2s``).
    """

    CONTENT_TYPE = "application/vnd.example.conversation-summarizer+json;v=1"

    def __init__(
        self,
        summarize: Optional[Summarize] = None,
        *,
        quiet_period: Union[float, str] = 5.0,
        max_batch: Union[int, str] = 8,
        max_pending: Union[int, str] = 10_000,
        max_entry_chars: Union[int, str] = 1_000,
        model_delay: Union[float, str] = 0.02,
        flush_concurrency: Union[int, str] = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.summarize: Summarize = summarize if summarize is not None else FakeModel(_seconds(model_delay, "model_delay"))
        self.quiet_period = _seconds(quiet_period, "quiet_period")
        self.max_batch = _count(max_batch, "max_batch")
        self.max_pending = _count(max_pending, "max_pending")
        self.max_entry_chars = _count(max_entry_chars, "max_entry_chars")
        self.flush_concurrency = _count(flush_concurrency, "flush_concurrency")
        self.clock = clock
        self.conversations: Dict[str, Rolling] = {}
        #: Entries pending over all conversations (at most ``max_pending``).
        self.pending_total = 0
        #: When each conversation last got a pending entry (``clock()``; not saved).
        self._touched: Dict[str, float] = {}
        self.last_event_cursor = None

    # -- the processor interface ---------------------------------------------------------
    def load(self, state: Any) -> None:
        """Restores summaries and pending windows; a restored window's quiet period starts now."""
        super().load(state)
        state = state if isinstance(state, dict) else {}
        docs = state.get("conversations") or {}
        self.conversations = {str(cid): Rolling.from_json(doc) for cid, doc in docs.items()}
        self.pending_total = sum(len(c.pending) for c in self.conversations.values())
        now = self.clock()
        self._touched = {cid: now for cid, c in self.conversations.items() if c.pending}

    async def handle(self, event: EventEnvelope) -> None:
        """Adds a ``history`` entry to its conversation's window (summarizing the window when
        it is full); forgets a deleted conversation."""
        if event.kind == "entry":
            conversation = payload.conversation_id(event)
            if conversation is not None and (payload.channel(event) or "history").lower() == "history":
                await self._add(conversation, self._pending_entry(event))
        elif event.kind == "conversation" and event.event == "deleted":
            conversation = payload.conversation_id(event)
            if conversation is not None:
                self._forget(conversation)
        super().handle(event)  # no await after this point: the event's state change is whole

    def snapshot(self) -> Dict[str, Any]:
        """Every summary and every pending window, plus the resume position."""
        return {
            "conversations": {cid: c.to_json() for cid, c in self.conversations.items()},
            "lastEventCursor": self.last_event_cursor,
        }

    async def flush(self) -> None:
        """Summarizes the windows of conversations quiet for ``quiet_period`` (at most
        ``flush_concurrency`` model calls at once)."""
        now = self.clock()
        quiet = [
            cid for cid, c in self.conversations.items()
            if c.pending and now - self._touched.get(cid, now) >= self.quiet_period
        ]
        if not quiet:
            return
        gate = asyncio.Semaphore(self.flush_concurrency)

        async def one(cid: str) -> None:
            async with gate:
                await self._summarize_quiet(cid)

        await asyncio.gather(*(one(cid) for cid in quiet))
        log.debug("summarized %d quiet conversations", len(quiet))

    # -- queries -------------------------------------------------------------------------
    def summary(self, conversation: str) -> str:
        """The conversation's current summary (``""`` before the first model call)."""
        c = self.conversations.get(conversation)
        return c.summary if c is not None else ""

    def largest(self, n: int = 5) -> List[str]:
        """The ``n`` conversations with the most entries (summarized and pending)."""
        ranked = sorted(self.conversations.items(), key=lambda kv: (-(kv[1].entries + len(kv[1].pending)), kv[0]))
        return [cid for cid, _ in ranked[:n]]

    # -- the work ------------------------------------------------------------------------
    def _pending_entry(self, event: EventEnvelope) -> PendingEntry:
        text = payload.text(event) or ""
        return {
            "id": payload.entry_id(event) or str(event.cursor or ""),
            "role": payload.role(event) or "",
            "text": text[: self.max_entry_chars],
        }

    async def _add(self, cid: str, entry: PendingEntry) -> None:
        while True:
            known = self.conversations.get(cid)
            rolling = known if known is not None else Rolling()
            generation, seen = rolling.generation, len(rolling.pending)
            window = rolling.pending + [entry]
            if len(window) < self.max_batch and self.pending_total < self.max_pending:
                # Nothing to await: take the entry into the window now.
                self.conversations[cid] = rolling
                rolling.pending = window
                self.pending_total += 1
                self._touched[cid] = self.clock()
                return
            summary = await self.summarize(rolling.summary, window)
            # After the last await: apply only if nobody changed the summary meanwhile.
            current = self.conversations.get(cid)
            if current is None and known is None:
                current = self.conversations[cid] = rolling  # the first entry of a conversation
            if current is rolling and rolling.generation == generation:
                self._apply(cid, rolling, summary, covered=seen, extra=1)
                return
            # A flush summarized part of the window meanwhile (or the conversation was
            # deleted): redo from the current state.

    async def _summarize_quiet(self, cid: str) -> None:
        rolling = self.conversations.get(cid)
        if rolling is None or not rolling.pending:
            return
        generation, window = rolling.generation, list(rolling.pending)
        summary = await self.summarize(rolling.summary, window)
        current = self.conversations.get(cid)
        if current is rolling and current.generation == generation:
            self._apply(cid, current, summary, covered=len(window), extra=0)
        # else: a handler summarized this conversation meanwhile; the next flush looks again.

    def _apply(self, cid: str, rolling: Rolling, summary: str, *, covered: int, extra: int) -> None:
        """The model's ``summary`` now covers the first ``covered`` pending entries and
        ``extra`` new ones (state changes only: called with no await after it)."""
        rolling.summary = summary
        rolling.entries += covered + extra
        rolling.calls += 1
        rolling.generation += 1
        rolling.pending = rolling.pending[covered:]
        self.pending_total -= covered
        if not rolling.pending:
            self._touched.pop(cid, None)

    def _forget(self, cid: str) -> None:
        rolling = self.conversations.pop(cid, None)
        if rolling is not None:
            self.pending_total -= len(rolling.pending)
            rolling.generation += 1  # a model call in flight for it is dropped
        self._touched.pop(cid, None)
