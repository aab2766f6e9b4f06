"""Testing a processor: a real local Memory Service and a way to run a processor until done.

:class:`LocalMemoryService` (:mod:`.server`) is a tonic gRPC server (EventStreamService +
AdminCheckpointService) inside the package, listening on a free loopback port (or a Unix
socket), with a durable outbox of decimal cursors, replay and live phases, filters, API keys
with admin/user roles, checkpoints, retention, slow-consumer eviction, fault injection and
restart. :func:`run_until_handled` and :class:`ProcessorRun` (:mod:`.run`) run the real
runtime until the processor has handled what was published. :class:`InMemoryEventClient`
(:mod:`.clients`) is an event source in this process, for tests without a server.
The server's scenario API (``create_conversation``, ``append_entry``, ...) emits exactly the events a
real Memory Service emits, in summary and full payloads; :class:`~.events.Activity`
(:mod:`.events`) drives it to make realistic activity.
"""

from __future__ import annotations

from .clients import InMemoryEventClient
from .events import EventSpec
from .run import ProcessorRun, RunResult, run_until_handled
from .server import LocalMemoryService, SeenRequest

__all__ = [
    "EventSpec",
    "InMemoryEventClient",
    "LocalMemoryService",
    "ProcessorRun",
    "RunResult",
    "SeenRequest",
    "run_until_handled",
]
