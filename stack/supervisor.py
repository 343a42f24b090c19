"""The supervisor: a circus arbiter running a list of `stack.processes.Process`.

circus starts each process in a session of its own, hands the ASGI processes one listening
socket (so several Daphnes accept on one port, and connections made while none runs wait in its
backlog), restarts a process that exits, and answers commands on a control socket. On top of it:

- `RestartingWatcher` restarts a crashed process after a back-off (0.5 s, doubling to 30 s,
  from the first delay again once it ran a minute) instead of at once, and gives up on a process
  that fails right after every start (a port taken, a broken setting): the supervisor then stops
  everything and exits 1. A crash is any exit nobody asked for, SIGTERM from outside included.
- `run()` runs the arbiter in this process (`python -m stack run`, and the background mode).
- `Supervisor` runs one in a process of its own for the tests, the benchmarks and the chaos run,
  and drives it by name: pids, kill, stop, start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stack.processes import Process

ROOT = Path(__file__).resolve().parent.parent
GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL after this long
CHECK_DELAY = 0.25  # how often the arbiter looks for exited processes
_SETPRIV = shutil.which("setpriv")
_COLORS = ["36", "33", "35", "32", "34", "31"]


# --- restart policy ------------------------------------------------------------------------


@dataclass
class Backoff:
    """When to restart a crashed process, and when to give up on it."""

    first_delay: float = 0.5
    max_delay: float = 30.0
    stable_seconds: float = 60.0  # a process that ran this long starts again from first_delay
    quick_seconds: float = 10.0  # a crash this soon after the start is a quick failure
    fatal_quick_failures: int | None = 5  # give up after this many in a row (None: never)
    failures: int = 0  # crashes since the process last ran for stable_seconds
    quick_failures: int = 0  # crashes in a row, each within quick_seconds of its start

    def crashed(self, ran: float) -> float | None:
        """Book a crash after `ran` seconds of running: the delay before the restart, or None."""
        self.failures = 1 if ran >= self.stable_seconds else self.failures + 1
        self.quick_failures = self.quick_failures + 1 if ran < self.quick_seconds else 0
        if self.fatal_quick_failures is not None and self.quick_failures >= self.fatal_quick_failures:
            return None
        return min(self.max_delay, self.first_delay * 2 ** (self.failures - 1))


# --- output --------------------------------------------------------------------------------


class _Output:
    """stdout shared by every process's output; a closed stdout (`make run | tee` after Ctrl-C
    killed tee) must not stop the supervisor from cleaning up, so output is dropped then."""

    lock = threading.Lock()
    broken = False

    @classmethod
    def write(cls, text: str) -> None:
        with cls.lock:
            if cls.broken:
                return
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except (OSError, ValueError):
                cls.broken = True


def say(msg: str) -> None:
    """A line of the supervisor's own."""
    _Output.write(f"[stack] {msg}\n")


class PrefixStream:
    """A circus stream: each line of a process's output on stdout as `[name] line`."""

    def __init__(self, name: str = "", color: str = "", **_: Any) -> None:
        self.tag = f"\033[{color}m[{name}]\033[0m" if color else f"[{name}]"
        self.partial: dict[int, bytes] = {}

    def __call__(self, data: dict[str, Any]) -> None:
        chunk = self.partial.pop(data["pid"], b"") + data["data"]
        *lines, rest = chunk.split(b"\n")
        if rest:
            self.partial[data["pid"]] = rest
        if lines:
            _Output.write("".join(f"{self.tag} {ln.decode(errors='replace').rstrip()}\n" for ln in lines))

    def close(self) -> None:
        pass


# --- the watcher ---------------------------------------------------------------------------


