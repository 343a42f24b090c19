"""Run the whole chat stack in one terminal: ``python -m chatproject.stack run`` (``make run``).

1. Starts the embedded PostgreSQL/Redis (``chatproject.embedded``) unless DATABASE_URL/REDIS_URL
   are set (in the environment or in .env), and hands their URLs to every child.
2. ``manage.py migrate`` and ``manage.py collectstatic``.
3. Children: Daphne (``[web]``), Celery worker(s) (``[worker]``), the sweeper's small worker
   (``[sweeper]``) and Celery beat (``[beat]``),
   their output prefixed with their name.
4. Ctrl-C / SIGTERM: SIGTERM to the children, SIGKILL after a grace period, then stops the
   embedded servers that this run started (servers that were already running are left alone).
   A child that dies on its own is restarted after a back-off (0.5 s, doubling to 30 s; reset
   once it has run for a minute), so a killed worker is replaced and the sweeper recovers its
   turn. A child that fails again and again right after starting (a port taken, a broken
   setting) is a configuration error: the runner stops everything and exits non-zero.

Django settings are never imported here: the children do that.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / ".devdata"
GRACE_SECONDS = 10.0
RESTART_FIRST_DELAY = 0.5  # seconds before the first restart of a crashed child
RESTART_MAX_DELAY = 30.0
STABLE_SECONDS = 60.0  # a child that ran this long starts its back-off again from the first delay
FAST_FAILURES_FATAL = 5  # this many crashes in a row, each within QUICK_SECONDS of starting: give up
QUICK_SECONDS = 10.0

_print_lock = threading.Lock()
_COLORS = ["36", "33", "35", "32", "34", "31"]


_output_broken = False


def emit(text: str) -> None:
    """Write to stdout; a closed stdout (e.g. `make run | tee` after Ctrl-C killed tee) must
    not stop the runner from cleaning up, so output is dropped from then on."""
    global _output_broken
    with _print_lock:
        if _output_broken:
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (BrokenPipeError, OSError, ValueError):
            _output_broken = True


def say(msg: str) -> None:
    emit(f"[stack] {msg}\n")


def celery_argv(
    kind: str,
    *,
    env: dict[str, str],
    node: str = "",
    concurrency: int = 16,
    pool: str = "threads",
    schedule: str | Path = "",
) -> list[str]:
    """The command of one Celery process of the stack (also used by the test and chaos stacks).

    kind: "worker" runs turns, "sweeper" runs only the sweeper's queue (solo pool, so it is never
    stuck behind long turns), "beat" schedules sweeps. A turn mostly waits for the model, so the
    default pool is threads (one process, `concurrency` turns at once, sharing one chunk writer);
    prefork runs one turn per process.
    """
    base = [sys.executable, "-m", "celery", "-A", "chatproject"]
    if kind == "beat":
        return [*base, "beat", "-l", "info", "--schedule", str(schedule)]
    queue = env.get("CELERY_QUEUE") or "celery"
    argv = [*base, "worker", "-l", "info", "--without-gossip", "--without-mingle"]
    if kind == "worker":
        argv += ["-Q", queue, "-P", pool, "--concurrency", str(concurrency)]
    elif kind == "sweeper":
        argv += ["-Q", f"{queue}.control", "-P", "solo"]  # chatproject.settings.CELERY_CONTROL_QUEUE
    else:
        raise ValueError(kind)
    return argv + (["-n", node] if node else [])


ASGI_SERVERS = ("daphne", "uvicorn")


def asgi_argv(
    app: str = "chatproject.asgi:application",
    *,
    server: str = "daphne",
    host: str = "127.0.0.1",
    port: int = 0,
    fd: int | None = None,
) -> list[str]:
    """The command of one ASGI process (also used by the test stack and the benchmark), bound
    to host:port or to an inherited listening socket `fd`.

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
            sys.executable,
            "-m",
            "uvicorn",
            *bind,
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            "websockets-sansio",
            # as Daphne: no compression (a zlib context per socket) and
            # no lifespan protocol (Channels' router has none)
            "--ws-per-message-deflate",
            "false",
            "--lifespan",
            "off",
            app,
        ]
    raise ValueError(f"unknown ASGI server {server!r} (one of {', '.join(ASGI_SERVERS)})")


