"""Events for tests: how they are given (:data:`EventSpec`) and realistic synthetic ones."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any, Iterator, List, Mapping, Optional, Tuple, Union

__all__ = [
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
