from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_kicks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests drive the queue and the runner themselves: no Celery kick leaves the process
    (a worker of the integration stack, alive in the same session, would take their turns)."""
    from agents.tasks import kick_room

    monkeypatch.setattr(kick_room, "delay", lambda room_id: None)
