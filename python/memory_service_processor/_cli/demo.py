"""``demo``: an example processor end to end, with no setup.

It starts an embedded :class:`~memory_service_processor.testing.LocalMemoryService`, publishes
a realistic stream (:class:`~.simulator.ConversationSimulator`), then runs a shipped example
against it: first the replay of everything published, then a live trickle, then a summary. The
example is ``memory_service_processor.examples.turn_counter`` (a table of the busiest
conversations), or with ``--processor summarizer``
``memory_service_processor.examples.conversation_summarizer`` (a rolling summary per
conversation from a fake model that sleeps, with ``--max-concurrency`` model calls at once when
the runtime supports it). With the same ``--data-dir``, a second run resumes from the checkpoint
the first one left.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import os
import sys
import tempfile
import time
from typing import Any, Deque, Dict, List, Mapping, Optional, TextIO, Tuple

from .._config import Config
from .._logging import configure_logging
from .._runtime import Runtime
from ..examples.conversation_summarizer import ConversationSummarizer, FakeModel
from ..examples.turn_counter import TurnCounter
from ..testing.server import LocalMemoryService
from .errors import EXIT_OK
from .options import add_options, duration_argument, int_at_least, resolve_options
from .signals import GracefulSignals
from .simulator import ConversationSimulator
from .telemetry import start_telemetry

__all__ = ["Progress", "add_parser", "cmd_demo", "run_demo"]

#: The demo's processors: ``--processor`` value -> (how the demo names it, default client id).
_PROCESSORS = {
    "turn-counter": ("turn_counter.py:TurnCounter", "demo-turn-counter"),
    "summarizer": ("conversation_summarizer.py:ConversationSummarizer", "demo-summarizer"),
}

#: The runtime has keyed concurrency (``Config.max_concurrency``).
_CONCURRENT = "max_concurrency" in {f.name for f in dataclasses.fields(Config)}


def add_parser(commands: Any) -> None:
    """Adds ``demo`` to the parser's subcommands."""
    demo = commands.add_parser(
        "demo",
        help="run an example processor end to end against an embedded Memory Service",
        description="Start an embedded LocalMemoryService, publish a realistic stream of "
        "conversations, then run examples/turn_counter.py (or, with --processor summarizer, "
        "examples/conversation_summarizer.py) against it: replay, then a live trickle, then a "
        "summary. Run again with the same --data-dir to resume.",
    )
    demo.add_argument("--processor", choices=tuple(_PROCESSORS), default="turn-counter",
                      help="turn-counter (turn counts per conversation, the default) or summarizer "
                      "(a rolling summary per conversation from a slow fake model)")
    demo.add_argument("--data-dir", metavar="DIR", help="keep the service's outbox and checkpoints here "
                      "(default: a temporary directory, removed at exit)")
    demo.add_argument("--events", type=int_at_least("--events", 1), default=10_000, metavar="N",
                      help="events to publish before the processor starts (default 10000)")
    demo.add_argument("--duration", type=duration_argument("--duration"), default=10.0, metavar="DURATION",
                      help="how long the processor runs, replay and live trickle together (default 10s)")
    demo.add_argument("--live-rate", type=int_at_least("--live-rate", 0), default=40, metavar="N",
                      help="events per second published during the live phase (default 40)")
    demo.add_argument("--client-id", default=None, metavar="ID",
                      help="the demo processor's client id (default demo-turn-counter or demo-summarizer)")
    demo.add_argument("--max-concurrency", type=int_at_least("--max-concurrency", 1), default=64, metavar="N",
                      help="summarizer: events handled at once, one per conversation at a time (default 64; "
                      "1 on a runtime without keyed concurrency)")
    demo.add_argument("--model-delay", type=duration_argument("--model-delay"), default=0.05, metavar="DURATION",
                      help="summarizer: how long each fake model call takes (default 50ms)")
    demo.add_argument("--top", type=int_at_least("--top", 1), default=5, metavar="N",
                      help="busiest conversations to list (default 5)")
    demo.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                      help="progress display: auto (a bar on a terminal, lines otherwise), bar, lines, none")
    add_options(demo, ("cli",))


