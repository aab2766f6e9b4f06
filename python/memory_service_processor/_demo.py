"""``memory-service-processor demo``: an example processor end to end, with no setup.

It starts an embedded :class:`~memory_service_processor.testing.LocalMemoryService`, publishes
a realistic stream (conversations being created and renamed, members joining, user and
assistant turns in the ``history`` channel, agent notes in the ``memory`` channel, recorded
responses), then runs ``examples/turn_counter.py`` against it: first the replay of everything
published, then a live trickle, then a summary table of the busiest conversations. With the
same ``--data-dir``, a second run resumes from the checkpoint the first one left.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Deque, Dict, List, Mapping, Optional, TextIO, Tuple

from ._cli import (
    EXIT_OK,
    GracefulSignals,
    UsageError,
    _start_metrics,
    load_processor,
    resolve_options,
)
from ._config import Config

__all__ = ["ConversationSimulator", "find_example", "cmd_demo", "run_demo"]

EventTuple = Tuple[str, str, Dict[str, Any]]

# -- the synthetic conversations --------------------------------------------------------------

# (title, user lines, assistant lines, agent notes)
_TOPICS: Tuple[Tuple[str, Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]], ...] = (
    (
        "Planning a week in Lisbon",
        ("Which neighbourhood should we stay in for a first visit?", "Is a day trip to Sintra worth it?",
         "Where can we get good pastéis de nata near Belém?"),
        ("Alfama and Baixa are walkable and central; Príncipe Real is quieter in the evening.",
         "Yes: take the early train from Rossio and start at Pena Palace before the crowds.",
         "Pastéis de Belém is the classic; Manteigaria in Chiado is a close second."),
        ("User travels with two children; prefers walkable areas.",),
    ),
    (
        "Q3 budget review",
        ("Summarize where we are over budget this quarter.", "What if we delay the hiring plan by a month?",
         "Draft a note to finance explaining the cloud overspend."),
        ("Cloud spend is 18% over plan, travel 6% under; everything else is within 2%.",
         "Delaying two hires by a month saves about 40k and brings the quarter back on plan.",
         "Here is a draft: the overspend comes from the load tests in July, which have ended..."),
        ("Finance contact is Dana; fiscal quarter ends September 30.",),
    ),
    (
        "Onboarding flow redesign",
        ("What did we decide about the onboarding flow?", "Can you list the open questions from the workshop?",
         "Which step has the highest drop-off?"),
        ("We keep the three-step flow but move the billing step to the end.",
         "Three are open: SSO on day one, the default workspace name, and the trial length.",
         "The workspace invitation step: 31% of new accounts leave there."),
        ("Team agreed to ship the beta on Friday.",),
    ),
    (
        "Learning Rust lifetimes",
        ("Why does the borrow checker reject this function?", "What does 'a mean in this signature?",
         "How do I return a reference from a struct method?"),
        ("The returned reference may outlive the vector it points into; return an owned String.",
         "It names how long the borrowed input must live; the output borrows from that input.",
         "Tie the output lifetime to &self: fn name(&self) -> &str works without annotations."),
        ("User knows Python and Go; explain with Go comparisons.",),
    ),
    (
        "Weekly meal plan",
        ("Plan five vegetarian dinners under 30 minutes.", "Make Wednesday gluten-free.",
         "Turn the plan into a shopping list."),
        ("Monday chickpea curry, Tuesday pesto gnocchi, Wednesday halloumi tacos...",
         "Swap the tacos for corn tortillas and the gnocchi night stays as is.",
         "Produce: spinach, 2 lemons, cherry tomatoes; pantry: chickpeas, coconut milk..."),
        ("Household of three; one person avoids gluten.",),
    ),
    (
        "Incident postmortem: checkout latency",
        ("Write the timeline of yesterday's incident.", "What was the root cause?",
         "Which follow-up actions should we prioritise?"),
        ("14:02 latency alerts, 14:09 rollback started, 14:21 p99 back under 300 ms.",
         "A new index was missing on the orders table after the migration.",
         "Add the migration check to CI first; the dashboard work can wait a sprint."),
        ("Blameless format; the audience is the whole engineering org.",),
    ),
    (
        "Job interview preparation",
        ("Ask me a system design question.", "How would you rate my answer?",
         "What should I say about my biggest weakness?"),
        ("Design a URL shortener that handles 10k writes per second.",
         "Solid on storage; mention cache invalidation and how you would shard the counter.",
         "Pick a real one you are working on, and say what you changed because of it."),
        ("Interview is on Thursday with a fintech company.",),
    ),
    (
        "Garden layout for spring",
        ("Which vegetables grow well in partial shade?", "How far apart should I plant tomatoes?",
         "Can basil go next to the tomatoes?"),
        ("Lettuce, spinach, chard and peas cope well with four hours of sun.",
         "About 60 cm between plants and 90 cm between rows.",
         "Yes, they are classic companions and like the same watering."),
        ("Garden faces north-east; raised beds.",),
    ),
    (
        "Customer churn analysis",
        ("Which segment churns the most?", "Is churn correlated with support tickets?",
         "Prepare three slides for the board."),
        ("Monthly self-serve plans under 5 seats: 7.4% a month.",
         "Yes, accounts with more than 3 tickets in their first month churn twice as often.",
         "Slide 1: churn by segment; slide 2: early support as a signal; slide 3: next steps."),
        ("Board meeting on the 14th; keep slides text-light.",),
    ),
    (
        "Writing a wedding toast",
        ("Help me start a toast for my sister's wedding.", "Make it funnier but still warm.",
         "Can you shorten it to two minutes?"),
        ("Good evening everyone, I'm Sam, the bride's little brother and her first fan...",
         "Added the story of the camping trip and the runaway tent.",
         "Trimmed to about 280 words, which reads in just under two minutes."),
        ("Sister is Maya; the couple met at a climbing gym.",),
    ),
    (
        "Kubernetes migration plan",
        ("Which services should move first?", "How do we handle the stateful ones?",
         "Estimate the timeline."),
        ("Start with the stateless API gateways; they have the best test coverage.",
         "Keep Postgres managed outside the cluster; move Redis last with a dual-write period.",
         "About ten weeks: two for the platform, six for services, two buffer."),
        ("Current platform: VMs with Ansible; team of four SREs.",),
    ),
    (
        "Marathon training",
        ("Build a 16-week plan for a 3:45 marathon.", "I missed two runs this week, what now?",
         "What should I eat the night before?"),
        ("Four runs a week building from 40 to 70 km, with a long run on Sundays...",
         "Skip them; do not squeeze extra runs in. Keep Sunday's long run as planned.",
         "A familiar, carb-rich dinner such as rice or pasta, and not too late."),
        ("Runner has a mild knee issue; avoid back-to-back hard days.",),
    ),
)

_USERS = (
    "alice@example.com", "bob@example.com", "carol@example.com", "dan@example.com", "erin@example.com",
    "farid@example.com", "grace@example.com", "hiro@example.com", "ines@example.com", "jonas@example.com",
)


class ConversationSimulator:
    """Generates a realistic, deterministic stream of Memory Service events.

    ``conversations`` conversations with stable ids (the same in every run), whose activity
    follows a skewed distribution: a few are busy, most are quiet. ``run`` varies the activity
    between runs. Events are ``(kind, event, data)`` tuples for
    :meth:`LocalMemoryService.publish_many`.
    """

    def __init__(self, conversations: int = 120, seed: int = 2024, run: int = 0) -> None:
        ids = random.Random(seed)
        self.conversations = [str(uuid.UUID(int=ids.getrandbits(128), version=4)) for _ in range(conversations)]
        self.groups = [str(uuid.UUID(int=ids.getrandbits(128), version=4)) for _ in range(conversations)]
        self.topics = [i % len(_TOPICS) for i in range(conversations)]
        order = list(range(conversations))
        ids.shuffle(order)
        # Zipf-like weights: conversation order[0] is the busiest.
        self.weights = [0.0] * conversations
        for rank, i in enumerate(order):
            self.weights[i] = 1.0 / (rank + 1) ** 0.9
        self.owners = [_USERS[ids.randrange(len(_USERS))] for _ in range(conversations)]
        self.rnd = random.Random(seed * 1000 + run)
        self._turn = 0

    def title(self, i: int) -> str:
        """The title of conversation ``i``."""
        base = _TOPICS[self.topics[i]][0]
        owner = self.owners[i].split("@")[0].capitalize()
        return f"{base} ({owner})"

    def opening(self) -> List[EventTuple]:
        """Creation of every conversation, with its owner and sometimes a second member."""
        out: List[EventTuple] = []
        for i, conversation in enumerate(self.conversations):
            group = self.groups[i]
            out.append(("conversation", "created", {
                "conversation": conversation, "conversation_group": group, "title": self.title(i),
                "owner": self.owners[i], "created_at": _now_iso(),
            }))
            out.append(("membership", "added", {"conversation_group": group, "user": self.owners[i], "role": "owner"}))
            if self.rnd.random() < 0.35:
                other = _USERS[self.rnd.randrange(len(_USERS))]
                if other != self.owners[i]:
                    out.append(("membership", "added", {"conversation_group": group, "user": other, "role": "writer"}))
        return out

    def _entry(self, i: int, role: str, channel: str, text: str) -> EventTuple:
        self._turn += 1
        return ("entry", "appended", {
            "conversation": self.conversations[i],
            "conversation_group": self.groups[i],
            "entry": str(uuid.UUID(int=self.rnd.getrandbits(128), version=4)),
            "entry_channel": channel,
            "entry_content_type": "history" if channel == "history" else "application/json",
            "entry_role": role,
            "content": [{"type": "text", "text": text}],
            "created_at": _now_iso(),
        })

    def exchange(self) -> List[EventTuple]:
        """One step of activity: usually a user turn and the assistant's answer."""
        i = self.rnd.choices(range(len(self.conversations)), weights=self.weights)[0]
        title, asks, answers, notes = _TOPICS[self.topics[i]]
        k = self.rnd.randrange(len(asks))
        out = [self._entry(i, "USER", "history", asks[k])]
        recording = self.rnd.random() < 0.3
        if recording:
            rec = str(uuid.UUID(int=self.rnd.getrandbits(128), version=4))
            out.append(("response", "started", {"conversation": self.conversations[i], "recording": rec}))
        out.append(self._entry(i, "AI", "history", answers[k]))
        if recording:
            out.append(("response", "completed", {"conversation": self.conversations[i], "recording": rec}))
        if self.rnd.random() < 0.12:
            out.append(self._entry(i, "AI", "memory", notes[0]))
        r = self.rnd.random()
        if r < 0.01:
            out.append(("conversation", "updated", {
                "conversation": self.conversations[i], "conversation_group": self.groups[i],
                "title": self.title(i), "updated_at": _now_iso(),
            }))
        elif r < 0.02:
            out.append(("membership", "added", {
                "conversation_group": self.groups[i], "user": _USERS[self.rnd.randrange(len(_USERS))], "role": "reader",
            }))
        return out

    def events(self, count: int) -> List[EventTuple]:
        """Exactly ``count`` events of activity."""
        out: List[EventTuple] = []
        while len(out) < count:
            out.extend(self.exchange())
        return out[:count]


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- finding the example ------------------------------------------------------------------------


