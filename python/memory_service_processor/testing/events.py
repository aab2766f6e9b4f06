"""Realistic synthetic Memory Service events (entries, conversations, memberships)."""

from __future__ import annotations

import random
import uuid
from typing import Iterator, List, Optional, Tuple

__all__ = ["entry_event", "synthetic_entries", "conversation_ids"]


def conversation_ids(n: int, seed: int = 7) -> List[str]:
    """``n`` stable conversation ids."""
    rnd = random.Random(seed)
    return [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(n)]


_TEXTS = [
    "Can you summarize the last meeting notes for me?",
    "Sure. The team agreed to ship the beta on Friday and revisit pricing next week.",
    "What did we decide about the onboarding flow?",
    "We keep the three-step flow but move the billing step to the end.",
]


def entry_event(
    conversation: str,
    group: str,
    n: int,
    role: str = "USER",
    channel: str = "history",
    rnd: Optional[random.Random] = None,
) -> Tuple[str, str, dict]:
    """One ``entry``/``appended`` event of about 300 bytes of JSON, as ``(kind, event, data)``."""
    r = rnd or random
    return (
        "entry",
        "appended",
        {
            "conversation": conversation,
            "conversation_group": group,
            "entry": f"{n:012d}-0000-4000-8000-{r.getrandbits(48):012x}",
            "entry_channel": channel,
            "entry_content_type": "history",
            "entry_role": role,
            "content": [{"type": "text", "text": _TEXTS[n % len(_TEXTS)]}],
            "created_at": "2026-11-28T12:00:00Z",
        },
    )


def synthetic_entries(count: int, conversations: int = 50, chunk: int = 10_000, seed: int = 11) -> Iterator[List[Tuple[str, str, dict]]]:
    """``count`` entry events over ``conversations`` conversations, in chunks."""
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