class Progress:
    """A live progress display: a ``\\r``-updated bar on a terminal, periodic lines elsewhere."""

    def __init__(self, out: TextIO, mode: str, backlog: Optional[int]) -> None:
        if mode == "auto":
            mode = "bar" if getattr(out, "isatty", lambda: False)() else "lines"
        self.out = out
        self.mode = mode
        self.backlog = backlog
        self.interval = 0.1 if mode == "bar" else 1.0
        self._samples: Deque[Tuple[float, int]] = collections.deque()
        self._last_line = 0.0
        self._width = 0

    def rate(self, now: float, handled: int) -> float:
        """Events per second over about the last second."""
        self._samples.append((now, handled))
        while len(self._samples) > 2 and now - self._samples[0][0] > 1.0:
            self._samples.popleft()
        t0, h0 = self._samples[0]
        return (handled - h0) / (now - t0) if now > t0 else 0.0

    def update(self, stats: Mapping[str, Any], remaining: float) -> None:
        """Shows the current state (rate-limited to the display's interval)."""
        now = time.monotonic()
        handled = int(stats.get("events_handled", 0))
        rate = self.rate(now, handled)
        phase = str(stats.get("phase", "connecting"))
        checkpoints = int(stats.get("checkpoints_written", 0))
        if self.mode == "bar":
            if now - self._last_line < self.interval:
                return
            self._last_line = now
            if phase == "replay" and self.backlog:
                done = min(handled, self.backlog)
                width = 24
                fill = int(width * done / self.backlog)
                bar = "█" * fill + "░" * (width - fill)
                text = f"  replay {bar} {done:>7,}/{self.backlog:,} events  {rate:>9,.0f} ev/s  checkpoints {checkpoints:,}"
            else:
                text = (f"  {phase:<7} {handled:>7,} events  {rate:>9,.0f} ev/s  checkpoints {checkpoints:,}"
                        f"  ({remaining:.0f}s left, Ctrl-C stops)")
            pad = max(0, self._width - len(text))
            self._width = len(text)
            self.out.write("\r" + text + " " * pad)
            self.out.flush()
        elif self.mode == "lines":
            if now - self._last_line < self.interval:
                return
            self._last_line = now
            total = f"/{self.backlog}" if phase == "replay" and self.backlog else ""
            self.out.write(
                f"progress: phase={phase} handled={handled}{total} rate={rate:.0f}/s checkpoints={checkpoints}\n"
            )
            self.out.flush()

    def close(self) -> None:
        """Ends the bar's line."""
        if self.mode == "bar" and self._width:
            self.out.write("\n")
            self.out.flush()


#: How often the demo looks at the runtime's stats (the display refreshes less often).
_TICK = 0.05

# -- the demo -----------------------------------------------------------------------------------


def _decimal(cursor: Optional[str]) -> Optional[int]:
    # LocalMemoryService's cursors are decimal; only the demo relies on that, for its bar.
    try:
        return int(cursor) if cursor is not None else 0
    except ValueError:
        return None


