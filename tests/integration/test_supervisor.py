"""`make run`'s own supervisor (chatproject.stack): a crashed process is restarted, not fatal."""

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

import pytest
from django.conf import settings

from agents.models import Turn
from rooms.client import RoomClient
from rooms.models import Message
from tests.conftest import run_async
from tests.fakellm import FakeLLM
from tests.stack import ROOT, database_url, free_port, wait_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

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


def pids(log: Path) -> dict[str, int]:
    started = wait_log(log, r"started (web \(pid \d+\).*)\n")
    return {name: int(pid) for name, pid in re.findall(r"(\w+) \(pid (\d+)\)", started.group(1))}


def kill_and_wait_restart(log: Path, name: str, pid: int) -> int:
    os.kill(pid, signal.SIGKILL)
    wait_log(log, rf"{name} exited unexpectedly with code -9; restarting in")
    return int(wait_log(log, rf"{name} restarted \(pid (\d+)\)").group(1))


def test_run_restarts_each_killed_process_and_the_killed_workers_turn_ends(tmp_path, room, alice):
    fake = FakeLLM().start()
    port = free_port()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(), REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        # its own queue and channel prefix: the session's test stack hears none of this
        CELERY_QUEUE=f"sup-{uuid.uuid4().hex[:8]}", CHANNEL_PREFIX=f"sup{uuid.uuid4().hex[:8]}",
        LLM_PROVIDER="openai", LLM_BASE_URL=fake.base_url, LLM_API_KEY="test-key",
        LLM_MODEL="fake-model", LEASE_TIMEOUT="3", SWEEP_INTERVAL="1", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "chatproject.stack", "run", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_port(port, timeout=90)
        children = pids(log)
        assert set(children) == {"web", "worker", "sweeper", "beat"}
        assert page_status(port) == 200

        # the worker dies mid-answer: it is replaced and the sweeper ends (or continues) its turn
        async def scenario() -> int:
            client = RoomClient(f"http://127.0.0.1:{port}", room.slug, token=alice[1])
            await client.connect()
            await client.wait_ack(await client.send("a long one !tokens=400 !delay=20"))
            await client.wait_for(
                lambda c: any(m.role == "assistant" and m.content for m in c.state.messages.values()),
                timeout=30,
            )
            children["worker"] = kill_and_wait_restart(log, "worker", children["worker"])
            await client.wait_for(
                lambda c: bool(c.state.turns)
                and all(t["status"] in TERMINAL for t in c.state.turns.values()),
                timeout=60,
            )
            await client.close()
            return len(client.state.turns)

        assert run_async(scenario()) == 1
        turn = Turn.objects.get(room=room)
        assert turn.status in TERMINAL
        assert not Message.objects.filter(room=room, status="streaming").exists()

        for name in ("web", "sweeper", "beat"):
            children[name] = kill_and_wait_restart(log, name, children[name])
        wait_port(port, timeout=60)
        assert page_status(port) == 200
        assert runner.poll() is None, "the runner stopped instead of restarting its children"
    finally:
        if runner.poll() is None:
            os.kill(runner.pid, signal.SIGTERM)
        code = runner.wait(timeout=60)
        fake.stop()
    assert code == 0, log.read_text(errors="replace")[-4000:]
    for pid in children.values():  # nothing is left running
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