def find_example(name: str = "turn_counter.py") -> Path:
    """The path of ``examples/<name>``.

    Looked up in ``$MEMORY_SERVICE_PROCESSOR_EXAMPLES``, beside the package
    (``memory_service_processor/examples``), in the source tree the package was built from,
    and in ``./examples``. Raises :class:`UsageError` if it is nowhere.
    """
    candidates: List[Path] = []
    env = os.environ.get("MEMORY_SERVICE_PROCESSOR_EXAMPLES")
    if env:
        candidates.append(Path(env))
    here = Path(__file__).resolve().parent
    candidates.append(here / "examples")
    candidates.extend(p / "examples" for p in list(here.parents)[:3])
    candidates.append(Path.cwd() / "examples")
    for directory in candidates:
        if (directory / name).is_file():
            return directory / name
    raise UsageError(
        f"cannot find examples/{name}: run the demo from a checkout of memory-service-processor or "
        "set MEMORY_SERVICE_PROCESSOR_EXAMPLES to its examples directory"
    )


# -- progress display ---------------------------------------------------------------------------


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
    client_id: str = "demo-turn-counter",
    top: int = 5,
    progress: str = "auto",
    out: Optional[TextIO] = None,
    metrics_port: Optional[int] = None,
    metrics_addr: str = "0.0.0.0",
) -> Dict[str, Any]:
    """Runs the demo; returns a summary dict (``handled``, ``resumed_from``, ``checkpoint``,
    ``busiest``, ...). ``out`` receives the display (default ``sys.stdout``)."""
    from .testing import LocalMemoryService

    out = out or sys.stdout
    example = find_example("turn_counter.py")
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="msp-demo-")
        directory = tmp.name
    else:
        directory = os.path.abspath(data_dir)
        os.makedirs(directory, exist_ok=True)
    try:
        server = LocalMemoryService(data_dir=directory)
        endpoint = server.start_sync()
        try:
            return _demo_with_server(
                server, endpoint, directory, tmp is not None, example, out,
                events=events, duration=duration, live_rate=live_rate, client_id=client_id, top=top,
                progress=progress, metrics_port=metrics_port, metrics_addr=metrics_addr,
            )
        finally:
            server.stop_sync()
    finally:
        if tmp is not None:
            tmp.cleanup()