def run_demo(
    *,
    data_dir: Optional[str] = None,
    events: int = 10_000,
    duration: float = 10.0,
    live_rate: int = 40,
    client_id: Optional[str] = None,
    top: int = 5,
    progress: str = "auto",
    out: Optional[TextIO] = None,
    metrics_port: Optional[int] = None,
    metrics_addr: str = "0.0.0.0",
    health_port: Optional[int] = None,
    liveness_timeout: Optional[float] = None,
    processor: str = "turn-counter",
    max_concurrency: int = 64,
    model_delay: float = 0.05,
) -> Dict[str, Any]:
    """Runs the demo; returns a summary dict (``handled``, ``resumed_from``, ``checkpoint``,
    ``busiest`` for the turn counter, ``summaries`` for the summarizer, ...). ``processor``:
    ``"turn-counter"`` or ``"summarizer"`` (which runs ``max_concurrency`` events at once when
    the runtime supports it, its fake model taking ``model_delay`` seconds a call). ``out``
    receives the display (default ``sys.stdout``)."""
    if processor not in _PROCESSORS:
        raise ValueError(f"processor must be one of {', '.join(_PROCESSORS)}, not {processor!r}")
    client_id = client_id or _PROCESSORS[processor][1]
    out = out or sys.stdout
    temporary_dir = None
    if data_dir is None:
        temporary_dir = tempfile.TemporaryDirectory(prefix="msp-demo-")
        directory = temporary_dir.name
    else:
        directory = os.path.abspath(data_dir)
        os.makedirs(directory, exist_ok=True)
    try:
        server = LocalMemoryService(data_dir=directory)
        endpoint = server.start_sync()
        try:
            return _demo_with_server(
                server, endpoint, directory, temporary_dir is not None, out,
                events=events, duration=duration, live_rate=live_rate, client_id=client_id, top=top,
                progress=progress, metrics_port=metrics_port, metrics_addr=metrics_addr,
                health_port=health_port, liveness_timeout=liveness_timeout,
                which=processor, max_concurrency=max_concurrency, model_delay=model_delay,
            )
        finally:
            server.stop_sync()
    finally:
        if temporary_dir is not None:
            temporary_dir.cleanup()


