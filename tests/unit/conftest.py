from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_kicks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests drive the queue and the runner themselves: no Celery kick leaves the process
    (a worker of the integration stack, alive in the same session, would take their turns)."""
    from agents.tasks import kick_room

    monkeypatch.setattr(kick_room, "delay", lambda room_id: None)


@pytest.fixture(scope="package", autouse=True)
def _no_sweeps_from_the_stack() -> Iterator[None]:
    """A stack the integration tests started in this session sweeps the same database every
    second, and its sweeper kicks every room with a queued turn and nothing running: its worker
    would take a unit test's turn between two of the test's own steps. Its beat and sweeper
    stop while the unit tests run."""
    from tests.stack import running_stack

    stack = running_stack()
    if stack is None:
        yield
        return
    for name in ("beat", "sweeper"):
        stack.stop(name)
    try:
        yield
    finally:
        for name in ("sweeper", "beat"):
            stack.start(name)
