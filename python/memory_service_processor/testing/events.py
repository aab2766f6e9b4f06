"""Events for tests: how they are given (:data:`EventSpec`), and realistic Memory Service
activity (:class:`Activity`) built on the scenario API of
:class:`~memory_service_processor.testing.LocalMemoryService`.

:class:`Activity` is the one generator of realistic activity (the demo uses it too):
conversations created by their owners, members joining, changing role and leaving, USER and
AI turns in the ``history`` channel, agent notes in the ``context`` channel, recorded
responses that complete or fail, renames, archives and unarchives. The server emits what a
real Memory Service emits for each step, so a processor sees real payloads in both detail
modes. :func:`synthetic_entries` is the fast path for benchmarks: raw ``entry/created``
full payloads for :meth:`~LocalMemoryService.publish_many`.
"""

from __future__ import annotations

import collections
import json
import random
import uuid
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, NamedTuple, Optional, Protocol, Set, Tuple, Union

__all__ = [
    "Activity",
    "Emitted",
    "ScenarioServer",
    "EventSpec",
    "conversation_ids",
    "encode_payload",
    "entry_event",
    "event_tuple",
    "synthetic_entries",
]

#: An event to publish: ``(kind, event, data)``, or a mapping with those keys (``data`` optional).
EventSpec = Union[Tuple[str, str, Any], Mapping[str, Any]]


def event_tuple(spec: EventSpec) -> Tuple[str, str, Any]:
    """``(kind, event, data)`` of an :data:`EventSpec` (``data`` ``None`` when a mapping has none)."""
    if isinstance(spec, Mapping):
        return spec["kind"], spec["event"], spec.get("data")
    kind, event, data = spec
    return kind, event, data