def _demo_with_server(
    server: LocalMemoryService,
    endpoint: str,
    directory: str,
    temporary: bool,
    out: TextIO,
    *,
    events: int,
    duration: float,
    live_rate: int,
    client_id: str,
    top: int,
    progress: str,
    metrics_port: Optional[int],
    metrics_addr: str,
    health_port: Optional[int],
    liveness_timeout: Optional[float],
    which: str = "turn-counter",
    max_concurrency: int = 64,
    model_delay: float = 0.05,
) -> Dict[str, Any]:
    summarizer = which == "summarizer"
    processor_name = _PROCESSORS[which][0]

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    say("memory-service-processor demo")
    where = "a temporary directory" if temporary else directory
    say(f"  embedded Memory Service on {endpoint} (data in {where})")
    _, next_cursor = server.outbox_range
    # The activity goes through the scenario API: the server emits what a real Memory Service
    # emits (the processor asks for full payloads). Each run opens its own conversations (the
    # entities do not survive a restart; the outbox does).
    simulator = ConversationSimulator(server, run=next_cursor)
    publish_started = time.monotonic()
    cursors: List[str] = [c for c in simulator.emit(events) if c is not None]  # exactly --events
    what = "conversations, members, turns, agent notes and responses"
    say(f"  published {len(cursors):,} events ({what}) in {time.monotonic() - publish_started:.2f}s"
        + (f", cursors {cursors[0]}..{cursors[-1]}" if cursors else ""))

    existing = server.checkpoint(client_id)
    resumed_from: Optional[str] = None
    start_position = 0
    if existing is not None and isinstance(existing.value, dict) and existing.value.get("lastEventCursor"):
        resumed_from = str(existing.value["lastEventCursor"])
        conversations = existing.value.get("conversations") or {}
        if summarizer:
            pending = sum(len(c.get("pending") or ()) for c in conversations.values() if isinstance(c, dict))
            what_is_saved = f"{len(conversations)} conversations summarized, {pending:,} entries pending"
        else:
            what_is_saved = (f"{existing.value.get('eventsSeen', 0):,} events already counted "
                             f"over {len(conversations)} conversations")
        say(f"  resuming {client_id} from its checkpoint at cursor {resumed_from} ({what_is_saved})")
        start_position = _decimal(resumed_from) or 0
    else:
        say(f"  no checkpoint for {client_id} yet: processing from the start of the stream")
    last = _decimal(cursors[-1]) if cursors else _decimal(str(next_cursor - 1))
    backlog = (last - start_position) if last is not None and _decimal(resumed_from) is not None else None
    say(f"  processor: {processor_name} (client id {client_id}); "
        f"then a live trickle of {live_rate} events/s, {duration:g}s in all")
    options: Dict[str, Any] = {"client_id": client_id, "after_cursor": "start", "checkpoint_interval": 1.0}
    processor: Any
    if summarizer:
        concurrency = max_concurrency if _CONCURRENT else 1
        if _CONCURRENT:
            options["max_concurrency"] = concurrency
        model = FakeModel(delay=model_delay)
        processor = ConversationSummarizer(model, quiet_period=2.0, max_batch=8)
        say(f"  fake model calls take {model_delay * 1000:g} ms; {concurrency} event(s) handled at once"
            + ("" if _CONCURRENT else " (this runtime has no max_concurrency)"))
    else:
        options["entry_channels"] = ("history", "context")
        processor = TurnCounter()
    say()
    config = Config(**options)
    runtime = Runtime(processor, config, endpoint=endpoint)
    metrics = start_telemetry({
        "metrics_port": metrics_port, "metrics_addr": metrics_addr,
        "health_port": health_port, "liveness_timeout": liveness_timeout,
    }, runtime)
    display = Progress(out, progress, backlog)
    started = time.monotonic()
    replay_seconds: Optional[float] = None
    interrupted: List[str] = []

    async def main() -> None:
        nonlocal replay_seconds
        loop = asyncio.get_running_loop()
        stop_event = asyncio.Event()

        def on_signal() -> None:
            interrupted.append("signal")
            stop_event.set()

        with GracefulSignals(loop, on_signal):
            task = asyncio.ensure_future(runtime.run())
            live_since: Optional[float] = None
            budget = 0.0
            last_tick = time.monotonic()
            try:
                while not task.done() and not stop_event.is_set():
                    now = time.monotonic()
                    elapsed = now - started
                    if elapsed >= duration:
                        break
                    stats = runtime.stats()
                    if stats.get("phase") == "live":
                        if live_since is None:
                            live_since = now
                            replay_seconds = now - started
                        # The live trickle: a few realistic events every tick.
                        budget += live_rate * (now - last_tick)
                        n = int(budget)
                        if n:
                            budget -= n
                            simulator.emit(n)
                    last_tick = now
                    display.update(stats, duration - elapsed)
                    try:
                        await asyncio.wait_for(asyncio.shield(task), timeout=_TICK)
                    except asyncio.TimeoutError:
                        pass
            finally:
                runtime.stop()
                await task  # the final flush and checkpoint; re-raises a processor failure

    try:
        asyncio.run(main())
    finally:
        display.close()
        metrics.close()

    stats = runtime.stats()
    run_seconds = time.monotonic() - started
    saved = server.checkpoint(client_id)
    saved_cursor = saved.value.get("lastEventCursor") if saved is not None and isinstance(saved.value, dict) else None
    handled = int(stats.get("events_handled", 0))
    say()
    if interrupted:
        say("Stopped by signal: final flush and checkpoint written.")
    say(f"Summary ({client_id})")
    replay_rate = ""
    if replay_seconds and backlog:
        replay_rate = f"; replay {backlog / max(replay_seconds, 1e-9):,.0f} events/s"
    rows = [
        ("this run", f"{handled:,} events handled in {run_seconds:.1f}s{replay_rate}"),
        ("checkpoints", f"{int(stats.get('checkpoints_written', 0)):,} written; the last one is at cursor {saved_cursor}"),
        ("resumed", f"from cursor {resumed_from}" if resumed_from else "no (first run)"),
    ]
    if summarizer:
        rows.append(("all runs", _summarizer_totals(processor, model)))
    else:
        rows.append(("all runs", f"{len(processor.conversations)} conversations, {processor.total_turns:,} turns "
                                 f"({sum(s.user_turns for s in processor.conversations.values()):,} by users, "
                                 f"{sum(s.assistant_turns for s in processor.conversations.values()):,} by the assistant), "
                                 f"{sum(s.notes for s in processor.conversations.values()):,} agent notes"))
    for label, text in rows:
        say(f"  {label:<12} {text}")
    say()
    result: Dict[str, Any] = {
        "handled": handled,
        "resumed_from": resumed_from,
        "checkpoint": saved_cursor,
        "last_cursor": stats.get("last_cursor"),
        "checkpoints_written": int(stats.get("checkpoints_written", 0)),
        "interrupted": bool(interrupted),
    }
    if summarizer:
        result["summaries"] = _print_summaries(say, processor, top)
    else:
        result["busiest"] = _print_busiest(say, processor, top)
    say()
    if temporary:
        say("Pass --data-dir DIR to keep the service's data: a second run then resumes from this checkpoint.")
    else:
        say(f"Run it again with --data-dir {directory}: it resumes from cursor {saved_cursor}.")
    return result


