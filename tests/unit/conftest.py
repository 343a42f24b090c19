from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_kicks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests drive the queue and the runner themselves: no Celery kick leaves the process
    (a worker of the integration stack, alive in the same session, would take their turns)."""
    for where in ("agents.queue", "agents.leases"):
        monkeypatch.setattr(f"{where}.kick_room_on_commit", lambda room_id: None)
