"""The real stack for integration and browser tests: the stack's processes (stack.processes) under
the supervisor of `make run` (stack.supervisor), pointed at the test database, with the fake LLM.
ASGI_SERVER=uvicorn runs the tests against uvicorn instead of Daphne."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from django.conf import settings

from stack.processes import Process, StackConfig, served_origins, stack_processes
from stack.supervisor import Supervisor, wait_http
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
class Running:
    """One process of the stack, by pid (the supervisor, not the test, is its parent)."""

    pid: int

    def wait(self, timeout: float | None = None) -> None:
        """Until it has exited (a zombie its supervisor has not reaped yet counts as exited: on
        a busy machine the reaping can lag for long)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._alive():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"pid {self.pid} still runs")
            time.sleep(0.05)

    def _alive(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


@dataclass
class Stack:
    """The processes of one test session (web, worker, sweeper, beat; worker2 on request)."""

    fake: FakeLLM
    env: dict[str, str]
    port: int
    logdir: Path
    supervisor: Supervisor

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    last_pids: dict[str, int] = field(default_factory=dict)

    @property
    def procs(self) -> dict[str, Running]:
        """The processes of the stack by name (a snapshot): one being restarted by the supervisor
        under the last pid it had, one stopped not at all."""
        for name in self.supervisor.names():
            pid = self.supervisor.pid(name)
            if pid is not None:
                self.last_pids[name] = pid
        return {name: Running(pid) for name, pid in self.last_pids.items()}

    def start(self, name: str) -> None:
        """Start `name` now (if it is not running) and, for the web, wait until it answers."""
        self.last_pids[name] = self.supervisor.resume(name)[0]
        if name == "web":
            wait_http(self.port)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        if sig != signal.SIGTERM:
            self.supervisor.kill(name, sig)
        self.supervisor.stop(name)
        self.last_pids.pop(name, None)

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def stop_all(self) -> None:
        self.supervisor.close()
        _running[:] = [s for s in _running if s is not self]

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.supervisor.log_tail(name, lines)


_running: list[Stack] = []


def running_stack() -> Stack | None:
    """The stack this session started, if it did and it still runs."""
    return _running[-1] if _running else None


def stack_start(**overrides: Any) -> Stack:
    """Start the fake LLM server, Daphne, a worker, the sweeper and beat against the test database."""
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
        RATE_SYNCS_PER_MINUTE="600",  # burst 150 (test_hardening.py spends it)
        SOCKETS_PER_USER="12",  # test_hardening.py opens one more
        # replays in batches of 100, at most 400 events or 1 MB back (test_hardening.py)
        CHAT_REPLAY_BATCH="100",
        CHAT_REPLAY_MAX_EVENTS="400",
        CHAT_REPLAY_MAX_BYTES="1000000",
        ACCESS_RECHECK_SECONDS="2",  # the server re-reads every socket's access (test_moderation.py)
        RATE_GUESTS="",
        RATE_SIGNUPS="",
        RATE_ROOMS="",
        RATE_TOKENS="",
        LOG_LEVEL="INFO",
        # the slow tools a test kills a worker in the middle of (tests/tools.py)
        AGENT_TOOLS_EXTRA="tests.tools.Launch,tests.tools.SlowLookup",
        # webhooks retried within a test's patience (tests/integration/test_webhooks.py)
        WEBHOOK_RETRY_BASE="0.2",
        WEBHOOK_RETRY_MAX="2",
        WEBHOOK_TIMEOUT="3",
    )
    port = free_port()
    env["ALLOWED_ORIGINS"] = ",".join(served_origins("127.0.0.1", port))
    env.update({k: str(v) for k, v in overrides.items()})
    logdir = Path(tempfile.mkdtemp(prefix=f"stack-{run_id}-"))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(logdir / "metrics")  # this stack's own /metrics
    Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(exist_ok=True)
    config = StackConfig(
        port=port,
        server=env.get("ASGI_SERVER") or "daphne",
        queue=env["CELERY_QUEUE"],
        node=f"test-{run_id}-",
        schedule=logdir / "beat-schedule",
    )
    processes = stack_processes(config)
    worker = next(p for p in processes if p.name == "worker")
    # a second worker that tests start when they need one (it takes the same queue)
    worker2 = Process("worker2", [a.replace("worker@", "worker2@") for a in worker.argv], autostart=False)
    processes.append(worker2)
    # tests kill processes on purpose: restart them, but never give up on one
    supervisor = Supervisor(processes, env=env, logdir=logdir, port=port, give_up=False).start()
    wait_http(port)
    stack = Stack(fake=fake, env=env, port=port, logdir=logdir, supervisor=supervisor)
    for process in processes:  # the pids of every process, so a killed one can be named
        if process.autostart:
            stack.start(process.name)
    _running.append(stack)
    return stack