def _summarizer_totals(processor: ConversationSummarizer, model: FakeModel) -> str:
    """The summarizer's "all runs" line."""
    conversations = processor.conversations.values()
    summarized = sum(c.entries for c in conversations)
    return (f"{len(processor.conversations)} conversations, {summarized:,} entries summarized in "
            f"{sum(c.calls for c in conversations):,} model calls ({model.calls:,} this run), "
            f"{processor.pending_total:,} pending")


def _print_summaries(say: Any, processor: ConversationSummarizer, top: int) -> List[Tuple[str, int, str]]:
    """The largest conversations and their summaries; returns ``(conversation, entries, summary)``."""
    say("Largest conversations and their rolling summaries")
    shown = []
    for rank, cid in enumerate(processor.largest(top), 1):
        c = processor.conversations[cid]
        say(f"  {rank:>2}  {cid[:8]}…  {c.entries:,} entries summarized, {len(c.pending)} pending")
        say(f"      {c.summary or '(no summary yet)'}")
        shown.append((cid, c.entries, c.summary))
    return shown


def _print_busiest(say: Any, processor: TurnCounter, top: int) -> List[Tuple[str, str, int]]:
    """The turn counter's table of the busiest conversations; returns ``(conversation, title, turns)``."""
    busiest = processor.busiest(top)
    say("Busiest conversations")
    header = (f"  {'#':>2}  {'conversation':<12} {'title':<44} {'turns':>6} {'user':>6} {'assistant':>9} "
              f"{'notes':>6} {'members':>7}")
    say(header)
    say("  " + "-" * (len(header) - 2))
    for rank, summary in enumerate(busiest, 1):
        title = summary.title or summary.conversation[:8]
        if len(title) > 44:
            title = title[:43] + "…"
        say(f"  {rank:>2}  {summary.conversation[:8] + '…':<12} {title:<44} {summary.turns:>6,} {summary.user_turns:>6,} {summary.assistant_turns:>9,} "
            f"{summary.notes:>6,} {processor.member_count(summary):>7}")
    return [(c.conversation, c.title, c.turns) for c in busiest]


def cmd_demo(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> int:
    """``demo``: parse-level values to :func:`run_demo`."""
    env = os.environ if environ is None else environ
    values = resolve_options(args, env, names=(
        "log_level", "log_format", "metrics_port", "metrics_addr", "health_port", "liveness_timeout"))
    level_given = args.log_level is not None or bool(env.get("MEMORY_SERVICE_PROCESS_LOG_LEVEL", "").strip())
    # Keep the display clean: only warnings unless a level was asked for.
    configure_logging(values["log_level"] if level_given else "warning", values["log_format"])
    run_demo(
        data_dir=args.data_dir,
        events=args.events,
        duration=args.duration,
        live_rate=args.live_rate,
        client_id=args.client_id,
        top=args.top,
        progress=args.progress,
        metrics_port=values.get("metrics_port"),
        metrics_addr=values.get("metrics_addr") or "0.0.0.0",
        health_port=values.get("health_port"),
        liveness_timeout=values.get("liveness_timeout"),
        processor=args.processor,
        max_concurrency=args.max_concurrency,
        model_delay=args.model_delay,
    )
    return EXIT_OK
