"""Sub-agents on the real stack: the room's assistant calls an agent (another room set up as one)
as a tool. The child run streams in the agent's room and its progress reaches the parent's card
live; a worker killed during the child turn or during the parent's wait ends with exactly one
child run whose result reaches the parent once; cancelling the parent cancels the child; a
failed child is a structured error the parent's model reads."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from agents.models import Agent, RoomAgent, ToolCall, Turn
from rooms.client import RoomClient
from rooms.models import Message, Room, RoomEvent, StreamChunk
from rooms.services import room_create
from tests.conftest import run_async
from tests.integration.test_tools_recovery import kill_lease_holder, turn_statuses

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def agent_room(alice: tuple[Any, str], room: Room) -> Room:
    """The Researcher: a room set up as an agent, which the test room's assistant may call."""
    researcher = room_create(owner=alice[0], title="Researcher", system_prompt="You research things.")
    agent = Agent.objects.create(room=researcher, name="researcher", description="Finds things out.")
    RoomAgent.objects.create(room=room, agent=agent)
    return researcher


def ask(task: str, then: str = "The researcher answered.", **more: Any) -> str:
    """A message making the fake model call the Researcher with `task` (and more tools)."""
    tools = "".join(f" !tool={name}:{json.dumps(args)}" for name, args in more.items())
    return f"ask them !tool=ask_researcher:{json.dumps({'task': task})}{tools} !say={then}"


async def send(c: RoomClient, content: str) -> None:
    client_id = str(uuid.uuid4())
    await c.send_raw(json.dumps({"type": "send", "client_id": client_id, "content": content}))
    await c.wait_ack(client_id)


def call_frames(c: RoomClient, call_id: int) -> list[dict[str, Any]]:
    """Every state of the call the client saw, in order."""
    return [
        f["call"]
        for f in c.frames
        if f["type"] in ("tool_call", "tool_update") and f["call"]["id"] == str(call_id)
    ]


def done(c: RoomClient, turn_id: int | None = None) -> bool:
    turns = c.state.turns.values() if turn_id is None else [c.state.turns.get(turn_id, {})]
    return any(t.get("status") == "done" for t in turns)