def _load_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except Exception:
        return None


# Looked up once here: the function below runs between fork and exec, where a child restarted
# while the output threads run must not import anything (the import lock may be held).
_prctl = _load_prctl() if sys.platform.startswith("linux") else None


def _set_pdeathsig() -> None:
    """In the child: get SIGTERM if the runner dies without cleaning up (e.g. SIGKILL)."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    def __init__(self, name: str, argv: list[str], color: str | None):
        self.name = name
        self.argv = argv
        self.color = color
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None
        self.started_at = 0.0
        self.quick_failures = 0  # crashes in a row, each soon after its start
        self.failures = 0  # crashes since the child last ran for STABLE_SECONDS
        self.restart_at: float | None = None  # when a crashed child is due to start again

    def start(self, env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> None:
        self.started_at = time.monotonic()
        self.restart_at = None
        self.proc = subprocess.Popen(
            self.argv,
            cwd=BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # own process group: the terminal's Ctrl-C reaches only the runner, which then
            # stops the children in order; the group also holds Celery's pool processes
            start_new_session=True,
            pass_fds=pass_fds,
            preexec_fn=_set_pdeathsig if _prctl is not None else None,
        )

    def start_reader(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        self.reader = threading.Thread(
            target=self._pump, args=(self.proc.stdout,), name=f"pump-{self.name}", daemon=True
        )
        self.reader.start()

    def _pump(self, stream: Any) -> None:
        tag = f"[{self.name}]"
        if self.color:
            tag = f"\033[{self.color}m{tag}\033[0m"
        for raw in iter(stream.readline, b""):
            emit(f"{tag} {raw.decode(errors='replace').rstrip(chr(13) + chr(10))}\n")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def group_alive(self) -> bool:
        """Anything left in the child's process group (e.g. Celery pool processes)?"""
        if self.proc is None:
            return False
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def crashed(self, now: float) -> float | None:
        """Book a crash of this (exited) child: the delay before its restart, None to give up."""
        ran = now - self.started_at
        self.failures = 1 if ran >= STABLE_SECONDS else self.failures + 1
        self.quick_failures = self.quick_failures + 1 if ran < QUICK_SECONDS else 0
        if self.quick_failures >= FAST_FAILURES_FATAL:
            return None
        self.restart_at = now + min(RESTART_MAX_DELAY, RESTART_FIRST_DELAY * 2 ** (self.failures - 1))
        return self.restart_at - now


def _read_dotenv() -> None:
    """Honour DATABASE_URL/REDIS_URL from .env like settings does (it setdefaults os.environ)."""
    env_file = BASE_DIR / ".env"
    if env_file.exists():
        import environ

        environ.Env.read_env(str(env_file))


def _manage(args: list[str], env: dict[str, str], label: str) -> None:
    cmd = [sys.executable, str(BASE_DIR / "manage.py"), *args]
    result = subprocess.run(
        cmd,
        cwd=BASE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = result.stdout.splitlines()
    if result.returncode != 0:
        for line in lines:
            say(f"{label}: {line}")
        raise SystemExit(f"[stack] manage.py {' '.join(args)} failed ({result.returncode})")
    applied = [line.strip() for line in lines if line.strip().startswith("Applying ")]
    for line in applied:
        say(f"{label}: {line}")
    if label == "migrate":
        say("migrate: " + (f"{len(applied)} migration(s) applied" if applied else "up to date"))


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"[stack] cannot listen on {host}:{port}: {exc.strerror}") from None


