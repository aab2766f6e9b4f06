"""The schema of ``Runtime.stats()``, declared once.

:class:`Stats` is the ``TypedDict`` that ``Runtime.stats()`` returns (the native
``Driver.stats()`` has exactly its keys; a test checks it). Each key is annotated with what it
is and means: a :class:`Counter` or :class:`Gauge` (exported by ``_metrics.py`` under that
kind) or :class:`Info` (not a number). :data:`PHASES` are the values of ``phase``.
:data:`FIELDS` lists the keys with their types and documentation (``_metrics.py`` and the
README's stats table derive from it); :func:`initial_stats` gives the values before a run.
"""

# No ``from __future__ import annotations``: the annotations of ``Stats`` are read at import.
from typing import (
    Annotated,
    Any,
    Dict,
    List,
    Literal,
    NamedTuple,
    Optional,
    Tuple,
    TypedDict,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

__all__ = ["Stats", "Phase", "PHASES", "Counter", "Gauge", "Info", "StatField", "FIELDS", "initial_stats"]


class Counter(NamedTuple):
    """A monotonically increasing count; exported as ``<prefix>_<key>_total``."""

    doc: str


class Gauge(NamedTuple):
    """A value that goes up and down; exported as ``<prefix>_<metric>`` (``metric`` defaults
    to the key)."""

    doc: str
    metric: str = ""


class Info(NamedTuple):
    """A value that is not a metric number (exported as a label, or not at all)."""

    doc: str


#: Where the subscription is.
Phase = Literal["connecting", "replay", "live", "streaming", "stopped"]

#: The values of ``stats()["phase"]``, in the order a run goes through them.
PHASES: Tuple[str, ...] = get_args(Phase)

_PHASE_DOC = (
    "where the subscription is: connecting (no event yet), replay (the server is replaying "
    "retained events), live (caught up), streaming (receiving events from a source that sends "
    "no phase signals), stopped (the run is over)"
)


class Stats(TypedDict):
    """Counters and gauges of a run, as returned by ``Runtime.stats()``."""

    client_id: Annotated[str, Info("the processor's client id (the metrics' label)")]
    events_received: Annotated[int, Counter("stream messages received (business events and stream signals)")]
    events_handled: Annotated[int, Counter("business events handed to the processor and handled")]
    stream_signals: Annotated[int, Counter("stream signals (kind=stream), never passed to handle()")]
    checkpoints_written: Annotated[int, Counter("checkpoint writes confirmed by the store")]
    checkpoints_failed: Annotated[int, Counter("checkpoint writes that failed (and were retried)")]
    checkpoints_skipped: Annotated[int, Counter("checkpoint writes skipped because the snapshot was unchanged")]
    reconnects: Annotated[int, Counter("resubscriptions after the first subscription")]
    batches: Annotated[int, Counter("batches of events handed to the processor")]
    phase: Annotated[Phase, Info(_PHASE_DOC)]
    last_cursor: Annotated[Optional[str], Info("cursor of the last event handled, None before the first")]
    last_checkpoint_age: Annotated[
        Optional[float], Gauge("seconds since the last confirmed checkpoint write (None before the first)", "last_checkpoint_age_seconds")
    ]
    buffer_depth: Annotated[int, Gauge("events waiting in the buffer between the network and the processor")]
    handle_seconds_mean: Annotated[float, Gauge("mean time spent handling one event, in seconds")]
    handle_seconds_max: Annotated[float, Gauge("the slowest batch's mean time per event (concurrent mode: the slowest handler call), in seconds")]
    in_flight: Annotated[int, Gauge("events being handled right now (at most max_concurrency)")]
    events_pending: Annotated[
        int, Gauge("events read and not yet done: queued in their key's lane, in flight or waiting for a retry (concurrent mode)")
    ]
    retries: Annotated[int, Counter("retries scheduled after a handler raised (max_attempts > 1)")]
    failed_events: Annotated[int, Counter("events given up on after their last try and skipped (on_failure=skip)")]
    watermark: Annotated[
        Optional[str],
        Info("the cursor the checkpoint may cover: every event at or before it has completed (None before the first)"),
    ]
    busy_seconds: Annotated[
        float, Gauge("how long the oldest handler call in progress has been running, 0 when none")
    ]
    events_foreign: Annotated[int, Counter("events of other shards, dropped in the core before the processor")]


class StatField(NamedTuple):
    """One key of :class:`Stats`: its name, Python type and what it is."""

    name: str
    type: Any
    kind: Union[Counter, Gauge, Info]

    @property
    def doc(self) -> str:
        """What the value means."""
        return self.kind.doc


def _fields() -> Tuple[StatField, ...]:
    out = []
    for name, hint in get_type_hints(Stats, include_extras=True).items():
        base, kind = get_args(hint)[:2]
        out.append(StatField(name, base, kind))
    return tuple(out)


#: The keys of :class:`Stats` in declaration order.
FIELDS: Tuple[StatField, ...] = _fields()


def _zero(tp: Any) -> Any:
    """The value of a key of type ``tp`` before anything happened."""
    if tp is int:
        return 0
    if tp is float:
        return 0.0
    if get_origin(tp) is Literal:
        return get_args(tp)[0]
    if get_origin(tp) is Union and type(None) in get_args(tp):
        return None
    raise TypeError(f"no initial value for {tp!r}")  # pragma: no cover - schema error


def initial_stats(client_id: str) -> Stats:
    """The stats of a run that has not started: zeros, ``phase`` ``"connecting"``."""
    values: Dict[str, Any] = {f.name: _zero(f.type) for f in FIELDS if f.name != "client_id"}
    return Stats(client_id=client_id, **values)  # type: ignore[typeddict-item]
