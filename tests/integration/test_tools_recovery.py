"""Tools through a worker's death, on the real stack: the worker is killed with SIGKILL between a
call's `started_at` and its result (the slow test tools of tests/tools.py, loaded through
AGENT_TOOLS_EXTRA). A side effect is never run twice; a read runs again; a turn waiting on a
person survives every restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from typing import Any

import pytest
from django.conf import settings

from agents.models import ToolCall, Turn
from rooms.client import RoomClient
from rooms.models import RoomEvent, RoomNote
from tests.conftest import run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


async def send(c: RoomClient, content: str) -> None:
    client_id = str(uuid.uuid4())
    await c.send_raw(json.dumps({"type": "send", "client_id": client_id, "content": content}))
    await c.wait_ack(client_id)


async def started_call(room: Any, name: str, timeout: float = 30.0) -> ToolCall:
    """The room's call of `name` once it is running with `started_at` committed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        call = ToolCall.objects.filter(
            room=room, name=name, state="running", started_at__isnull=False
        ).first()
        if call is not None:
            return call
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no {name} call started in {timeout}s")


def kill_lease_holder(stack: Any, turn: Turn) -> int:
    """SIGKILL the process holding the turn's lease; a dead worker is started again, as its
    supervisor would. The pid killed."""
    pid = int(turn.lease_owner.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    if pid == stack.procs["worker"].pid:  # a threads pool: the worker itself died
        stack.procs["worker"].wait(timeout=30)
        stack.start("worker")
    return pid


def turn_statuses(turn_id: int) -> list[str]:
    """Every status the turn's events gave it, in seq order."""
    frames = RoomEvent.objects.filter(type="turn").order_by("seq").values_list("frame", flat=True)
    return [t["status"] for t in (json.loads(f)["turn"] for f in frames) if t["id"] == turn_id]


def client_call(c: RoomClient, call_id: int) -> dict[str, Any]:
    """The last `tool_call`/`tool_update` the client saw of the call."""
    seen = [f["call"] for f in c.frames if f["type"] in ("tool_call", "tool_update")]
    return [x for x in seen if x["id"] == str(call_id)][-1]


def test_a_side_effect_killed_mid_run_is_interrupted_never_run_again_and_the_model_is_told(
    stack, fake, room, alice
):
    seconds = 6

    async def scenario() -> tuple[RoomClient, ToolCall, float]:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        args = json.dumps({"label": "rocket", "seconds": seconds})
        await send(a, f"launch it !tool=launch:{args} !say=It may or may not have launched.")
        call = await started_call(room, "launch")
        kill_lease_holder(stack, Turn.objects.get(pk=call.turn_id))
        await a.wait_for(lambda c: c.state.turns.get(call.turn_id, {}).get("status") == "done", timeout=40)
        # the killed run would have written its note by now had it lived on
        assert call.started_at is not None
        await asyncio.sleep(max(0.0, seconds + 1 - (time.time() - call.started_at.timestamp())))
        await a.close()
        return a, call, time.time()

    a, call, _ = run_async(scenario())
    call.refresh_from_db()
    assert call.state == "interrupted" and "may or may not have taken effect" in call.error
    assert RoomNote.objects.filter(call_id=call.pk).count() == 0  # never run again
    turn = Turn.objects.get(pk=call.turn_id)
    assert turn.status == "done" and turn.attempt == 2
    last = fake.requests[-1]["messages"][-1]
    assert last["role"] == "tool" and last["content"].startswith("Interrupted:")
    seen = client_call(a, call.pk)
    assert (seen["state"], seen["error"], seen["output"]) == ("interrupted", call.error, None)


def test_a_read_killed_mid_run_is_run_again_and_its_result_reaches_the_model(stack, fake, room, alice):
    async def scenario() -> tuple[RoomClient, ToolCall, float]:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await send(a, 'look it up !tool=slow_lookup:{"key": "abc", "seconds": 3} !say=It is ABC.')
        call = await started_call(room, "slow_lookup")
        kill_lease_holder(stack, Turn.objects.get(pk=call.turn_id))
        killed_at = time.time()
        await a.wait_for(lambda c: c.state.turns.get(call.turn_id, {}).get("status") == "done", timeout=40)
        await a.close()
        return a, call, killed_at

    a, call, killed_at = run_async(scenario())
    first_start = call.started_at
    call.refresh_from_db()
    assert (call.state, call.output) == ("done", {"key": "abc", "value": "ABC"})
    assert first_start is not None and call.started_at is not None
    assert call.started_at > first_start and call.started_at.timestamp() > killed_at  # it ran again
    assert Turn.objects.get(pk=call.turn_id).status == "done"
    last = fake.requests[-1]["messages"][-1]
    assert last["role"] == "tool" and json.loads(last["content"]) == {"key": "abc", "value": "ABC"}
    seen = client_call(a, call.pk)
    assert (seen["state"], seen["output"]) == ("done", call.output)


def test_a_parked_turn_survives_a_killed_worker_and_a_restarted_sweeper_then_runs_once_approved(
    stack, fake, room, alice
):
    async def ask() -> ToolCall:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await send(a, 'remember it !tool=note:{"text": "parked through a kill"} !say=Noted.')
        await a.wait_for(lambda c: any(t["status"] == "parked" for t in c.state.turns.values()), timeout=30)
        await a.close()
        return ToolCall.objects.get(room=room)

    call = run_async(ask())
    assert call.state == "awaiting_approval"
    worker = stack.procs["worker"]
    stack.supervisor.kill("worker", signal.SIGKILL)  # master and pool: nothing holds the turn
    worker.wait(timeout=30)
    stack.start("worker")
    stack.restart("sweeper")
    # past a lease and two sweeps: a parked turn holds no lease, so no recovery may touch it
    time.sleep(settings.LEASE_TIMEOUT + 2 * settings.SWEEP_INTERVAL + 1)
    turn = Turn.objects.get(pk=call.turn_id)
    assert (turn.status, turn.attempt) == ("parked", 0)
    assert "failed" not in turn_statuses(turn.pk)
    call.refresh_from_db()
    assert call.state == "awaiting_approval"

    async def approve() -> None:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await a.send_raw(json.dumps({"type": "tool_approval", "call_id": str(call.pk), "approved": True}))
        await a.wait_for(lambda c: c.state.turns.get(call.turn_id, {}).get("status") == "done", timeout=30)
        await a.close()

    run_async(approve())
    call.refresh_from_db()
    assert (call.state, call.decided_by_id) == ("done", alice[0].pk)
    assert list(RoomNote.objects.filter(room=room).values_list("text", "call_id")) == [
        ("parked through a kill", call.pk)
    ]
    assert turn_statuses(turn.pk) == ["queued", "running", "parked", "queued", "running", "done"]


def test_in_a_room_that_interrupts_a_side_effect_whose_worker_died_ends_interrupted_not_error(
    stack, fake, room, alice
):
    room.recovery = "interrupt"
    room.save()

    async def scenario() -> ToolCall:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await send(a, 'launch it !tool=launch:{"label": "probe", "seconds": 5} !say=Done.')
        call = await started_call(room, "launch")
        kill_lease_holder(stack, Turn.objects.get(pk=call.turn_id))
        await a.wait_for(
            lambda c: c.state.turns.get(call.turn_id, {}).get("status") == "interrupted", timeout=40
        )
        await a.close()
        return call

    call = run_async(scenario())
    call.refresh_from_db()
    assert RoomNote.objects.filter(call_id=call.pk).count() == 0
    # it started and its worker was lost: the outcome is unknown, it did not fail (protocol.md)
    assert call.state == "interrupted", (call.state, call.error)


def test_a_side_effect_still_running_when_its_turn_is_cancelled_is_not_reported_as_an_error(
    stack, fake, room, alice
):
    async def scenario() -> ToolCall:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await send(a, 'launch it !tool=launch:{"label": "late", "seconds": 2} !say=Done.')
        call = await started_call(room, "launch")
        await a.cancel(call.turn_id)
        await a.wait_for(
            lambda c: c.state.turns.get(call.turn_id, {}).get("status") == "cancelled", timeout=30
        )
        await asyncio.sleep(3)  # the tool's thread goes on and finishes its work
        await a.close()
        return call

    call = run_async(scenario())
    call.refresh_from_db()
    notes = RoomNote.objects.filter(call_id=call.pk).count()
    # the cancel could not stop the thread: the note was written, so "error" would be a lie
    assert (notes, call.state) in ((0, "error"), (0, "interrupted"), (1, "interrupted")), (notes, call.state)
