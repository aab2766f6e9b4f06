"""``memory_service_processor.payload`` on hand-written payloads of both shapes, every kind."""

from __future__ import annotations

import doctest
import json
from typing import Any, Dict, Optional

import pytest

from memory_service_processor import EventEnvelope, payload

C = "7b1d0c3e-0000-4000-8000-000000000001"
G = "2a960c3e-0000-4000-8000-000000000002"
E = "6a900c3e-0000-4000-8000-000000000003"

# What a real Memory Service sends, per kind and detail mode (written by hand, not produced
# by this project's code).
SUMMARY_ENTRY: payload.EntrySummary = {
    "conversation": C,
    "conversation_group": G,
    "entry": E,
    "entry_channel": "history",
    "entry_content_type": "history",
    "entry_role": "USER",
}
FULL_ENTRY: payload.EntryFull = {
    "id": E,
    "conversationId": C,
    "userId": "alice",
    "clientId": "agent-a",
    "agentId": "a1",
    "channel": "history",
    "epoch": 1,
    "seq": 3,
    "contentType": "history",
    "content": [{"role": "USER", "text": "Hello"}, {"role": "USER", "text": "there"}],
    "createdAt": "2026-05-19T12:00:00.123Z",
    "conversationGroupId": G,
}
SUMMARY_CONVERSATION: payload.ConversationSummary = {"conversation": C, "conversation_group": G}
SUMMARY_ARCHIVE: payload.ConversationArchiveSummary = {
    "conversation": C,
    "conversation_group": G,
    "members": ["alice", "bob"],
    "archived": True,
}
SUMMARY_DELETED: payload.ConversationDeletedSummary = {
    "conversation": C,
    "conversation_group": G,
    "members": ["alice"],
}
FULL_CONVERSATION: payload.ConversationFull = {
    "id": C,
    "title": "Trip",
    "ownerUserId": "alice",
    "agentId": "a1",
    "metadata": {},
    "createdAt": "2026-05-19T12:00:00.123Z",
    "updatedAt": "2026-05-19T12:00:00.123Z",
    "accessLevel": "owner",
    "conversationGroupId": G,
}
RESPONSE: payload.ResponsePayload = {"conversation": C, "conversation_group": G, "recording": C, "status": "started"}
MEMBERSHIP: payload.MembershipPayload = {"conversation_group": G, "user": "bob", "role": "writer"}
MEMBERSHIP_DELETED: payload.MembershipDeletedPayload = {"conversation_group": G, "user": "bob"}


def env(kind: str, data: Any, event: str = "created") -> EventEnvelope:
    raw = data if isinstance(data, (bytes, str)) else json.dumps(data)
    return EventEnvelope(event, kind, raw, "1")


def everything(ev: Any, kind: Optional[str] = None) -> Dict[str, Optional[str]]:
    return {
        name: getattr(payload, name)(ev, kind)
        for name in ("conversation_id", "group_id", "entry_id", "role", "channel", "content_type", "text", "default_key")
    }


def test_summary_entry() -> None:
    expected = {
        "conversation_id": C,
        "group_id": G,
        "entry_id": E,
        "role": "USER",
        "channel": "history",
        "content_type": "history",
        "text": None,  # a summary carries no content
        "default_key": C,
    }
    assert everything(env("entry", SUMMARY_ENTRY)) == expected
    assert everything(dict(SUMMARY_ENTRY), "entry") == expected
    assert everything(dict(SUMMARY_ENTRY)) == expected  # kind guessed from the keys


def test_full_entry() -> None:
    expected = {
        "conversation_id": C,
        "group_id": G,
        "entry_id": E,
        "role": "USER",
        "channel": "history",
        "content_type": "history",
        "text": "Hello\nthere",
        "default_key": C,
    }
    assert everything(env("entry", FULL_ENTRY)) == expected
    assert everything(dict(FULL_ENTRY), "entry") == expected
    assert everything(dict(FULL_ENTRY)) == expected


def test_summary_entry_without_a_role() -> None:
    data = {k: v for k, v in SUMMARY_ENTRY.items() if k != "entry_role"}
    ev = env("entry", data)
    assert payload.role(ev) is None
    assert payload.entry_id(ev) == E


