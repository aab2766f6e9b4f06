"""``InMemoryEventClient`` and ``LocalMemoryService`` deliver the same streams.

The in-process client re-implements the server's filters and replay in Python. Here both get
the same log (every kind, entry channels, content types and roles, conversations, stream
events published as data, payloads that are not JSON objects) and the same subscriptions
(each filter alone and combined; ``after_cursor`` at the start, at cursors, past the end and
``None`` for the live tail), and must deliver the same ``(kind, event, data, cursor)``
sequence: the replay, the phase signals, then the live events published after subscribing
(payloads compared as JSON values: the two format their signals with different whitespace).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from memory_service_processor import EventEnvelope, GrpcEventClient, SubscribeRequest
from memory_service_processor.testing import InMemoryEventClient, LocalMemoryService

from conftest import run

Delivered = Tuple[str, str, Any, Optional[str]]


def _entry(conversation: Optional[str] = "c1", **keys: Any) -> Tuple[str, str, Dict[str, Any]]:
    data: Dict[str, Any] = {"entry": "e"} if conversation is None else {"conversation": conversation, "entry": "e"}
    data.update({f"entry_{k}": v for k, v in keys.items()})
    return ("entry", "created", data)


#: The log published before subscribing (cursors 1..N).
LOG: List[Tuple[str, str, Any]] = [
    ("conversation", "created", {"conversation": "c1", "conversation_group": "g1"}),
    _entry("c1", channel="history", content_type="history", role="USER"),
    _entry("c1", channel="history", content_type="history", role="AI"),
    _entry("c2", channel="context", content_type="history", role="USER"),
    _entry("c2", channel="journal", content_type="test/plain", role="ai"),
    _entry("c1"),  # no channel (the default "history"), no content type, no role
    _entry("c2", channel="HISTORY", content_type="History", role="user"),
    _entry(None, channel="history", role="AI"),  # no conversation
    ("response", "created", {"conversation": "c1", "recording": "c1", "status": "started"}),
    ("membership", "created", {"conversation_group": "g1", "user": "bob", "role": "reader"}),
    ("conversation", "updated", {"conversation": "c2", "members": ["alice"], "archived": True}),
    ("stream", "phase", {"phase": "replay"}),  # a stream event published as data
    ("entry", "created", b"not json"),
    ("entry", "created", [1, 2]),
    ("conversation", "created", {"conversation": 7}),  # a conversation id that is not a string
    ("conversation", "deleted", {"conversation": "c1", "members": []}),
]

#: Published once every subscription is live.
LIVE: List[Tuple[str, str, Any]] = [
    _entry("c1", channel="history", content_type="history", role="AI"),
    _entry("c2", channel="context", content_type="test/plain", role="USER"),
    ("membership", "deleted", {"conversation_group": "g1", "user": "bob"}),
    ("conversation", "updated", {"conversation": "c1"}),
    _entry("c2", channel="journal", role="AI"),
]

#: Filters, each with a probe: an event it lets through, published last so a reader knows
#: the live events before it have arrived.
FILTERS: List[Tuple[str, Dict[str, Sequence[str]], Tuple[str, str, Any]]] = [
    ("none", {}, ("conversation", "created", {"conversation": "probe"})),
    ("kinds", {"kinds": ["entry"]}, _entry("probe")),
    ("kinds-case", {"kinds": ["ENTRY", "Membership"]}, _entry("probe")),
    ("kinds-stream", {"kinds": ["stream"]}, ("stream", "phase", {"phase": "live"})),
    ("conversation", {"conversation_ids": ["c1"]}, ("response", "deleted", {"conversation": "c1"})),
    ("conversations", {"conversation_ids": ["c1", "c2"]}, _entry("c2")),
    ("channel", {"entry_channels": ["context"]}, ("membership", "created", {"user": "x"})),
    ("channels", {"entry_channels": ["history", "JOURNAL"]}, _entry("probe", channel="journal")),
    # content types compare exactly ("History" and "HISTORY" in the log do not pass)
    ("content-type", {"entry_content_types": ["history"]}, _entry("probe", content_type="history")),
    ("content-type-other", {"entry_content_types": ["TEST/PLAIN"]}, _entry("p", content_type="TEST/PLAIN")),
    ("role", {"entry_roles": ["ai"]}, _entry("probe", role="AI")),
    ("roles", {"entry_roles": ["USER", "ai"]}, _entry("probe", role="user")),
    (
        "combined",
        {"kinds": ["entry", "conversation"], "conversation_ids": ["c2"], "entry_roles": ["user"]},
        ("conversation", "updated", {"conversation": "c2"}),
    ),
    (
        "combined-entry",
        {"entry_channels": ["context", "history"], "entry_content_types": ["history"], "entry_roles": ["USER"]},
        _entry("probe", channel="context", content_type="history", role="USER"),
    ),
]

#: ``None``: the live tail. The log has 16 events: "16" is the last, "99" is past the end.
AFTER: List[Optional[str]] = [None, "start", "0", "1", "5", "16", "99"]


def _delivered(e: EventEnvelope) -> Delivered:
    # the payload compared as JSON where it is JSON (the two format signals with different
    # whitespace), byte for byte otherwise
    try:
        data: Any = json.loads(e.raw_data)
    except ValueError:
        data = bytes(e.raw_data)
    return (e.kind, e.event, data, e.cursor)


async def _until_live(stream: Any, into: List[Delivered]) -> None:
    while True:
        e = await stream.recv()
        into.append(_delivered(e))
        if e.kind == "stream" and e.event == "phase" and e.data.get("phase") == "live":
            return


async def _until_cursor(stream: Any, cursor: str, into: List[Delivered]) -> None:
    while True:
        e = await stream.recv()
        into.append(_delivered(e))
        if e.cursor == cursor:
            return


async def _streams(source: Any, publish: Any, filters: Dict[str, Sequence[str]], probe: Any) -> Dict[Optional[str], List[Delivered]]:
    """Publishes :data:`LOG`, subscribes once per :data:`AFTER`, publishes :data:`LIVE` and
    the probe, and returns what each subscription delivered up to the probe."""
    publish(LOG)
    got: Dict[Optional[str], List[Delivered]] = {}
    streams = {}
    for after in AFTER:
        stream = await source.subscribe(SubscribeRequest(after_cursor=after, **filters))
        got[after] = []
        await _until_live(stream, got[after])
        streams[after] = stream
    probe_cursor = publish([*LIVE, probe])[-1]
    for after, stream in streams.items():
        await _until_cursor(stream, probe_cursor, got[after])
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return got


def _server_streams(filters: Dict[str, Sequence[str]], probe: Any) -> Dict[Optional[str], List[Delivered]]:
    async def go() -> Dict[Optional[str], List[Delivered]]:
        async with LocalMemoryService() as server:
            return await _streams(GrpcEventClient(server.endpoint), server.publish_many, filters, probe)

    return run(go(), timeout=30)


def _client_streams(filters: Dict[str, Sequence[str]], probe: Any) -> Dict[Optional[str], List[Delivered]]:
    client = InMemoryEventClient()
    return run(_streams(client, client.publish_many, filters, probe), timeout=30)


@pytest.mark.parametrize("name,filters,probe", FILTERS, ids=[f[0] for f in FILTERS])
def test_same_streams_for_every_filter_and_cursor(name: str, filters: Dict[str, Sequence[str]], probe: Any) -> None:
    server = _server_streams(filters, probe)
    client = _client_streams(filters, probe)
    for after in AFTER:
        assert client[after] == server[after], f"filter {name!r}, after_cursor={after!r}"
    # the table is not vacuous: every filter lets some of the log through on a full replay
    assert any(c is not None for (_, _, _, c) in server["start"][:-1]), name


def test_the_default_entry_channel_is_history() -> None:
    """No ``entry_channels``: history entries only (an entry without a channel is on
    history), as the real service does. Both sides are held to it, not only to each other."""
    channels = {}
    for side, got in (("server", _server_streams({}, _entry("probe"))), ("client", _client_streams({}, _entry("probe")))):
        replayed = [int(c) for (kind, _, _, c) in got["start"] if kind == "entry" and c is not None and int(c) <= len(LOG)]
        channels[side] = sorted({str(LOG[c - 1][2].get("entry_channel")) for c in replayed if isinstance(LOG[c - 1][2], dict)})
    assert channels == {"server": ["HISTORY", "None", "history"], "client": ["HISTORY", "None", "history"]}


CHANNELS = ["history", "context", "journal"]


async def _retention(source: Any, publish: Any, purge: Any) -> Dict[str, List[Delivered]]:
    publish(LOG[:6])
    purge(3)
    got: Dict[str, List[Delivered]] = {}
    for after in ["1", "2", "3", "start"]:
        stream = await source.subscribe(SubscribeRequest(after_cursor=after, entry_channels=CHANNELS))
        got[after] = []
        try:
            while True:
                e = await stream.recv()
                got[after].append(_delivered(e))
                if e.kind == "stream" and e.event == "phase" and e.data.get("phase") == "live":
                    break
        except StopAsyncIteration:
            got[after].append(("end", "", None, None))
    return got


def test_same_retention_behaviour_after_a_purge() -> None:
    """A cursor beyond retention: ``phase/replay``, ``stream/invalidate``, a clean end; the
    cursor right before the first retained event still replays."""

    async def server_side() -> Dict[str, List[Delivered]]:
        async with LocalMemoryService() as server:
            return await _retention(GrpcEventClient(server.endpoint), server.publish_many, server.purge)

    client = InMemoryEventClient()
    got_server = run(server_side(), timeout=30)
    got_client = run(_retention(client, client.publish_many, client.purge), timeout=30)
    assert got_client == got_server
    assert got_server["2"][-2][1] == "invalidate" and got_server["2"][-1][0] == "end"
    assert got_server["3"][1][3] == "4"


async def _stale(source: Any, after: str) -> List[Tuple[str, str]]:
    """What a subscription with ``after`` receives until the stream ends."""
    stream = await source.subscribe(SubscribeRequest(after_cursor=after))
    got: List[Tuple[str, str]] = []
    while True:
        try:
            e = await asyncio.wait_for(stream.recv(), 10)
        except StopAsyncIteration:
            return got
        got.append((e.kind, e.event))


@pytest.mark.parametrize("after", ["abc", "5.0", "", "-1", "1_0", "\u00b2", "+1", " 1"])
def test_both_treat_a_malformed_cursor_as_stale(after: str) -> None:
    """Only decimal cursors (``"start"`` aside) are read; anything else (``int()``'s extras
    too) is stale, as upstream treats it: ``phase/replay``, ``stream/invalidate``, the end."""
    async def server_side() -> List[Tuple[str, str]]:
        async with LocalMemoryService() as server:
            server.publish_many(LOG[:3])
            return await _stale(GrpcEventClient(server.endpoint), after)

    client = InMemoryEventClient(LOG[:3])
    expected = [("stream", "phase"), ("stream", "invalidate")]
    assert run(server_side(), timeout=30) == expected
    assert run(_stale(client, after), timeout=30) == expected