def _exit_code(status: int | None) -> int | None:
    if status is None:
        return None
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _wait_status(pid: int, timeout: float = 2.0) -> int | None:
    """The wait status of a child that is exiting (a killed process whose threads are still
    being torn down shows as a zombie before waitpid returns it); None when it is not ours."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() > deadline:
            return None
        time.sleep(0.005)


def _watcher_class() -> type:
    from circus.process import DEAD_OR_ZOMBIE, UNEXISTING
    from circus.watcher import Watcher
    from tornado import gen

    class RestartingWatcher(Watcher):
        """A circus watcher that restarts a crashed process after a back-off."""

        def __init__(self, *args: Any, backoff: Backoff, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.backoff = backoff
            self.restart_at: float | None = None
            self.started_at: dict[int, float] = {}

        def reap_process(self, pid: int, status: int | None = None) -> None:
            process = self.processes.get(pid)
            crashed = process is not None and self._status == "active" and not process.stopping
            if process is not None and status is None:
                status = _wait_status(pid)
            super().reap_process(pid, status)
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # what it left in its session (Celery pool processes)
            if not crashed:
                return
            now = time.monotonic()
            delay = self.backoff.crashed(now - self.started_at.pop(pid, now))
            code = _exit_code(status)
            if delay is None:
                times, within = self.backoff.quick_failures, self.backoff.quick_seconds
                say(f"{self.name} exited with code {code} {times} times in a row, each within "
                    f"{within:.0f}s of starting; giving up (see its output)")  # fmt: skip
                self.arbiter.gave_up.append(self.name)
                self.arbiter.loop.add_callback(_stop_when_free, self.arbiter)
                return
            say(f"{self.name} exited unexpectedly with code {code}; restarting in {delay:.1f}s")
            self.restart_at = max(self.restart_at or 0.0, now + delay)

        @gen.coroutine
        def manage_processes(self) -> Any:
            if not self.is_stopped():
                # circus drops a process it sees dead here without reaping it, and starts
                # another at once: a crash that lands between its waitpid and this check would
                # skip the back-off and the log line (seen with SIGKILLed Celery workers)
                for pid, process in list(self.processes.items()):
                    if not process.stopping and process.status in (DEAD_OR_ZOMBIE, UNEXISTING):
                        self.reap_process(pid)
            if self.restart_at is not None:
                if len(self.processes) >= self.numprocesses:
                    self.restart_at = None  # started again by a command meanwhile
                elif time.monotonic() < self.restart_at:
                    return
            yield super().manage_processes()

        def spawn_process(self, recovery_wid: Any = None) -> Any:
            before = set(self.processes)
            result = super().spawn_process(recovery_wid)
            for pid in set(self.processes) - before:
                self.started_at[pid] = time.monotonic()
                if self.restart_at is not None:
                    say(f"{self.name} restarted (pid {pid})")
            return result

        @gen.coroutine
        def _start(self) -> Any:
            self.restart_at = None
            yield super()._start()

    return RestartingWatcher


def _stop_when_free(arbiter: Any) -> None:
    """Stop the arbiter once it runs no other command (circus refuses two at once)."""
    if arbiter._exclusive_running_command is not None:
        arbiter.loop.call_later(0.1, _stop_when_free, arbiter)
    elif not arbiter._stopping:
        arbiter.stop()


def _arbiter_class() -> type:
    from circus.arbiter import Arbiter

    class QuietArbiter(Arbiter):
        """Skips a round of looking after its processes while a command runs (a stop, waiting
        for a process to exit), instead of logging circus's ConflictError four times a second."""

        def manage_watchers(self) -> Any:
            if self._stopping or self._exclusive_running_command is not None:
                return None
            return super().manage_watchers()

    return QuietArbiter


# --- running the arbiter -------------------------------------------------------------------


@dataclass
class Plan:
    """Everything one supervisor runs (also what a background supervisor reads from its file)."""

    processes: list[Process]
    env: dict[str, str]
    control_dir: str  # where its control and event sockets are
    host: str = "127.0.0.1"
    port: int = 0  # of the shared listening socket, when a process shares it
    logdir: str = ""  # a log file per process there; empty: prefixed lines on stdout
    give_up: bool = True  # on a process that fails right after every start

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Plan:
        raw = json.loads(path.read_text())
        raw["processes"] = [Process(**p) for p in raw["processes"]]
        return cls(**raw)


