"""What the benchmark starts itself: services, a fresh database, and its own processes.

Embedded Postgres/Redis (stack.services.start_missing) unless DATABASE_URL/REDIS_URL are
set; a fresh database ``bench_<pid>`` (created, migrated, dropped at exit); and child processes
(the relay, the minimal Channels app, the project's Daphne, a Celery worker, the fake OpenAI
server, the injector and producer), each in its own session so that stopping one ends exactly
the processes this run started (by process group id, never by name).
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

import psutil

from bench import common
from bench.common import free_port, service_urls, wait_port  # noqa: F401 - this module's API

ROOT = Path(__file__).resolve().parents[2]
DB_PREFIX = "bench_"
NOFILE = 65536


def raise_nofile(target: int = NOFILE) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        if hard != resource.RLIM_INFINITY and hard < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class FreshDatabase(common.FreshDatabase):
    PREFIX = DB_PREFIX

    def xact_commit(self) -> int:
        """Transactions committed in our database so far (pg_stat_database)."""
        with self.admin() as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [self.name]
            ).fetchone()
            return int(row[0]) if row else 0


def _preexec() -> None:
    raise_nofile()


@dataclass
class Procs:
    """Child processes of this run, by name; logs in `logdir`."""

    logdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-perf-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, name: str, cmd: list[str], env: dict[str, str], port: int | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_preexec,
        )
        log.close()
        self.procs[name] = proc
        if port is not None:
            wait_port(port, proc)
        return proc

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self, name: str, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # pool children that outlived the parent
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.logdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User+system CPU seconds of a process (and, optionally, its live children)."""
    p = psutil.Process(pid)
    t = p.cpu_times()
    total = t.user + t.system
    if children:
        for c in p.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                ct = c.cpu_times()
                total += ct.user + ct.system
    return total


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def run_id() -> str:
    return uuid.uuid4().hex[:8]


PY = sys.executable