async def wait_db(predicate: Any, timeout: float = 30.0, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {what} in {timeout}s")


def child_of(room: Room) -> Turn | None:
    return Turn.objects.filter(parent_call__room=room).first()


def settled_events(call_id: int) -> list[str]:
    """The states of the call's events in the log that settle it (done, error...)."""
    states = []
    for frame in RoomEvent.objects.filter(type="tool_update").order_by("seq").values_list("frame", flat=True):
        call = json.loads(frame)["call"]
        if call["id"] == str(call_id) and call["state"] in ToolCall.SETTLED:
            states.append(call["state"])
    return states


def test_nested_progress_reaches_both_rooms_and_the_answer_reaches_the_parent_once(
    stack, fake, room, agent_room, alice
):
    async def scenario() -> tuple[RoomClient, RoomClient]:
        parent = RoomClient(stack.base_url, room.slug, token=alice[1])
        child = RoomClient(stack.base_url, agent_room.slug, token=alice[1])
        await parent.connect()
        await child.connect()
        await send(parent, ask("find the answer !tokens=40 !delay=60"))
        await parent.wait_for(lambda c: done(c), timeout=60)
        await child.wait_for(lambda c: done(c), timeout=10)
        await parent.close()
        await child.close()
        return parent, child

    parent, child = run_async(scenario())
    call = ToolCall.objects.get(room=room, name="ask_researcher")
    children = Turn.objects.filter(parent_call=call)
    assert children.count() == 1
    kid = children.get()
    assert (kid.room_id, kid.status, kid.attempt, kid.depth) == (agent_room.pk, "done", 1, 1)
    answer = Message.objects.get(pk=kid.assistant_message_id)
    assert answer.content.endswith("w40")
    assert (call.kind, call.state) == ("agent", "done")
    assert call.output == {"agent": "Researcher", "room": agent_room.slug, "answer": answer.content}
    # the parent's socket saw the child's text grow inside the card, before the card settled
    seen = call_frames(parent, call.pk)
    live = [c["progress"]["text"] for c in seen if c["state"] == "running" and c.get("progress")]
    assert any(0 < len(text) < len(answer.content) for text in live), live
    assert len({len(t) for t in live}) >= 2  # more than one copy on the way
    final = seen[-1]
    assert final["state"] == "done" and final["progress"]["status"] == "done"
    assert final["progress"]["room"] == agent_room.slug and final["progress"]["text"] == answer.content
    assert settled_events(call.pk) == ["done"]  # settled once
    # the agent's room's socket saw the child's own answer stream
    deltas = [f for f in child.frames if f["type"] == "delta" and f["message_id"] == answer.pk]
    assert "".join(f["text"] for f in deltas) == answer.content
    # the parent parked while the child ran, then answered with the child's result
    parent_turn = Turn.objects.get(pk=call.turn_id)
    assert turn_statuses(parent_turn.pk) == ["queued", "running", "parked", "queued", "running", "done"]
    tool_message = fake.requests[-1]["messages"][-1]
    assert tool_message["role"] == "tool" and json.loads(tool_message["content"])["answer"] == answer.content


def test_a_worker_killed_during_the_child_turn_continues_the_one_child_and_settles_the_parent_once(
    stack, fake, room, agent_room, alice
):
    async def scenario() -> RoomClient:
        parent = RoomClient(stack.base_url, room.slug, token=alice[1])
        await parent.connect()
        await send(parent, ask("a long one !tokens=80 !delay=60"))
        kid = await wait_db(lambda: child_of(room), what="child run")
        await wait_db(
            lambda: StreamChunk.objects.filter(message__room=agent_room).count() >= 5, what="child text"
        )
        kid.refresh_from_db()
        assert kid.status == "running"
        assert Turn.objects.get(pk=kid.parent_call.turn_id).status == "parked"
        kill_lease_holder(stack, kid)
        await parent.wait_for(lambda c: done(c, kid.parent_call.turn_id), timeout=90)
        await parent.close()
        return parent

    parent = run_async(scenario())
    call = ToolCall.objects.get(room=room, name="ask_researcher")
    kid = Turn.objects.get(parent_call=call)
    assert Turn.objects.filter(room=agent_room).count() == 1  # no second child run
    assert (kid.status, kid.attempt) == ("done", 2)  # the same run, continued after the kill
    answer = Message.objects.get(pk=kid.assistant_message_id).content
    # continued in the same message: the fake model answers the continuation prompt anew
    assert "(Your previous answer was cut off" in answer
    assert call.state == "done" and call.output["answer"] == answer
    assert settled_events(call.pk) == ["done"]
    assert call_frames(parent, call.pk)[-1]["output"] == call.output
    parent_turn = Turn.objects.get(pk=call.turn_id)
    assert (parent_turn.status, parent_turn.attempt) == ("done", 1)  # parked through it: untouched


def test_a_worker_killed_during_the_parents_wait_re_attaches_to_the_running_child(
    stack, fake, room, agent_room, alice
):
    async def scenario() -> RoomClient:
        parent = RoomClient(stack.base_url, room.slug, token=alice[1])
        await parent.connect()
        # the parent waits on its step: a slow read beside the agent, while the child streams
        await send(parent, ask("slowly !tokens=60 !delay=80", slow_lookup={"key": "k", "seconds": 4}))
        kid = await wait_db(lambda: child_of(room), what="child run")
        await wait_db(
            lambda: (
                ToolCall.objects.filter(room=room, name="slow_lookup", started_at__isnull=False).exists()
                and StreamChunk.objects.filter(message__room=agent_room).exists()
            ),
            what="a running read and child text",
        )
        parent_turn = Turn.objects.get(pk=kid.parent_call.turn_id)
        assert parent_turn.status == "running"  # holding its lease, waiting on its step
        kill_lease_holder(stack, parent_turn)
        await parent.wait_for(lambda c: done(c, parent_turn.pk), timeout=90)
        await parent.close()
        return parent

    run_async(scenario())
    call = ToolCall.objects.get(room=room, name="ask_researcher")
    parent_turn = Turn.objects.get(pk=call.turn_id)
    assert parent_turn.status == "done" and parent_turn.attempt >= 2  # recovered, continued
    assert Turn.objects.filter(room=agent_room).count() == 1  # re-attached, not started again
    kid = Turn.objects.get(parent_call=call)
    assert kid.status == "done"
    answer = Message.objects.get(pk=kid.assistant_message_id).content
    assert answer and call.state == "done" and call.output["answer"] == answer
    assert settled_events(call.pk) == ["done"]
    lookup = ToolCall.objects.get(room=room, name="slow_lookup")
    assert lookup.state == "done"
    results = [m for m in fake.requests[-1]["messages"] if m["role"] == "tool"]
    assert [json.loads(m["content"]).get("answer") for m in results][0] == answer


def test_cancelling_the_parent_cancels_the_child_and_the_call_ends_once(stack, fake, room, agent_room, alice):
    async def scenario() -> RoomClient:
        parent = RoomClient(stack.base_url, room.slug, token=alice[1])
        await parent.connect()
        await send(parent, ask("forever !tokens=400 !delay=50"))
        kid = await wait_db(lambda: child_of(room), what="child run")
        await wait_db(
            lambda: StreamChunk.objects.filter(message__room=agent_room).exists(), what="child text"
        )
        parent_turn_id = kid.parent_call.turn_id
        await parent.wait_for(lambda c: c.state.turns.get(parent_turn_id, {}).get("status") == "parked")
        await parent.cancel(parent_turn_id)
        await parent.wait_for(lambda c: c.state.turns.get(parent_turn_id, {}).get("status") == "cancelled")
        await wait_db(lambda: Turn.objects.get(pk=kid.pk).status == "cancelled", what="child cancelled")
        await parent.close()
        return parent

    run_async(scenario())
    call = ToolCall.objects.get(room=room, name="ask_researcher")
    kid = Turn.objects.get(parent_call=call)
    assert kid.status == "cancelled"
    assert Message.objects.get(pk=kid.assistant_message_id).status == "cancelled"
    assert call.state == "error" and "cancelled" in call.error
    assert len(settled_events(call.pk)) == 1


def test_a_failed_child_is_a_structured_error_the_parent_model_reads(stack, fake, room, agent_room, alice):
    async def scenario() -> RoomClient:
        parent = RoomClient(stack.base_url, room.slug, token=alice[1])
        await parent.connect()
        await send(parent, ask("break !fail=500", then="The researcher could not help."))
        await parent.wait_for(lambda c: done(c), timeout=60)
        await parent.close()
        return parent

    parent = run_async(scenario())
    call = ToolCall.objects.get(room=room, name="ask_researcher")
    assert Turn.objects.get(parent_call=call).status == "failed"
    assert call.state == "error"
    assert call.output["status"] == "failed" and call.output["retryable"] is True
    assert "Researcher" in call.output["reason"]
    tool_message = fake.requests[-1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"].startswith("Error: ")
    assert json.loads(tool_message["content"].removeprefix("Error: ")) == call.output
    assert call_frames(parent, call.pk)[-1]["output"] == call.output


def test_an_agent_may_not_call_back_up_its_own_chain(stack, fake, room, agent_room, alice):
    """The Researcher may call the test room's agent, but not while working for that room:
    its turn would queue behind the parked one that waits on it."""
    back = Agent.objects.create(room=room, name="caller", description="The room that asked.")
    RoomAgent.objects.create(room=agent_room, agent=back)
    inner = f"call back !tool=ask_caller:{json.dumps({'task': 'loop'})} !say=Could not."

    async def scenario() -> None:
        parent = RoomClient(stack.base_url, room.slug, token=alice[1])
        await parent.connect()
        await send(parent, ask(inner))
        await parent.wait_for(lambda c: done(c), timeout=60)
        await parent.close()

    run_async(scenario())
    refused = ToolCall.objects.get(room=agent_room, name="ask_caller")
    assert refused.state == "error" and refused.output["status"] == "refused"
    assert Turn.objects.filter(parent_call__isnull=False).count() == 1  # only the Researcher ran
    assert ToolCall.objects.get(room=room, name="ask_researcher").state == "done"


def test_agents_call_agents_up_to_the_depth_cap_and_the_call_past_it_is_refused(
    stack, fake, room, agent_room, alice
):
    """room -> Researcher (depth 1) -> Analyst (depth 2) -> Critic: refused (AGENT_MAX_DEPTH 2)."""
    rooms = {}
    for name in ("analyst", "critic"):
        rooms[name] = room_create(owner=alice[0], title=name.title())
        Agent.objects.create(room=rooms[name], name=name, description=f"The {name}.")
    RoomAgent.objects.create(room=agent_room, agent=Agent.objects.get(name="analyst"))
    RoomAgent.objects.create(room=rooms["analyst"], agent=Agent.objects.get(name="critic"))
    deepest = f"go !tool=ask_critic:{json.dumps({'task': 'judge'})} !say=Analysed."
    middle = f"go !tool=ask_analyst:{json.dumps({'task': deepest})} !say=Researched."

    async def scenario() -> None:
        parent = RoomClient(stack.base_url, room.slug, token=alice[1])
        await parent.connect()
        await send(parent, ask(middle))
        await parent.wait_for(lambda c: done(c), timeout=60)
        await parent.close()

    run_async(scenario())
    depths = dict(Turn.objects.filter(parent_call__isnull=False).values_list("room__title", "depth"))
    assert depths == {"Researcher": 1, "Analyst": 2}
    refused = ToolCall.objects.get(room=rooms["analyst"], name="ask_critic")
    assert refused.state == "error" and refused.output["status"] == "refused"
    assert "at most 2 deep" in refused.output["reason"] and refused.output["retryable"] is False
    assert not Turn.objects.filter(room=rooms["critic"]).exists()
    assert ToolCall.objects.get(room=agent_room, name="ask_analyst").state == "done"
    assert ToolCall.objects.get(room=room, name="ask_researcher").state == "done"