def _shared_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"[stack] cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _probe_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Stopper:
    """Signal handling: before the children run a signal aborts; after, it requests a stop."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.running = False
        self.signals = 0

    def __call__(self, signum: int, frame: object) -> None:
        self.signals += 1
        if not self.running:
            raise KeyboardInterrupt
        if self.signals == 1:
            say(f"got {signal.Signals(signum).name}, stopping (again to force)...")
        self.event.set()


def _stop_children(children: list[Child], stopper: Stopper) -> None:
    alive = [c for c in children if c.alive()]
    for child in alive:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    forced_at = stopper.signals
    while time.monotonic() < deadline and any(c.alive() for c in children):
        if stopper.signals > max(forced_at, 1):
            say("forced stop")
            break
        time.sleep(0.1)
    for child in children:
        if child.alive():
            say(f"{child.name} (pid {child.pid}) did not stop in time: SIGKILL")
            child.signal_group(signal.SIGKILL)
    # leftovers of each group (Celery pool processes whose parent is gone, ...)
    for child in children:
        if child.group_alive():
            child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(c.group_alive() for c in children):
        time.sleep(0.1)
    for child in children:
        if child.group_alive():
            child.signal_group(signal.SIGKILL)
    for child in children:
        if child.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)
        if child.reader is not None:
            child.reader.join(timeout=2)


def _supervise(children: list[Child], env: dict[str, str], pass_fds: tuple[int, ...]) -> bool:
    """One round: book the children that died, restart those whose back-off is over; False when
    one keeps failing right after it starts."""
    now = time.monotonic()
    for child in children:
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.start(env, pass_fds if child.name.startswith("web") else ())
                child.start_reader()
                say(f"{child.name} restarted (pid {child.pid})")
            continue
        if child.alive():
            continue
        assert child.proc is not None
        code = child.proc.returncode
        child.signal_group(signal.SIGKILL)  # what it left behind (Celery pool processes)
        delay = child.crashed(now)
        if delay is None:
            say(f"{child.name} exited with code {code} {FAST_FAILURES_FATAL} times in a row "
                f"within {QUICK_SECONDS:.0f}s of starting; see its output above")  # fmt: skip
            return False
        say(f"{child.name} exited unexpectedly with code {code}; restarting in {delay:.1f}s")
    return True


def run(args: argparse.Namespace) -> int:
    stopper = Stopper()
    signal.signal(signal.SIGINT, stopper)
    signal.signal(signal.SIGTERM, stopper)
    signal.signal(signal.SIGHUP, stopper)

    _read_dotenv()
    need_pg = not os.environ.get("DATABASE_URL")
    need_redis = not os.environ.get("REDIS_URL")
    started_services: list[str] = []
    children: list[Child] = []
    listener: socket.socket | None = None
    exit_code = 0
    try:
        # fail fast, before starting anything, when the web port is taken
        pass_fds: tuple[int, ...] = ()
        web_fd: int | None = None
        if args.asgi == 1:
            _check_port_free(args.host, args.port)
        elif args.asgi > 1:
            # several Daphne processes accept on one listening socket made here
            listener = _shared_listener(args.host, args.port)
            pass_fds = (listener.fileno(),)
            web_fd = listener.fileno()

        env = dict(os.environ)
        if need_pg or need_redis:
            from chatproject import embedded

            t0 = time.monotonic()
            result = embedded.start_services(DATA_DIR, postgres=need_pg, redis=need_redis)
            started_services = result.started
            env.update(result.env)
            what = ", ".join(result.started) or "none (already running)"
            say(f"embedded services ready in {time.monotonic() - t0:.1f}s; started: {what}")
        env.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
        env["PYTHONUNBUFFERED"] = "1"
        say(f"DATABASE_URL={env.get('DATABASE_URL')}  REDIS_URL={env.get('REDIS_URL')}")

        _manage(["migrate", "--noinput"], env, "migrate")
        _manage(["collectstatic", "--noinput", "--verbosity", "0"], env, "collectstatic")

        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        palette = iter(_COLORS * 10)
        for i in range(args.asgi):
            name = "web" if i == 0 else f"web{i + 1}"
            argv = asgi_argv(host=args.host, port=args.port, fd=web_fd)
            children.append(Child(name, argv, next(palette) if color else None))
        for i in range(args.workers):
            name = "worker" if i == 0 else f"worker{i + 1}"
            argv = celery_argv(
                "worker", env=env, concurrency=args.concurrency, pool=args.pool, node=f"{name}@%h"
            )
            children.append(Child(name, argv, next(palette) if color else None))
        if args.beat:
            DATA_DIR.mkdir(parents=True, exist_ok=True)
            argv = celery_argv("sweeper", env=env, node="sweeper@%h")
            children.append(Child("sweeper", argv, next(palette) if color else None))
            argv = celery_argv("beat", env=env, schedule=DATA_DIR / "celerybeat-schedule")
            children.append(Child("beat", argv, next(palette) if color else None))

        # spawn all first (preexec_fn is only safe before the reader threads exist), then read
        stopper.running = True
        for child in children:
            child.start(env, pass_fds if child.name.startswith("web") else ())
        # the runner keeps the shared listener open: a restarted Daphne gets it again, and
        # connections made while none accepts wait in its backlog
        for child in children:
            child.start_reader()
        say("started " + ", ".join(f"{c.name} (pid {c.pid})" for c in children))

        announced = args.asgi == 0
        if announced:
            say("running without a web server (Ctrl-C to stop)")
        started_at = time.monotonic()
        warned = False
        while not stopper.event.wait(0.2):
            if not _supervise(children, env, pass_fds):
                say("shutting everything down")
                exit_code = 1
                break
            if not announced:
                with contextlib.suppress(OSError):
                    socket.create_connection((_probe_host(args.host), args.port), 0.2).close()
                    announced = True
                    url = f"http://{_url_host(args.host)}:{args.port}/"
                    emit(f"\n    Chat is running at {url} (Ctrl-C to stop)\n\n")
                if not announced and not warned and time.monotonic() - started_at > 30:
                    warned = True
                    say(f"web server still not answering on {args.host}:{args.port}")
    except KeyboardInterrupt:
        say("interrupted")
        exit_code = 130
    except SystemExit as exc:
        if exc.code not in (None, 0):
            if isinstance(exc.code, str):
                with contextlib.suppress(OSError):
                    print(exc.code, file=sys.stderr, flush=True)
            exit_code = exc.code if isinstance(exc.code, int) else 1
    finally:
        # from here on a signal only counts towards forcing
        stopper.running = True
        stopper.event.set()
        stopping_at = time.monotonic()
        if listener is not None:
            listener.close()
        if children:
            say("stopping " + ", ".join(c.name for c in children if c.alive()))
            _stop_children(children, stopper)
        if started_services:
            from chatproject import embedded

            say("stopping embedded " + ", ".join(started_services))
            embedded.stop_services(
                DATA_DIR,
                postgres="postgres" in started_services,
                redis="redis" in started_services,
            )
        say(f"stopped in {time.monotonic() - stopping_at:.1f}s")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatproject.stack")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run Daphne + Celery worker + beat (+ embedded services)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--asgi", type=int, default=1, help="Daphne processes (default 1)")
    p.add_argument("--workers", type=int, default=1, help="Celery worker processes (default 1)")
    p.add_argument("--concurrency", type=int, default=16, help="turns at once per worker (default 16)")
    p.add_argument(
        "--pool", choices=["threads", "prefork"], default="threads", help="Celery pool (default threads)"
    )
    p.add_argument("--beat", type=int, choices=[0, 1], default=1, help="run Celery beat")
    args = parser.parse_args(argv)
    if args.asgi < 0 or args.workers < 0 or args.concurrency < 1:
        parser.error("--asgi/--workers must be >= 0 and --concurrency >= 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
