"""The real stack for integration and browser tests: Daphne (or uvicorn, ASGI_SERVER=uvicorn), a
Celery worker, beat, fake LLM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from chatproject.stack import asgi_argv, celery_argv
from tests.fakellm import FakeLLM

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def database_url() -> str:
    db = settings.DATABASES["default"]
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    )


@dataclass
class Stack:
    """Processes of one test session, all pointed at the test database."""

    fake: FakeLLM
    env: dict[str, str]
    port: int
    logdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, name: str) -> None:
        kind = "worker" if name.startswith("worker") else name
        if kind == "web":  # ASGI_SERVER=uvicorn runs the tests against uvicorn instead
            command = asgi_argv(server=self.env.get("ASGI_SERVER") or "daphne", port=self.port)
        else:
            command = celery_argv(
                kind,
                env=self.env,
                node=f"test-{kind}-{uuid.uuid4().hex[:6]}@%h",
                schedule=self.logdir / "beat-schedule",
            )
        log = open(self.logdir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if name == "web":
            wait_port(self.port)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:  # pool processes that outlived their parent
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def stack_start(**overrides: Any) -> Stack:
    """Start the fake LLM server, Daphne, a worker and beat against the test database."""
    fake = FakeLLM().start()
    run_id = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CELERY_QUEUE=settings.CELERY_TASK_DEFAULT_QUEUE,
        CHANNEL_PREFIX=settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
        LLM_PROVIDER="openai",
        LLM_BASE_URL=fake.base_url,
        LLM_API_KEY="test-key",
        LLM_MODEL="fake-model",
        LEASE_TIMEOUT=str(settings.LEASE_TIMEOUT),
        SWEEP_INTERVAL=str(settings.SWEEP_INTERVAL),
        TURN_TIME_LIMIT=str(settings.TURN_TIME_LIMIT),
        PYTHONUNBUFFERED="1",
        # generous limits: tests send bursts on purpose; test_limits.py checks the limits
        RATE_FRAMES_PER_SECOND="200",
        RATE_MESSAGES_PER_MINUTE="600",
        RATE_QUEUED_TURNS_PER_ROOM="8",
        LOG_LEVEL="INFO",
    )
    env.update({k: str(v) for k, v in overrides.items()})
    logdir = Path(tempfile.mkdtemp(prefix=f"stack-{run_id}-"))
    stack = Stack(fake=fake, env=env, port=free_port(), logdir=logdir)
    for name in ("web", "worker", "sweeper", "beat"):
        stack.start(name)
    return stack
