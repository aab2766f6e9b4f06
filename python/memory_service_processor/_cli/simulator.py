"""The demo's activity: :class:`~memory_service_processor.testing.events.Activity` (the one
generator of realistic Memory Service activity) with the demo's defaults.

Conversations being created, renamed, archived and unarchived, members joining, changing role
and leaving, user and assistant turns in the ``history`` channel, agent notes in the
``context`` channel, recorded responses, all made through the scenario API of the embedded
:class:`~memory_service_processor.testing.LocalMemoryService`, which emits exactly what a real
Memory Service emits for them.
"""

from __future__ import annotations

from ..testing.events import Activity, ScenarioServer

__all__ = ["ConversationSimulator"]


class ConversationSimulator(Activity):
    """:class:`Activity` over 120 conversations by default; ``run`` varies the activity
    between runs of the demo."""

    def __init__(self, server: ScenarioServer, conversations: int = 120, seed: int = 2024, run: int = 0) -> None:
        super().__init__(server, conversations=conversations, seed=seed, run=run)
