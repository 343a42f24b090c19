"""Shared fixtures. Integration and browser tests run against the real stack (tests/stack.py)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

# Playwright's sync API and our asyncio.run() scenarios run an event loop in the test thread;
# the test code itself only does short ORM set-up around them.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def pytest_configure(config: pytest.Config) -> None:
    """Start the embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set) before
    pytest-django creates the test database; settings default to their URLs."""
    from stack import services

    services.ensure_dotenv()
    os.environ.update(services.start_missing().env)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """One test database per run (test_chat_<pid>), so two runs on one Postgres never collide;
    databases left by runs that were killed are dropped first."""
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    base = f"test_{db['NAME']}"
    db.setdefault("TEST", {})["NAME"] = f"{base}_{os.getpid()}"
    params = {
        k: v
        for k, v in {
            "host": db.get("HOST"),
            "port": db.get("PORT"),
            "user": db.get("USER"),
            "password": db.get("PASSWORD"),
        }.items()
        if v
    }
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        names = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{base}\\_%"]
        ).fetchall()
        for (name,) in names:
            pid = name.rsplit("_", 1)[-1]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", autouse=True)
def _isolated_run(django_db_setup: Any) -> Iterator[None]:
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
    # as the test stack's (tests/stack.py): tests post in bursts; the quota's tests set their own
    settings.RATE_MESSAGES_PER_MINUTE = 600
    # every test client comes from one address: the per-address limits' tests set their own
    settings.RATE_GUESTS = settings.RATE_SIGNUPS = settings.RATE_ROOMS = settings.RATE_TOKENS = ""
    from django.core.cache import cache

    cache.key_prefix = f"test{run}"  # counts of earlier runs in the shared Redis do not apply
    yield
    from agents.writer import writer

    writer.stop()  # its database session would keep the test database from being dropped


@pytest.fixture(scope="session")
def stack(_isolated_run: None, django_db_blocker: Any) -> Iterator[Any]:
    from tests.stack import stack_start

    s = stack_start()
    try:
        yield s
    finally:
        s.stop_all()
        s.fake.stop()
        with django_db_blocker.unblock():
            from django.db import connection

            with connection.cursor() as cursor:  # sessions of killed processes, other threads
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


@pytest.fixture
def fake(stack: Any) -> Iterator[Any]:
    """The fake LLM, reset; afterwards the stack is left idle so the table flush can't deadlock."""
    stack.fake.reset()
    yield stack.fake
    stack_quiesce()


def stack_quiesce(timeout: float = 15.0) -> None:
    """Stop every turn and wait until no worker writes (before pytest-django truncates tables)."""
    import time

    from agents.models import Turn

    Turn.objects.filter(status="queued").update(status="cancelled")
    Turn.objects.filter(status="running").update(cancel_requested=True)
    deadline = time.monotonic() + timeout
    while Turn.objects.filter(status="running").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # the last broadcast after commit


def on_own_connection(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Call `fn` (from a helper thread) and give the thread's pooled connection back after."""
    from django.db import connections

    try:
        return fn(*args, **kwargs)
    finally:
        connections.close_all()


def run_async(coro: Any) -> Any:
    """asyncio.run in a fresh thread: the test thread may already run Playwright's loop."""
    import threading

    from django.db import connections

    result: dict[str, Any] = {}

    async def closing() -> Any:
        # Django keeps connections per asyncio context: the ones the scenario opened live in its
        # task's context and must be given back from there, or each leaks a pooled connection
        try:
            return await coro
        finally:
            connections.close_all()

    def target() -> None:
        try:
            result["value"] = asyncio.run(closing())
        except BaseException as exc:  # re-raised in the test thread
            result["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, name="scenario")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def make_user(name: str) -> tuple[Any, str]:
    """A user with a display name and an API token."""
    from django.contrib.auth import get_user_model

    from rooms.services import token_create

    user = get_user_model().objects.create_user(
        username=f"{name.lower()}-{uuid.uuid4().hex[:6]}",
        password="pw-" + uuid.uuid4().hex,
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
