from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package", autouse=True)
def _alone() -> Iterator[None]:
    """Unit tests drive the queue and the runner themselves, so no other process may act on
    their rooms. No Celery kick leaves the process, for the whole package: a kick is sent from
    a background thread after its commit, so a per-test patch could be undone before it goes.
    And a stack the integration tests started in this session (the same database) stops its
    worker, sweeper, beat and webhook worker meanwhile: its sweeper kicks every room with a
    queued turn and nothing running, and its worker would take a unit test's turn between two
    of the test's own steps (or while the test's database is flushed: a deadlock)."""
    from agents.tasks import kick_room
    from tests.stack import running_stack

    stack = running_stack()
    names = ("beat", "sweeper", "hooks", "worker")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kick_room, "delay", lambda room_id: None)
        if stack is not None:
            for name in names:
                stack.stop(name)
        try:
            yield
        finally:
            if stack is not None:
                for name in reversed(names):
                    stack.start(name)