def endpoints(control_dir: str | Path) -> tuple[str, str]:
    """The control and event endpoints of a supervisor."""
    return f"ipc://{control_dir}/control", f"ipc://{control_dir}/events"


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"[stack] cannot listen on {host}:{port}: {exc.strerror}") from None


def _streams(plan: Plan, proc: Process, color: str) -> dict[str, Any]:
    if plan.logdir:
        path = str(Path(plan.logdir) / f"{proc.name}.log")
        return {"stdout_stream": {"class": "FileStream", "filename": path},
                "stderr_stream": {"class": "FileStream", "filename": path}}  # fmt: skip
    stream = {"class": "stack.supervisor.PrefixStream", "name": proc.name, "color": color}
    return {"stdout_stream": dict(stream), "stderr_stream": dict(stream)}


def build_arbiter(plan: Plan) -> Any:
    """The circus arbiter of `plan` (not started)."""
    from circus.sockets import CircusSocket

    Watcher = _watcher_class()
    color = not plan.logdir and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    watchers = []
    for i, proc in enumerate(plan.processes):
        # the parent-death signal: a process whose supervisor was SIGKILLed ends too
        argv = [_SETPRIV, "--pdeathsig", "TERM", "--", *proc.argv] if _SETPRIV else proc.argv
        backoff = Backoff(fatal_quick_failures=5 if plan.give_up else None)
        watchers.append(Watcher(
            proc.name, shlex.quote(argv[0]), args=argv[1:], numprocesses=proc.count,
            working_dir=str(ROOT), env={**plan.env, **proc.env}, copy_env=False,
            use_sockets=proc.shares_socket, stop_signal=signal.SIGTERM,
            graceful_timeout=GRACE_SECONDS, autostart=proc.autostart, backoff=backoff,
            max_retry=3, **_streams(plan, proc, _COLORS[i % len(_COLORS)] if color else ""),
        ))  # fmt: skip
    sockets = []
    if any(p.shares_socket for p in plan.processes):
        _check_port_free(plan.host, plan.port)
        sockets.append(CircusSocket("web", host=plan.host, port=plan.port, backlog=1024))
    control, events = endpoints(plan.control_dir)
    arbiter = _arbiter_class()(watchers, control, events, check_delay=CHECK_DELAY, sockets=sockets)
    arbiter.gave_up = []
    return arbiter


def run(plan: Plan, on_started: Any = None) -> int:
    """Run `plan` in this process until SIGINT/SIGTERM/SIGHUP or a `quit` command: 0, or 1 when
    it gave up on a process. `on_started(arbiter)` runs once every process was started."""
    logging.basicConfig(format="[circus] %(message)s", level=logging.WARNING)
    Path(plan.control_dir).mkdir(parents=True, exist_ok=True)
    arbiter = build_arbiter(plan)

    def started(_future: Any) -> None:
        # a closed terminal stops the stack (circus would reload it)
        arbiter.ctrl.sys_hdl.handle_hup = arbiter.ctrl.sys_hdl.quit
        if on_started is not None:
            on_started(arbiter)

    arbiter.start(started)
    return 1 if arbiter.gave_up else 0


def pids_of(arbiter: Any) -> dict[str, list[int]]:
    """The pids of each watcher of a running arbiter (from its own thread)."""
    return {w.name: sorted(w.processes) for w in arbiter.iter_watchers()}


# --- a supervisor in a process of its own --------------------------------------------------