def _demo_with_server(
    server: Any,
    endpoint: str,
    directory: str,
    temporary: bool,
    example: Path,
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
) -> Dict[str, Any]:
    from ._runtime import Runtime

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    say("memory-service-processor demo")
    where = "a temporary directory" if temporary else directory
    say(f"  embedded Memory Service on {endpoint} (data in {where})")
    first, next_cursor = server.outbox_range
    fresh = next_cursor == first
    sim = ConversationSimulator(run=next_cursor)
    batch: List[EventTuple] = sim.opening() if fresh else []
    batch.extend(sim.events(max(0, events - len(batch))))
    del batch[events:]  # exactly --events (a tiny first run may not even create every conversation)
    t0 = time.monotonic()
    cursors: List[str] = []
    for i in range(0, len(batch), 5000):
        cursors.extend(server.publish_many(batch[i : i + 5000]))
    what = "conversations, members, turns, agent notes and responses"
    say(f"  published {len(cursors):,} events ({what}) in {time.monotonic() - t0:.2f}s"
        + (f", cursors {cursors[0]}..{cursors[-1]}" if cursors else ""))

    existing = server.checkpoint(client_id)
    resumed_from: Optional[str] = None
    start_position = 0
    if existing is not None and isinstance(existing.value, dict) and existing.value.get("lastEventCursor"):
        resumed_from = str(existing.value["lastEventCursor"])
        convs = existing.value.get("conversations") or {}
        counted = existing.value.get("eventsSeen", 0)
        say(f"  resuming {client_id} from its checkpoint at cursor {resumed_from} "
            f"({counted:,} events already counted over {len(convs)} conversations)")
        start_position = _decimal(resumed_from) or 0
    else:
        say(f"  no checkpoint for {client_id} yet: processing from the start of the stream")
    last = _decimal(cursors[-1]) if cursors else _decimal(str(next_cursor - 1))
    backlog = (last - start_position) if last is not None and _decimal(resumed_from) is not None else None
    say(f"  processor: {example.name}:TurnCounter (client id {client_id}); "
        f"then a live trickle of {live_rate} events/s, {duration:g}s in all")
    say()

    processor = load_processor(f"{example}:TurnCounter")
    config = Config(
        client_id=client_id,
        after_cursor="start",
        entry_channels=("history", "memory"),
        checkpoint_interval=1.0,
    )
    runtime = Runtime(processor, config, endpoint=endpoint)
    metrics = _start_metrics({"metrics_port": metrics_port, "metrics_addr": metrics_addr}, runtime)
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
                            server.publish_many(sim.events(n))
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
        if metrics is not None:
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
        ("all runs", f"{len(processor.conversations)} conversations, {processor.total_turns:,} turns "
                     f"({sum(s.user_turns for s in processor.conversations.values()):,} by users, "
                     f"{sum(s.assistant_turns for s in processor.conversations.values()):,} by the assistant), "
                     f"{sum(s.notes for s in processor.conversations.values()):,} agent notes"),
    ]
    for label, text in rows:
        say(f"  {label:<12} {text}")
    say()
    busiest = processor.busiest(top)
    say("Busiest conversations")
    header = (f"  {'#':>2}  {'conversation':<12} {'title':<44} {'turns':>6} {'user':>6} {'assistant':>9} "
              f"{'notes':>6} {'members':>7}")
    say(header)
    say("  " + "-" * (len(header) - 2))
    for rank, s in enumerate(busiest, 1):
        title = s.title or s.conversation[:8]
        if len(title) > 44:
            title = title[:43] + "…"
        say(f"  {rank:>2}  {s.conversation[:8] + '…':<12} {title:<44} {s.turns:>6,} {s.user_turns:>6,} {s.assistant_turns:>9,} "
            f"{s.notes:>6,} {processor.member_count(s):>7}")
    say()
    if temporary:
        say("Pass --data-dir DIR to keep the service's data: a second run then resumes from this checkpoint.")
    else:
        say(f"Run it again with --data-dir {directory}: it resumes from cursor {saved_cursor}.")
    return {
        "handled": handled,
        "resumed_from": resumed_from,
        "checkpoint": saved_cursor,
        "last_cursor": stats.get("last_cursor"),
        "checkpoints_written": int(stats.get("checkpoints_written", 0)),
        "busiest": [(s.conversation, s.title, s.turns) for s in busiest],
        "interrupted": bool(interrupted),
    }


def cmd_demo(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> int:
    """``demo``: parse-level values to :func:`run_demo`."""
    from ._logging import configure_logging

    env = os.environ if environ is None else environ
    values = resolve_options(args, env, dests=("log_level", "log_format", "metrics_port", "metrics_addr"))
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
    )
    return EXIT_OK
