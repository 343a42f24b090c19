"""Shared fixtures. Integration and browser tests run against the real stack (tests/stack.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

# Playwright's sync API and our asyncio.run() scenarios run an event loop in the test thread;
# the test code itself only does short ORM set-up around them.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session", autouse=True)
def _isolated_run(django_db_setup: Any) -> None:
    """Give this run its own Celery queue and channel prefix, so a running `make run` can't
    steal its tasks or hear its broadcasts (they may share the embedded Redis)."""
    from django.conf import settings

    from chatproject.celery import app

    run = uuid.uuid4().hex[:8]
    settings.CELERY_TASK_DEFAULT_QUEUE = f"test-{run}"
    app.conf.task_default_queue = f"test-{run}"
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"test{run}"
    settings.LEASE_TIMEOUT = 3.0
    settings.SWEEP_INTERVAL = 1.0
    settings.TURN_TIME_LIMIT = 60.0


@pytest.fixture(scope="session")
def stack(_isolated_run: None, django_db_blocker: Any) -> Iterator[Any]:
    from tests.stack import stack_start

    s = stack_start()
    try:
        yield s
    finally:
        s.stop_all()
        s.fake.stop()


@pytest.fixture
def fake(stack: Any) -> Any:
    stack.fake.reset()
    return stack.fake


def make_user(name: str) -> tuple[Any, str]:
    """A user with a display name and an API token."""
    from django.contrib.auth import get_user_model

    from rooms.services import token_create

    user = get_user_model().objects.create_user(
        username=f"{name.lower()}-{uuid.uuid4().hex[:6]}", password="pw-" + uuid.uuid4().hex,
        first_name=name,
    )
    _, raw = token_create(user=user, name="test")
    return user, raw


@pytest.fixture
def alice() -> tuple[Any, str]:
    return make_user("Alice")


@pytest.fixture
def bob() -> tuple[Any, str]:
    return make_user("Bob")


@pytest.fixture
def room(alice: tuple[Any, str]) -> Any:
    from rooms.services import room_create

    return room_create(owner=alice[0], title="Test room")