@pytest.mark.parametrize(
    "content, role, text",
    [
        ([], None, None),
        ([{"text": "no role"}], None, "no role"),
        ([{"role": "  ", "text": "blank"}], None, "blank"),
        ([{"role": " AI ", "text": "trimmed"}], "AI", "trimmed"),
        ([{"role": "AI"}, {"role": "USER", "text": "second"}], "AI", "second"),
        ([{"role": 7, "text": 8}], None, None),
        (["just a string", {"text": "x"}], None, "x"),
        ("b64:AAFoaQ==", None, None),
        (None, None, None),
        ({"role": "USER", "text": "not a list"}, None, None),
    ],
)
def test_full_entry_content_edge_cases(content: Any, role: Optional[str], text: Optional[str]) -> None:
    data = dict(FULL_ENTRY, content=content)
    ev = env("entry", data)
    assert payload.role(ev) == role
    assert payload.text(ev) == text
    assert payload.conversation_id(ev) == C
    del data["content"]
    assert payload.role(env("entry", data)) is None
    assert payload.text(env("entry", data)) is None


@pytest.mark.parametrize("data", [SUMMARY_CONVERSATION, SUMMARY_ARCHIVE, SUMMARY_DELETED, FULL_CONVERSATION])
def test_conversations(data: Any) -> None:
    for ev in (env("conversation", data, "updated"), data):
        assert payload.conversation_id(ev, None if ev is not data else "conversation") == C
        assert payload.conversation_id(ev) == C
        assert payload.group_id(ev) == G
        assert payload.default_key(ev) == C
        for name in ("entry_id", "role", "channel", "content_type", "text"):
            assert getattr(payload, name)(ev) is None, name


@pytest.mark.parametrize("status", ["started", "completed", "failed"])
def test_responses(status: str) -> None:
    data = dict(RESPONSE, status=status)
    for ev in (env("response", data, "created" if status == "started" else "deleted"), data):
        assert payload.conversation_id(ev) == C
        assert payload.group_id(ev) == G
        assert payload.default_key(ev) == C
        assert payload.entry_id(ev) is None and payload.role(ev) is None


@pytest.mark.parametrize("data", [MEMBERSHIP, MEMBERSHIP_DELETED])
def test_memberships_are_keyed_by_group(data: Any) -> None:
    for ev in (env("membership", data), data):
        assert payload.conversation_id(ev) is None
        assert payload.group_id(ev) == G
        assert payload.default_key(ev) == G
        # a membership's "role" is an access role, not an entry role
        assert payload.role(ev) is None


def test_id_is_read_only_for_its_kind() -> None:
    data = {"id": E, "conversationGroupId": G}
    assert payload.conversation_id(data, "conversation") == E
    assert payload.entry_id(data, "conversation") is None
    assert payload.entry_id(data, "entry") == E
    assert payload.conversation_id(data, "entry") is None
    assert payload.conversation_id(data, "response") is None
    assert payload.default_key(data, "response") == G
    # the explicit kind wins over the envelope's
    assert payload.entry_id(env("conversation", data), "entry") == E


def test_summary_keys_win_over_full_keys() -> None:
    data = {"conversation": "a", "conversationId": "b", "conversation_group": "g1", "conversationGroupId": "g2"}
    assert payload.conversation_id(data, "entry") == "a"
    assert payload.group_id(data, "entry") == "g1"


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"text"', b"42", b"null", b"{"])
def test_non_dict_data_gives_none(raw: bytes) -> None:
    ev = EventEnvelope("created", "entry", raw, "1")
    assert set(everything(ev).values()) == {None}


@pytest.mark.parametrize("thing", [None, 42, "string", [SUMMARY_ENTRY], object()])
def test_not_an_event_gives_none(thing: Any) -> None:
    assert set(everything(thing).values()) == {None}
    assert set(everything(thing, "entry").values()) == {None}


def test_missing_keys_and_wrong_types() -> None:
    assert set(everything({}, "entry").values()) == {None}
    wrong = {"conversation": 7, "conversation_group": ["g"], "entry": {"id": "e"}, "entry_role": None}
    assert set(everything(wrong, "entry").values()) == {None}
    assert payload.default_key(env("stream", {"phase": "live"}, "phase")) is None


def test_duck_typed_events() -> None:
    class Fake:
        kind = "entry"
        data = FULL_ENTRY

    assert payload.role(Fake()) == "USER"
    assert payload.text(Fake()) == "Hello\nthere"


def test_docstring_examples() -> None:
    failures, tried = doctest.testmod(payload, verbose=False)
    assert tried > 10
    assert failures == 0
