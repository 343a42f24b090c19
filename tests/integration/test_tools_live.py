"""Tools on the real stack: Daphne, a Celery worker, Postgres, Redis, and the fake OpenAI server
streaming real tool-call deltas. Each call is a card every member sees; approvals and client
tools are answered over the socket by the people allowed to, and no one else."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from agents.models import ToolCall, Turn
from rooms.client import RoomClient
from rooms.models import Message, RoomNote
from rooms.services import membership_join
from tests.conftest import run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def calls(c: RoomClient) -> dict[str, dict[str, Any]]:
    """The client's view of every call: the last `tool_call`/`tool_update` of each."""
    out: dict[str, dict[str, Any]] = {}
    for f in c.frames:
        if f["type"] in ("tool_call", "tool_update"):
            out[f["call"]["id"]] = f["call"]
    return out


def turn_status(c: RoomClient, status: str) -> bool:
    return any(t["status"] == status for t in c.state.turns.values())


async def send(c: RoomClient, content: str, tools: list[dict[str, Any]] | None = None) -> str:
    client_id = str(uuid.uuid4())
    frame: dict[str, Any] = {"type": "send", "client_id": client_id, "content": content}
    if tools:
        frame["tools"] = tools
    await c.send_raw(json.dumps(frame))
    await c.wait_ack(client_id)
    return client_id


def test_a_server_call_appears_and_settles_for_everyone_and_the_answer_uses_it(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])

    async def scenario() -> list[RoomClient]:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await a.connect()
        await b.connect()
        await send(
            a, 'what is 17% of 2,340? !tool=calculator:{"expression": "17% of 2340"} !say=It is 397.8.'
        )
        for c in (a, b):
            await c.wait_for(lambda c: turn_status(c, "done"), timeout=30)
        await a.close()
        await b.close()
        return [a, b]

    a, b = run_async(scenario())
    call = ToolCall.objects.get(room=room)
    assert (call.name, call.state, call.output["result"]) == ("calculator", "done", 397.8)
    for c in (a, b):  # both saw the card appear running and settle done, with the stored output
        states = [f["call"]["state"] for f in c.frames if f["type"] in ("tool_call", "tool_update")]
        assert states == ["running", "done"]
        assert calls(c)[str(call.pk)]["output"] == call.output
        assert c.malformed == []
    answer = Message.objects.get(pk=call.message_id)
    assert answer.status == "complete" and answer.content.endswith("It is 397.8.")
    # the model got the result in OpenAI's own format on its second step
    second = fake.requests[-1]["messages"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "calculator"
    assert second[-1]["role"] == "tool" and json.loads(second[-1]["content"])["result"] == 397.8


def test_malformed_arguments_become_a_call_error_the_model_sees(stack, fake, room, alice):
    async def scenario() -> RoomClient:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await send(a, "compute !badargs=calculator !say=Sorry, I sent bad arguments.")
        await a.wait_for(lambda c: turn_status(c, "done"), timeout=30)
        await a.close()
        return a

    run_async(scenario())
    call = ToolCall.objects.get(room=room)
    assert call.state == "error" and "not valid JSON" in call.error
    assert fake.requests[-1]["messages"][-1]["content"].startswith("Error: the arguments are not valid JSON")


def test_an_approval_comes_after_every_socket_closed_and_the_worker_restarted(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])

    async def ask() -> None:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await send(a, 'remember this !tool=note:{"text": "buy milk"} !say=Noted.')
        await a.wait_for(lambda c: turn_status(c, "parked"), timeout=30)
        pending = list(calls(a).values())
        assert [c["state"] for c in pending] == ["awaiting_approval"]
        await a.close()

    run_async(ask())
    stack.restart("worker")  # nobody is connected and no worker holds the parked turn
    call = ToolCall.objects.get(room=room)
    assert Turn.objects.get(pk=call.turn_id).status == "parked"

    async def decide() -> list[RoomClient]:
        b = RoomClient(stack.base_url, room.slug, token=bob[1])  # a bystander: may not decide
        a = RoomClient(stack.base_url, room.slug, token=alice[1])  # another device of the asker
        await b.connect()
        await a.connect()
        assert calls(a)[str(call.pk)]["state"] == "awaiting_approval"  # the card came back
        await b.send_raw(json.dumps({"type": "tool_approval", "call_id": str(call.pk), "approved": True}))
        await b.wait_for(lambda c: any(e.get("ref") == str(call.pk) for e in c.errors))
        assert b.errors[-1]["code"] == "forbidden"
        await a.send_raw(json.dumps({"type": "tool_approval", "call_id": str(call.pk), "approved": True}))
        await a.wait_for(lambda c: turn_status(c, "done"), timeout=30)
        await a.send_raw(json.dumps({"type": "tool_approval", "call_id": str(call.pk), "approved": False}))
        await a.wait_for(lambda c: any(e.get("ref") == str(call.pk) for e in c.errors))
        assert a.errors[-1]["code"] == "conflict"  # decided already: the second answer changes nothing
        for c in (a, b):
            await c.close()
        return [a, b]

    run_async(decide())
    call.refresh_from_db()
    assert (call.state, call.decided_by_id) == ("done", alice[0].pk)
    assert list(RoomNote.objects.filter(room=room).values_list("text", "call_id")) == [("buy milk", call.pk)]


CLIENT_TOOL = {"name": "local_time", "description": "The user's local time.",
               "parameters": {"type": "object", "properties": {}}}  # fmt: skip


def test_a_client_tool_is_answered_by_its_initiator_only_and_once(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])

    async def scenario() -> None:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await a.connect()
        await b.connect()
        await send(a, "what time is it for me? !tool=local_time:{} !say=It is evening.", tools=[CLIENT_TOOL])
        await b.wait_for(lambda c: any(x["state"] == "waiting_client" for x in calls(c).values()), timeout=30)
        (call,) = calls(b).values()
        assert (call["kind"], call["initiator_id"]) == ("client", alice[0].pk)
        answer = {"type": "tool_result", "call_id": call["id"], "output": {"time": "21:30"}}
        await b.send_raw(json.dumps(answer))  # bob sees the call but cannot answer it
        await b.wait_for(lambda c: any(e.get("ref") == call["id"] for e in c.errors))
        assert b.errors[-1]["code"] == "forbidden"
        await a.send_raw(json.dumps(answer))
        await a.send_raw(json.dumps({**answer, "output": {"time": "again"}}))  # a second tab, say
        await a.wait_for(lambda c: turn_status(c, "done"), timeout=30)
        await a.wait_for(lambda c: any(e.get("ref") == call["id"] for e in c.errors))
        assert a.errors[-1]["code"] == "conflict"
        for c in (a, b):
            await c.close()

    run_async(scenario())
    call = ToolCall.objects.get(room=room)
    assert (call.state, call.output) == ("done", {"time": "21:30"})
    assert Turn.objects.get(pk=call.turn_id).client_tools == [CLIENT_TOOL]
