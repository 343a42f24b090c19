"""What the benchmark starts itself: services, a fresh database, and its own processes.

Embedded Postgres/Redis (chatproject.embedded.ensure_services) unless DATABASE_URL/REDIS_URL are
set; a fresh database ``bench_<pid>`` (created, migrated, dropped at exit); and child processes
(the relay, the minimal Channels app, the project's Daphne, a Celery worker, the fake OpenAI
server, the injector and producer), each in its own session so that stopping one ends exactly
the processes this run started (by process group id, never by name).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def service_urls() -> dict[str, str]:
    """DATABASE_URL (a server to create our database on) and REDIS_URL."""
    urls = {k: os.environ[k] for k in ("DATABASE_URL", "REDIS_URL") if os.environ.get(k)}
    if len(urls) < 2:
        from chatproject.embedded import ensure_services

        for key, value in ensure_services(ROOT / ".devdata").items():
            urls.setdefault(key, value)
    return urls


def with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class FreshDatabase:
    admin_url: str
    name: str = field(default_factory=lambda: f"{DB_PREFIX}{os.getpid()}")
    created: bool = False

    @property
    def url(self) -> str:
        return with_db(self.admin_url, self.name)

    @property
    def maintenance_url(self) -> str:
        return with_db(self.admin_url, "postgres")

    def admin(self):  # noqa: ANN201
        import psycopg

        return psycopg.connect(self.maintenance_url, autocommit=True, connect_timeout=10)

    def create(self) -> None:
        """Drop databases of earlier runs whose process is gone, then create ours."""
        with self.admin() as conn:
            for (name,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{DB_PREFIX}%"]
            ).fetchall():
                m = re.fullmatch(rf"{DB_PREFIX}(\d+)", name)
                if m and (name == self.name or not _pid_alive(int(m.group(1)))):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.created = True

    def drop(self) -> None:
        if not self.created:
            return
        with contextlib.suppress(Exception), self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.created = False

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
        log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
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
