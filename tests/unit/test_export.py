"""The process description exported for production process managers (no Django needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.export import export, export_processes
from stack.processes import StackConfig, stack_processes


@pytest.fixture(autouse=True)
def _isolated_run() -> None:
    """Override tests/conftest.py's autouse fixture: nothing here needs the stack."""


def test_exported_processes_are_make_runs_with_asgi_servers_on_consecutive_ports():
    config = StackConfig(host="0.0.0.0", port=9000, asgi=2, workers=2)
    exported = export_processes(config)
    assert [p.name for p in exported] == [
        "web.1",
        "web.2",
        "worker.1",
        "worker.2",
        "sweeper",
        "beat",
        "hooks",
    ]
    assert exported[0].argv[-5:] == ["-b", "0.0.0.0", "-p", "9000", "chatproject.asgi:application"]
    assert exported[1].argv[-5:] == ["-b", "0.0.0.0", "-p", "9001", "chatproject.asgi:application"]
    # the Celery processes are exactly make run's, with unique node names
    ours = {p.name: p.argv for p in stack_processes(config)}
    assert [p.argv for p in exported[4:]] == [ours["sweeper"], ours["beat"], ours["hooks"]]
    assert [p.argv[p.argv.index("-n") + 1] for p in exported[2:4]] == ["worker1@%h", "worker2@%h"]


def test_procfile_and_systemd_units_carry_every_process():
    config = StackConfig(asgi=1, workers=1)
    procfile = export("procfile", config, workdir=Path("/srv/chat")).splitlines()
    assert [line.split(":", 1)[0] for line in procfile] == ["web_1", "worker", "sweeper", "beat", "hooks"]
    units = export("systemd", config, workdir=Path("/srv/chat"))
    assert units.count("[Service]") == 5 and "WorkingDirectory=/srv/chat" in units
    assert "-n worker@%%h" in units  # systemd would expand a bare %h itself
    with pytest.raises(ValueError, match="unknown format"):
        export("docker", config, workdir=Path("/srv/chat"))
