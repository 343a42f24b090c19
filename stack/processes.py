"""The one description of the stack's processes: what `make run`, the tests, the benchmarks and the
chaos run start, each for its own ports, process counts and worker pool.

A `Process` is a name, a command and a count; `stack.supervisor` runs a list of them. Nothing
here starts anything or imports Django.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

ASGI_SERVERS = ("daphne", "uvicorn")
# `make run`'s defaults (docs/performance.md, "Many rooms at once"): a worker process runs its
# Python on one core at a time (the GIL), so several processes, each streaming many turns (a turn
# mostly waits for the model); on one machine with the web process, Postgres and Redis, half the
# cores (measured: on 2 cores a second worker made 100 streaming rooms slower, on 4 more so).
DEFAULT_CONCURRENCY = 64


def default_workers() -> int:
    """Worker processes for `make run` on this machine: half the cores it may use, at least 1
    (a machine that runs only workers: one per core, docs/deploy.md)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


SHARED_SOCKET_FD = "$(circus.sockets.web)"  # the supervisor puts the fd of its listening socket here


@dataclass(frozen=True)
class Process:
    """One kind of process: `count` copies of `argv`, named `name` (web, worker, sweeper, beat)."""

    name: str
    argv: list[str]
    count: int = 1
    shares_socket: bool = False  # accepts on the supervisor's listening socket (SHARED_SOCKET_FD)
    env: dict[str, str] = field(default_factory=dict)  # on top of the stack's environment
    autostart: bool = True  # False: starts only when asked (the supervisor's `start`)


@dataclass(frozen=True)
class StackConfig:
    """What differs between `make run`, the test session, the benchmarks and the chaos run."""

    host: str = "127.0.0.1"
    port: int = 8000
    asgi: int = 1  # ASGI processes, all accepting on one listening socket
    server: str = "daphne"
    workers: int = 1
    concurrency: int = DEFAULT_CONCURRENCY  # turns at once per worker
    pool: str = "threads"
    beat: bool = True  # the sweeper and Celery beat
    queue: str = "celery"  # CELERY_QUEUE
    node: str = ""  # prefix of the Celery node names (several stacks on one broker)
    schedule: Path = Path(".devdata/celerybeat-schedule")


def served_origins(host: str, port: int) -> list[str]:
    """The browser origins of a site served on host:port (its ALLOWED_ORIGINS by default)."""
    names = {"0.0.0.0": ["127.0.0.1", "localhost"], "": ["127.0.0.1", "localhost"],
             "127.0.0.1": ["127.0.0.1", "localhost"], "::": ["[::1]", "localhost"],
             "::1": ["[::1]", "localhost"], "localhost": ["localhost", "127.0.0.1"]}  # fmt: skip
    hosts = names.get(host, [f"[{host}]" if ":" in host else host])
    return [f"http://{h}:{port}" for h in hosts]


def celery_argv(
    kind: str,
    *,
    queue: str = "celery",
    node: str = "",
    concurrency: int = DEFAULT_CONCURRENCY,
    pool: str = "threads",
    schedule: str | Path = "",
) -> list[str]:
    """The command of one Celery process.

    kind: "worker" runs turns, "sweeper" runs only the sweeper's queue (solo pool, so it is never
    stuck behind long turns), "beat" schedules sweeps, "hooks" sends webhooks. A turn mostly waits
    for the model, so the default pool is threads (one process, `concurrency` turns at once,
    sharing one chunk writer); prefork runs one turn per process.
    """
    base = [sys.executable, "-m", "celery", "-A", "chatproject"]
    if kind == "beat":
        return [*base, "beat", "-l", "info", "--schedule", str(schedule)]
    argv = [*base, "worker", "-l", "info", "--without-gossip", "--without-mingle"]
    if kind == "worker":
        argv += ["-Q", queue, "-P", pool, "--concurrency", str(concurrency)]
    elif kind == "sweeper":
        argv += ["-Q", f"{queue}.control", "-P", "solo"]  # chatproject.settings.CELERY_CONTROL_QUEUE
    elif kind == "hooks":
        # webhook deliveries (settings CELERY_TASK_ROUTES): threads, as they wait on the network
        argv += ["-Q", f"{queue}.webhooks", "-P", "threads", "--concurrency", "8"]
    else:
        raise ValueError(kind)
    return argv + (["-n", node] if node else [])


def asgi_argv(
    app: str = "chatproject.asgi:application",
    *,
    server: str = "daphne",
    host: str = "127.0.0.1",
    port: int = 0,
    fd: int | str | None = None,
) -> list[str]:
    """The command of one ASGI process, bound to host:port or to an inherited listening socket.

    server: "daphne" (on the design card; `make run` always uses it) or "uvicorn" (uvloop,
    httptools, the websockets sans-I/O protocol), which `python -m bench.perf --server uvicorn`
    and the tests (ASGI_SERVER=uvicorn) can run instead: measured side by side in
    docs/performance.md, it was not clearly better, so it is no `make run` option.
    """
    if server == "daphne":
        bind = ["--fd", str(fd)] if fd is not None else ["-b", host, "-p", str(port)]
        return [sys.executable, "-m", "daphne", *bind, app]
    if server == "uvicorn":
        bind = ["--fd", str(fd)] if fd is not None else ["--host", host, "--port", str(port)]
        return [
            sys.executable, "-m", "uvicorn", *bind,
            "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio",
            # as Daphne: no compression (a zlib context per socket) and
            # no lifespan protocol (Channels' router has none)
            "--ws-per-message-deflate", "false", "--lifespan", "off",
            app,
        ]  # fmt: skip
    raise ValueError(f"unknown ASGI server {server!r} (one of {', '.join(ASGI_SERVERS)})")


def stack_processes(config: StackConfig) -> list[Process]:
    """The processes of one stack: ASGI servers, Celery workers, the sweeper and beat."""
    node = config.node or ""
    procs = []
    if config.asgi:
        argv = asgi_argv(server=config.server, fd=SHARED_SOCKET_FD)
        procs.append(Process("web", argv, count=config.asgi, shares_socket=True))
    if config.workers:
        # $(circus.wid) numbers the copies 1..count: Celery node names must be unique
        suffix = "$(circus.wid)" if config.workers > 1 else ""
        argv = celery_argv(
            "worker", queue=config.queue, node=f"{node}worker{suffix}@%h",
            concurrency=config.concurrency, pool=config.pool,
        )  # fmt: skip
        procs.append(Process("worker", argv, count=config.workers))
    if config.beat:
        procs.append(Process("sweeper", celery_argv("sweeper", queue=config.queue, node=f"{node}sweeper@%h")))
        procs.append(Process("beat", celery_argv("beat", schedule=config.schedule)))
        procs.append(Process("hooks", celery_argv("hooks", queue=config.queue, node=f"{node}hooks@%h")))
    return procs
