"""The chaos run, short: faults everywhere, then every guarantee checked (bench/chaos).

It runs `python -m bench.chaos` as a subprocess, which makes its own database, Redis and
processes; this test uses no pytest-django database (it overrides the suite's autouse
`_isolated_run`, which would create one). `CHAOS_ARGS` adds options, e.g. `--duration 120`.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="session")
def _isolated_run() -> None:
    """Overrides tests/conftest.py's: the chaos run needs no test database, queue or prefix."""


def _chaos_env() -> dict[str, str]:
    """Our environment, minus the URLs of the embedded servers that settings filled in: with
    them the chaos run would share the embedded Redis and could not restart it."""
    from stack import services as embedded

    env = dict(os.environ)
    if env.get("REDIS_URL") == embedded.redis_url():
        env.pop("REDIS_URL")
        env.pop("CELERY_BROKER_URL", None)
    if env.get("DATABASE_URL") == embedded.database_url():
        env.pop("DATABASE_URL")
    return env


@pytest.mark.timeout(900)
def test_every_guarantee_holds_under_faults() -> None:
    argv = [sys.executable, "-m", "bench.chaos", "--duration", "45", "--rooms", "6", "--clients", "3"]
    argv += shlex.split(os.environ.get("CHAOS_ARGS", ""))
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=_chaos_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = proc.communicate(timeout=840)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the run cleans up its processes and database
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"the chaos run did not finish in time:\n{out[-5000:]}")
    print(out)
    assert proc.returncode == 0, f"chaos run failed (exit {proc.returncode}):\n{out[-8000:]}"
