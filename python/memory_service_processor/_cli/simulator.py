"""A realistic, deterministic stream of Memory Service events for the demo.

Conversations being created and renamed, members joining, user and assistant turns in the
``history`` channel, agent notes in the ``memory`` channel, recorded responses.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any, Dict, List, Tuple

__all__ = ["ConversationSimulator", "EventTuple"]

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
        self.random = random.Random(seed * 1000 + run)
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
            if self.random.random() < 0.35:
                other = _USERS[self.random.randrange(len(_USERS))]
                if other != self.owners[i]:
                    out.append(("membership", "added", {"conversation_group": group, "user": other, "role": "writer"}))
        return out

    def _entry(self, i: int, role: str, channel: str, text: str) -> EventTuple:
        self._turn += 1
        return ("entry", "appended", {
            "conversation": self.conversations[i],
            "conversation_group": self.groups[i],
            "entry": str(uuid.UUID(int=self.random.getrandbits(128), version=4)),
            "entry_channel": channel,
            "entry_content_type": "history" if channel == "history" else "application/json",
            "entry_role": role,
            "content": [{"type": "text", "text": text}],
            "created_at": _now_iso(),
        })

    def exchange(self) -> List[EventTuple]:
        """One step of activity: usually a user turn and the assistant's answer."""
        i = self.random.choices(range(len(self.conversations)), weights=self.weights)[0]
        title, asks, answers, notes = _TOPICS[self.topics[i]]
        turn = self.random.randrange(len(asks))
        out = [self._entry(i, "USER", "history", asks[turn])]
        recording = self.random.random() < 0.3
        if recording:
            recording_id = str(uuid.UUID(int=self.random.getrandbits(128), version=4))
            out.append(("response", "started", {"conversation": self.conversations[i], "recording": recording_id}))
        out.append(self._entry(i, "AI", "history", answers[turn]))
        if recording:
            out.append(("response", "completed", {"conversation": self.conversations[i], "recording": recording_id}))
        if self.random.random() < 0.12:
            out.append(self._entry(i, "AI", "memory", notes[0]))
        roll = self.random.random()
        if roll < 0.01:
            out.append(("conversation", "updated", {
                "conversation": self.conversations[i], "conversation_group": self.groups[i],
                "title": self.title(i), "updated_at": _now_iso(),
            }))
        elif roll < 0.02:
            out.append(("membership", "added", {
                "conversation_group": self.groups[i], "user": _USERS[self.random.randrange(len(_USERS))], "role": "reader",
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
