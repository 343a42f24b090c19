"""What every benchmark and the chaos run need alike: free ports, waiting for a listener, the
service URLs, and a fresh database per run (created on a server, dropped at the end, with the
databases of earlier runs that died dropped first). Imports no Django."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    """Wait until something listens on 127.0.0.1:port; fail early if `proc` exits first."""
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
    """DATABASE_URL (a server to create our database on) and REDIS_URL: the environment's, else
    the embedded servers'."""
    urls = {k: os.environ[k] for k in ("DATABASE_URL", "REDIS_URL") if os.environ.get(k)}
    if len(urls) < 2:
        from stack import services

        for key, value in services.start_missing(ROOT / ".devdata").env.items():
            urls.setdefault(key, value)
    return urls


def with_db(url: str, name: str) -> str:
    """The URL with its database name replaced."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


class FreshDatabase:
    """`<PREFIX><pid>` on the server of `server_url`; `url` is its DATABASE_URL."""

    PREFIX = "run_"

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"{self.PREFIX}{os.getpid()}"
        self.created = False

    @property
    def url(self) -> str:
        return with_db(self.server_url, self.name)

    def admin(self) -> Any:
        """An autocommit connection to the server's `postgres` database (never to ours)."""
        import psycopg

        return psycopg.connect(with_db(self.server_url, "postgres"), autocommit=True, connect_timeout=10)

    def create(self) -> list[str]:
        """Drop the databases of earlier runs whose process is gone, then create ours; returns
        the names dropped."""
        dropped = []
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{self.PREFIX}%"]
            ).fetchall()
            for (name,) in rows:
                m = re.fullmatch(rf"{re.escape(self.PREFIX)}(\d+)", name)
                if m and (name == self.name or not psutil.pid_exists(int(m.group(1)))):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    dropped.append(name)
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.created = True
        return dropped

    def drop(self) -> None:
        if not self.created:
            return
        with contextlib.suppress(Exception), self.admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.created = False
