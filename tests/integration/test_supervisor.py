"""`make run`'s own supervisor (python -m stack run): a crashed process is restarted, not fatal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from rooms.client import RoomClient
from stack.processes import Process
from stack.supervisor import Supervisor, wait_http
from tests.conftest import run_async
from tests.fakellm import FakeLLM
from tests.stack import ROOT, database_url, free_port

pytestmark = [pytest.mark.integration]

TERMINAL = {"done", "cancelled", "failed", "interrupted"}


def wait_log(log: Path, pattern: str, timeout: float = 60.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in the runner's output:\n{log.read_text(errors='replace')[-4000:]}")


def page_status(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        return int(response.status)


def pids(control: Path, name: str) -> list[int]:
    """The pids of `name` under the runner, asked on its control socket."""
    from circus.client import CircusClient

    client = CircusClient(endpoint=f"ipc://{control}/control", timeout=10)
    try:
        return [int(p) for p in client.send_message("list", name=name)["pids"]]
    finally:
        client.stop()


def kill_and_wait_restart(log: Path, control: Path, name: str, pid: int) -> int:
    os.kill(pid, signal.SIGKILL)
    wait_log(log, rf"{name} exited unexpectedly with code -9; restarting in")
    new = int(wait_log(log, rf"{name} restarted \(pid (\d+)\)").group(1))
    assert pids(control, name) == [new]
    return new


def manage_py(env: dict[str, str], code: str) -> str:
    """Run Python in a Django shell of the runner's database; its stdout."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]  # what the code printed last


@pytest.fixture
def own_database() -> Any:
    """A database of its own, empty (the runner migrates it): the session's test stack shares the
    test database, and its sweeper and worker would take this test's turns."""
    import psycopg

    db = settings.DATABASES["default"]
    name = f"sup_{uuid.uuid4().hex[:8]}"
    params = {"host": db.get("HOST"), "port": db.get("PORT"), "user": db.get("USER")}
    params = {k: v for k, v in params.items() if v}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url().rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_run_restarts_each_killed_process_and_the_killed_workers_turn_ends(tmp_path, own_database):
    fake = FakeLLM().start()
    port = free_port()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=own_database, REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        # its own queue and channel prefix: the session's test stack hears none of this
        CELERY_QUEUE=f"sup-{uuid.uuid4().hex[:8]}", CHANNEL_PREFIX=f"sup{uuid.uuid4().hex[:8]}",
        LLM_PROVIDER="openai", LLM_BASE_URL=fake.base_url, LLM_API_KEY="test-key",
        LLM_MODEL="fake-model", LEASE_TIMEOUT="3", SWEEP_INTERVAL="1", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    log = tmp_path / "run.log"
    control = tmp_path / "ctl"
    with open(log, "wb") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "stack", "run", "--port", str(port), "--control", str(control)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    children: dict[str, int] = {}
    try:
        wait_log(log, r"Chat is running at", timeout=120)
        children = {name: pids(control, name)[0] for name in ("web", "worker", "sweeper", "beat")}
        assert page_status(port) == 200
        wait_log(log, r"\[worker\] worker@\S+ ready")
        token, slug = manage_py(env, (
            "from django.contrib.auth.models import User; from rooms import services; "
            "u = User.objects.create_user('alice', first_name='Alice'); "
            "print(services.token_create(user=u, name='t')[1], "
            "services.room_create(owner=u, title='Crash room').slug)"
        )).split()  # fmt: skip

        # the worker dies mid-answer: it is replaced and the sweeper ends (or continues) its turn
        async def scenario() -> list[str]:
            client = RoomClient(f"http://127.0.0.1:{port}", slug, token=token)
            await client.connect()
            await client.wait_ack(await client.send("a long one !tokens=400 !delay=20"))
            await client.wait_for(
                lambda c: any(m.role == "assistant" and m.content for m in c.state.messages.values()),
                timeout=60,
            )
            children["worker"] = kill_and_wait_restart(log, control, "worker", children["worker"])
            await client.wait_for(
                lambda c: (
                    bool(c.state.turns) and all(t["status"] in TERMINAL for t in c.state.turns.values())
                ),
                timeout=60,
            )
            await client.close()
            return [t["status"] for t in client.state.turns.values()]

        assert len(run_async(scenario())) == 1
        stored = manage_py(env, (
            "from agents.models import Turn; from rooms.models import Message; "
            "print(Turn.objects.get().status, Message.objects.filter(status='streaming').count())"
        )).split()  # fmt: skip
        assert stored[0] in TERMINAL and stored[1] == "0", stored

        for name in ("web", "sweeper", "beat"):
            children[name] = kill_and_wait_restart(log, control, name, children[name])
        wait_http(port)
        assert page_status(port) == 200
        assert runner.poll() is None, "the runner stopped instead of restarting its children"
    finally:
        if runner.poll() is None:
            os.kill(runner.pid, signal.SIGTERM)
        code = runner.wait(timeout=60)
        fake.stop()
    assert code == 0, log.read_text(errors="replace")[-4000:]
    for pid in children.values():  # nothing is left running
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text().lower()


def test_a_process_that_fails_right_after_every_start_makes_the_supervisor_give_up(tmp_path):
    failing = Process("web", [sys.executable, "-c", "import sys; print('bad setting'); sys.exit(3)"])
    supervisor = Supervisor([failing], env=dict(os.environ), logdir=tmp_path, give_up=True)
    supervisor.start()
    assert supervisor.proc is not None
    code = supervisor.proc.wait(timeout=60)  # back-off 0.5 + 1 + 2 + 4 s, then it gives up
    supervisor.close()
    assert code == 1
    assert "bad setting" in supervisor.log_tail("web")
    assert "giving up" in supervisor.log_tail()