def encode_payload(data: Any) -> bytes:
    """An event's payload: ``bytes`` as they are, ``str`` as UTF-8, anything else as compact JSON."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def conversation_ids(n: int, seed: int = 7) -> List[str]:
    """``n`` stable conversation ids."""
    rnd = random.Random(seed)
    return [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(n)]


def entry_event(
    conversation: str,
    group: str,
    n: int,
    role: str = "USER",
    channel: str = "history",
    rnd: Optional[random.Random] = None,
) -> Tuple[str, str, dict]:
    """One ``entry``/``created`` event with the full payload a Memory Service sends to a
    ``detail="full"`` subscriber (about 400 bytes of JSON), as ``(kind, event, data)``."""
    r = rnd or random
    topic = _TOPICS[n % len(_TOPICS)]
    lines = topic[1] if role == "USER" else topic[2]
    return (
        "entry",
        "created",
        {
            "id": str(uuid.UUID(int=(n << 64) | r.getrandbits(64), version=4)),
            "conversationId": conversation,
            "userId": "alice@example.com",
            "channel": channel,
            "epoch": 1,
            "seq": n + 1,
            "contentType": "history",
            "content": [{"role": role, "text": lines[n % len(lines)]}],
            "createdAt": "2026-11-28T12:00:00.000Z",
            "conversationGroupId": group,
        },
    )


def synthetic_entries(count: int, conversations: int = 50, chunk: int = 10_000, seed: int = 11) -> Iterator[List[Tuple[str, str, dict]]]:
    """``count`` raw ``entry/created`` events (full payloads) over ``conversations``
    conversations, in chunks (USER and AI turns alternate). For benchmarks, which publish them
    in bulk with :meth:`~LocalMemoryService.publish_many`; :class:`Activity` is the realistic
    generator."""
    rnd = random.Random(seed)
    convs = conversation_ids(conversations, seed)
    groups = conversation_ids(conversations, seed + 1)
    out: List[Tuple[str, str, dict]] = []
    for i in range(count):
        c = rnd.randrange(conversations)
        out.append(entry_event(convs[c], groups[c], i, "USER" if i % 2 == 0 else "AI", rnd=rnd))
        if len(out) >= chunk:
            yield out
            out = []
    if out:
        yield out


# -- realistic activity on the scenario API ---------------------------------------------------

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


class ScenarioServer(Protocol):
    """What :class:`Activity` drives: the scenario API of
    :class:`~memory_service_processor.testing.LocalMemoryService`."""

    def create_conversation(self, owner: str, title: str = ..., agent_id: Optional[str] = ..., metadata: Optional[Mapping[str, Any]] = ...) -> str: ...
    def update_conversation(self, conversation_id: str, title: Optional[str] = ..., metadata: Optional[Mapping[str, Any]] = ...) -> str: ...
    def append_entry(self, conversation_id: str, content: Any, *, channel: str = ..., content_type: str = ..., user_id: Optional[str] = ..., client_id: Optional[str] = ..., agent_id: Optional[str] = ...) -> str: ...
    def archive_conversation(self, conversation_id: str) -> str: ...
    def unarchive_conversation(self, conversation_id: str) -> str: ...
    def add_member(self, conversation_id: str, user: str, role: str) -> str: ...
    def update_member(self, conversation_id: str, user: str, role: str) -> str: ...
    def remove_member(self, conversation_id: str, user: str) -> str: ...
    def start_response(self, conversation_id: str) -> str: ...
    def finish_response(self, conversation_id: str, status: str = ...) -> str: ...
    @property
    def last_cursor(self) -> Optional[str]: ...


class Emitted(NamedTuple):
    """One event :class:`Activity` made the server emit, with what a test counts on."""

    cursor: Optional[str]
    kind: str
    event: str
    #: the conversation the operation was on (for memberships: whose group changed)
    conversation: Optional[str]
    #: entries: ``history`` or ``context``
    channel: Optional[str] = None
    #: entries: the first content item's role (``USER`` or ``AI``)
    role: Optional[str] = None
    #: memberships: the user
    user: Optional[str] = None
    #: responses: ``started``, ``completed`` or ``failed``; archives: ``archived`` or
    #: ``unarchived``
    status: Optional[str] = None


class Activity:
    """Realistic, reproducible Memory Service activity on a server's scenario API.

    ``conversations`` conversations (created first, each by its owner, some shared with a
    second member) whose activity follows a skewed distribution: a few are busy, most are
    quiet. Each step is one operation and one event. ``seed`` fixes the choices (the server
    picks the ids); ``run`` varies them between runs over the same seed.

    >>> with LocalMemoryService() as server:
    ...     activity = Activity(server, conversations=5)
    ...     cursors = activity.emit(200)       # exactly 200 events
    ...     history = activity.count(kind="entry", channel="history")
    """

    AGENT = "assistant"
    CLIENT = "demo-agent"

    def __init__(self, server: ScenarioServer, conversations: int = 12, seed: int = 2024, run: int = 0) -> None:
        if conversations < 1:
            raise ValueError("conversations must be at least 1")
        self.server = server
        ids = random.Random(seed)
        self.topics = [i % len(_TOPICS) for i in range(conversations)]
        order = list(range(conversations))
        ids.shuffle(order)
        # Zipf-like weights: conversation order[0] is the busiest.
        self.weights = [0.0] * conversations
        for rank, i in enumerate(order):
            self.weights[i] = 1.0 / (rank + 1) ** 0.9
        self.owners = [_USERS[ids.randrange(len(_USERS))] for _ in range(conversations)]
        self.random = random.Random(seed * 1000 + run)
        #: conversation ids, by index (filled as the conversations are created)
        self.conversations: List[Optional[str]] = [None] * conversations
        #: every event emitted so far, oldest first
        self.emitted: List[Emitted] = []
        self._members: List[Dict[str, str]] = [{self.owners[i]: "owner"} for i in range(conversations)]
        self._archived: Set[int] = set()
        self._pending: Deque[Callable[[], Emitted]] = collections.deque()
        for i in range(conversations):
            self._plan_opening(i)

    def title(self, i: int) -> str:
        """The title of conversation ``i``."""
        owner = self.owners[i].split("@")[0].capitalize()
        return f"{_TOPICS[self.topics[i]][0]} ({owner})"

    # -- running --------------------------------------------------------------------------
    def emit(self, count: int) -> List[Optional[str]]:
        """Makes the server emit exactly ``count`` more events; returns their cursors."""
        out: List[Optional[str]] = []
        while len(out) < count:
            if not self._pending:
                self._plan_exchange()
            done = self._pending.popleft()()
            self.emitted.append(done)
            out.append(done.cursor)
        return out

    def count(self, kind: Optional[str] = None, **fields: Any) -> int:
        """How many emitted events have this ``kind`` and these :class:`Emitted` fields."""
        return sum(
            1
            for e in self.emitted
            if (kind is None or e.kind == kind) and all(getattr(e, k) == v for k, v in fields.items())
        )

    # -- planning (choices are made when planned, executed in order) ------------------------
    def _op(self, kind: str, event: str, i: int, call: Callable[[str], Any], **fields: Optional[str]) -> None:
        def run() -> Emitted:
            call(self.conversations[i] or "")
            return Emitted(self.server.last_cursor, kind, event, self.conversations[i], **fields)

        self._pending.append(run)

    def _plan_opening(self, i: int) -> None:
        def create(_: str) -> None:
            self.conversations[i] = self.server.create_conversation(
                owner=self.owners[i], title=self.title(i), agent_id=self.AGENT,
                metadata={"topic": _TOPICS[self.topics[i]][0]},
            )

        self._op("conversation", "created", i, create)
        if self.random.random() < 0.35:
            other = _USERS[self.random.randrange(len(_USERS))]
            if other not in self._members[i]:
                self._members[i][other] = "writer"
                self._op("membership", "created", i, lambda c: self.server.add_member(c, other, "writer"), user=other)

    def _entry(self, i: int, role: str, text: str, channel: str = "history", user: Optional[str] = None) -> None:
        def call(c: str) -> None:
            self.server.append_entry(
                c, [{"role": role, "text": text}], channel=channel,
                content_type="history" if channel == "history" else "LC4J",
                user_id=user or self.owners[i],
                client_id=None if role == "USER" else self.CLIENT,
                agent_id=None if role == "USER" else self.AGENT,
            )

        self._op("entry", "created", i, call, channel=channel, role=role)

    def _plan_exchange(self) -> None:
        rnd = self.random
        n = len(self.conversations)
        if self._archived and rnd.random() < 0.2:
            j = sorted(self._archived)[rnd.randrange(len(self._archived))]
            self._archived.discard(j)
            self._op("conversation", "updated", j, self.server.unarchive_conversation, status="unarchived")
            return
        live = [k for k in range(n) if k not in self._archived]
        i = rnd.choices(live, weights=[self.weights[k] for k in live])[0]
        _, asks, answers, notes = _TOPICS[self.topics[i]]
        turn = rnd.randrange(len(asks))
        writers = [u for u, r in self._members[i].items() if r in ("owner", "writer", "manager")]
        self._entry(i, "USER", asks[turn], user=writers[rnd.randrange(len(writers))])
        if rnd.random() < 0.3:
            status = "failed" if rnd.random() < 0.1 else "completed"
            self._op("response", "created", i, self.server.start_response, status="started")
            self._entry(i, "AI", answers[turn])
            self._op("response", "deleted", i, lambda c: self.server.finish_response(c, status), status=status)
        else:
            self._entry(i, "AI", answers[turn])
        if rnd.random() < 0.12:
            self._entry(i, "AI", notes[0], channel="context")
        roll = rnd.random()
        if roll < 0.01:
            title = f"{self.title(i)}, continued"
            self._op("conversation", "updated", i, lambda c: self.server.update_conversation(c, title=title))
        elif roll < 0.02:
            self._plan_membership(i)
        elif roll < 0.025 and len(self._archived) < n // 4:
            self._archived.add(i)
            self._op("conversation", "updated", i, self.server.archive_conversation, status="archived")

    def _plan_membership(self, i: int) -> None:
        rnd = self.random
        members = self._members[i]
        guests = [u for u, r in members.items() if r != "owner"]
        if guests and rnd.random() < 0.5:
            user = guests[rnd.randrange(len(guests))]
            if rnd.random() < 0.5:
                del members[user]
                self._op("membership", "deleted", i, lambda c: self.server.remove_member(c, user), user=user)
            else:
                role = "reader" if members[user] != "reader" else "writer"
                members[user] = role
                self._op("membership", "updated", i, lambda c: self.server.update_member(c, user, role), user=user)
            return
        user = _USERS[rnd.randrange(len(_USERS))]
        if user not in members:
            members[user] = "reader"
            self._op("membership", "created", i, lambda c: self.server.add_member(c, user, "reader"), user=user)
