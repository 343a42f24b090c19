"""The stack under measurement, standalone (the way tests/stack.py builds it, without pytest).

Embedded Postgres/Redis (unless DATABASE_URL / REDIS_URL are set), a fresh database
``load_<pid>`` (created, migrated, dropped at exit), ONE Daphne process (the one measured),
one Celery worker (threads, as `make run`), the sweeper, beat, and the fake OpenAI server.
Nothing here imports Django: the driver sets the environment first, then calls django.setup().
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench import common
from bench.common import free_port, service_urls, wait_port  # noqa: F401 - this module's API
from chatproject.stack import celery_argv

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


def _child_preexec() -> None:
    """preexec_fn of the children: a high fd limit (only async-signal-safe-ish work here)."""
    raise_nofile(NOFILE)


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
class Processes:
    """Daphne (measured), a Celery worker, beat; each in its own session, logs in `logdir`."""

    env: dict[str, str]
    port: int
    logdir: Path
    concurrency: int = 16
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str) -> subprocess.Popen[bytes]:
        if name == "web":  # exactly how `make run` starts a single ASGI process
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                       "chatproject.asgi:application"]  # fmt: skip
        else:
            command = celery_argv(name, env=self.env, concurrency=self.concurrency,
                                  node=f"load-{name}-{uuid.uuid4().hex[:6]}@%h",
                                  schedule=self.logdir / "beat-schedule")  # fmt: skip
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_child_preexec,
        )  # fmt: skip
        log.close()
        self.procs[name] = proc
        if name == "web":
            wait_port(self.port, proc)
        return proc

    def stop(self, name: str, timeout: float = 15.0) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def stop_all(self) -> dict[str, int | None]:
        # the web first (its sockets close), then beat, then the worker (it may be streaming)
        return {name: self.stop(name) for name in ("web", "beat", "worker") if name in self.procs}

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.log"


def make_logdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="load-"))
