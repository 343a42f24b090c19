"""The stack's process description (`stack.processes`) for a production process manager.

`python -m stack export procfile|systemd|circus` prints the same processes `make run` starts,
with the ASGI servers on consecutive ports behind your proxy instead of one shared socket
(docs/deploy.md). The environment (DATABASE_URL, REDIS_URL, SECRET_KEY, ...) is the manager's
to set: an `EnvironmentFile` for systemd, `.env` for a Procfile runner.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from stack.processes import SHARED_SOCKET_FD, Process, StackConfig, asgi_argv, stack_processes

FORMATS = ("procfile", "systemd", "circus")


def export_processes(config: StackConfig) -> list[Process]:
    """One entry per process: `web.1`, `web.2`... on consecutive ports, then the Celery ones."""
    out = []
    for proc in stack_processes(config):
        if proc.shares_socket:
            for i in range(proc.count):
                argv = asgi_argv(server=config.server, host=config.host, port=config.port + i)
                out.append(Process(f"{proc.name}.{i + 1}", argv))
            continue
        for i in range(proc.count):
            argv = [a.replace("$(circus.wid)", str(i + 1)) for a in proc.argv]
            assert SHARED_SOCKET_FD not in argv
            out.append(Process(proc.name if proc.count == 1 else f"{proc.name}.{i + 1}", argv))
    return out


def _command(proc: Process) -> str:
    # %h (the Celery node's host name) must reach Celery as it is: systemd expands % itself
    return shlex.join(proc.argv)


def as_procfile(processes: list[Process]) -> str:
    """A Procfile (honcho, foreman, overmind...): one line per process."""
    return "".join(f"{p.name.replace('.', '_')}: {_command(p)}\n" for p in processes)


def as_systemd(processes: list[Process], *, workdir: Path, env_file: str = "/etc/chat/env") -> str:
    """One systemd unit per process, each after a `### <name>.service` line."""
    units = []
    for p in processes:
        name = f"chat-{p.name.replace('.', '-')}"
        stop = "TERM"  # Daphne closes sockets with 4012; Celery ends running turns gracefully
        units.append(
            f"### {name}.service\n[Unit]\nDescription=chat {p.name}\nAfter=network-online.target\n\n"
            f"[Service]\nWorkingDirectory={workdir}\nEnvironmentFile={env_file}\n"
            f"ExecStart={_command(p).replace('%', '%%')}\nKillSignal=SIG{stop}\nTimeoutStopSec=30\n"
            f"Restart=always\nRestartSec=1\n\n[Install]\nWantedBy=multi-user.target\n"
        )
    return "\n".join(units)


def as_circus(processes: list[Process], *, workdir: Path) -> str:
    """A circus.ini (the supervisor `make run` uses), one watcher per process."""
    parts = ["[circus]\ncheck_delay = 1\n"]
    for p in processes:
        parts.append(
            f"[watcher:{p.name}]\ncmd = {_command(p)}\nworking_dir = {workdir}\n"
            "numprocesses = 1\nstop_signal = TERM\ngraceful_timeout = 30\ncopy_env = True\n"
        )
    return "\n".join(parts)


def export(fmt: str, config: StackConfig, *, workdir: Path) -> str:
    """The processes of `config` in format `fmt` (one of FORMATS)."""
    processes = export_processes(config)
    if fmt == "procfile":
        return as_procfile(processes)
    if fmt == "systemd":
        return as_systemd(processes, workdir=workdir)
    if fmt == "circus":
        return as_circus(processes, workdir=workdir)
    raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
