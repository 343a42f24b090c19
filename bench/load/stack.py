"""The stack under measurement, standalone (the way tests/stack.py builds it, without pytest).

Embedded Postgres/Redis (unless DATABASE_URL / REDIS_URL are set), a fresh database
``load_<pid>`` (created, migrated, dropped at exit), and the processes of `make run` under its
supervisor: ONE Daphne (the one measured), one Celery worker (threads), the sweeper and beat.
Nothing here imports Django: the driver sets the environment first, then calls django.setup().
"""

from __future__ import annotations

import resource
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import common
from bench.common import free_port, service_urls, wait_port  # noqa: F401 - this module's API
from stack.processes import StackConfig, stack_processes
from stack.supervisor import Supervisor, wait_http

ROOT = Path(__file__).resolve().parents[2]
NOFILE = 65536
DB_PREFIX = "load_"


def raise_nofile(target: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE of this process to `target` (hard limit too, when allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):  # not root: as high as the hard limit allows
            target = hard
    if soft == resource.RLIM_INFINITY or soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class FreshDatabase(common.FreshDatabase):
    PREFIX = DB_PREFIX

    def pg_stats(self) -> dict[str, int | None]:
        """Sessions ever opened on our database (pg_stat_database.sessions, PostgreSQL 14+)
        and the backends connected to it now."""
        out: dict[str, int | None] = {"sessions": None, "backends": None}
        try:
            with self.admin() as conn:
                conn.execute("SELECT pg_stat_clear_snapshot()")
                row = conn.execute(
                    "SELECT sessions FROM pg_stat_database WHERE datname = %s", [self.name]
                ).fetchone()
                out["sessions"] = int(row[0]) if row and row[0] is not None else None
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.name]
                ).fetchone()
                out["backends"] = int(row[0]) if row else None
        except Exception:  # a statistic, never a reason to fail the run
            pass
        return out


# --- processes ------------------------------------------------------------------------------


@dataclass
class Running:
    """A process of the stack, by pid (its parent is the supervisor)."""

    pid: int

    def poll(self) -> int | None:
        """None while it runs (its exit code is the supervisor's to know)."""
        return None if psutil.pid_exists(self.pid) else -1


@dataclass
class Processes:
    """The stack of `make run` (stack.processes) with ONE Daphne (the one measured), under the
    stack's supervisor; logs in `logdir`. The children inherit this process's fd limit."""

    env: dict[str, str]
    port: int
    logdir: Path
    concurrency: int = 16
    supervisor: Supervisor | None = None

    def start_all(self) -> dict[str, Running]:
        config = StackConfig(
            port=self.port, concurrency=self.concurrency, queue=self.env.get("CELERY_QUEUE") or "celery",
            node=f"load-{uuid.uuid4().hex[:6]}-", schedule=self.logdir / "beat-schedule",
        )  # fmt: skip
        self.supervisor = Supervisor(
            stack_processes(config), env=self.env, logdir=self.logdir, port=self.port
        )
        self.supervisor.start()
        wait_http(self.port)
        return {name: Running(self.supervisor.pids(name)[0]) for name in self.supervisor.names()}

    def stop_all(self) -> int | None:
        """Stop everything; the supervisor's exit code."""
        return self.supervisor.close() if self.supervisor is not None else None

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.log"


def make_logdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="load-"))