class Supervisor:
    """`processes` under a supervisor process of their own, logs in `logdir/<name>.log`;
    each process is addressed by its name."""

    def __init__(
        self,
        processes: list[Process],
        *,
        env: dict[str, str],
        logdir: Path,
        port: int = 0,
        give_up: bool = False,
    ) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        # a short path of its own: ipc:// paths are limited to ~100 characters
        self.control_dir = Path(tempfile.mkdtemp(prefix="stack-"))
        self.plan = Plan(processes, env, str(self.control_dir), port=port, logdir=str(self.logdir),
                         give_up=give_up)  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    def start(self, timeout: float = 60.0) -> Supervisor:
        """Start the supervisor and wait until it has started each autostarted process."""
        spec = self.control_dir / "plan.json"
        self.plan.dump(spec)
        argv = [sys.executable, "-m", "stack", "supervise", str(spec)]
        if _SETPRIV:  # it stops everything when the process that started it dies
            argv = [_SETPRIV, "--pdeathsig", "TERM", "--", *argv]
        with open(self.logdir / "supervisor.log", "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        from circus.client import CircusClient

        # longer than a grace period: a `stop`/`start ... waiting` may wait behind another
        # watcher's SIGTERM-to-SIGKILL spell (a 10 s timeout failed the chaos run under load)
        self._client = CircusClient(endpoint=endpoints(self.control_dir)[0], timeout=3 * GRACE_SECONDS)
        deadline = time.monotonic() + timeout
        wanted = [p for p in self.plan.processes if p.autostart]
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the supervisor exited ({self.proc.returncode}): {self.log_tail()}")
            with contextlib.suppress(Exception):
                statuses = self.call("status")["statuses"]
                if all(statuses.get(p.name) == "active" for p in wanted):
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"the supervisor did not start everything: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, name: str = "supervisor", lines: int = 30) -> str:
        path = self.logdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def call(self, command: str, **props: Any) -> dict[str, Any]:
        """One circus command (list, status, start, stop, ...); its answer."""
        answer: dict[str, Any] = self._client.send_message(command, **props)
        if answer.get("status") == "error":
            raise RuntimeError(f"{command} {props}: {answer.get('reason')}")
        return answer

    def names(self) -> list[str]:
        return [p.name for p in self.plan.processes]

    def pids(self, name: str) -> list[int]:
        """The pids of the processes named `name` (empty while it is stopped or restarting)."""
        return sorted(int(p) for p in self.call("list", name=name)["pids"])

    def pid(self, name: str) -> int | None:
        pids = self.pids(name)
        return pids[0] if pids else None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> list[int]:
        """Send `sig` to the sessions of `name`'s processes (with Celery's pool processes);
        the supervisor restarts them after its back-off unless `name` was stopped."""
        pids = self.pids(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
                os.killpg(pid, signal.SIGCONT)  # a stopped process must see the signal
        return pids

    def stop(self, name: str) -> None:
        """Stop `name` (SIGTERM, SIGKILL after the grace period) and keep it stopped."""
        self.call("stop", name=name, waiting=True)

    def resume(self, name: str, timeout: float = 60.0) -> list[int]:
        """Start `name` (again) at once and wait until its processes run; their pids."""
        self.call("start", name=name, waiting=True)
        count = next(p.count for p in self.plan.processes if p.name == name)
        deadline = time.monotonic() + timeout
        while len(pids := self.pids(name)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not start: {self.log_tail(name)}")
            time.sleep(0.05)
        return pids

    def close(self, timeout: float = 60.0) -> int | None:
        """Stop every process and the supervisor; its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._client is not None:
            self._client.stop()
        shutil.rmtree(self.control_dir, ignore_errors=True)
        return self.proc.returncode


def wait_http(port: int, host: str = "127.0.0.1", timeout: float = 60.0) -> None:
    """Wait until an HTTP server answers on host:port (a listening socket alone may be the
    supervisor's, with no ASGI process accepting yet)."""
    import http.client

    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no HTTP answer on {host}:{port}") from None
            time.sleep(0.1)
        finally:
            conn.close()
