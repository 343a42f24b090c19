"""MCP tools on the real stack: the worker connects to a real MCP server started here (tests/
mcpserver.py over Streamable HTTP), offers its tools to the model as `server__tool`, and runs the
calls through the agent loop: a card every member sees, ask-first unless the admin marked the
tool read-only, a server that is down never fails the turn, and a call whose worker died is
never sent again."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.mcp.models import McpServer, RoomMcpServer
from agents.models import ToolCall, Turn
from rooms.client import RoomClient
from rooms.models import Message
from rooms.services import membership_join
from tests.conftest import run_async
from tests.integration.test_tools_recovery import kill_lease_holder, started_call
from tests.mcpservers import HttpMcpServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def mcp_http(tmp_path: Path) -> Iterator[HttpMcpServer]:
    server = HttpMcpServer(log=tmp_path / "runs.log").start()
    yield server
    server.stop()


def server_row(url: str, **more: Any) -> McpServer:
    name = more.pop("name", f"t{uuid.uuid4().hex[:6]}")
    return McpServer.objects.create(
        name=name, transport="http", url=url, availability="default", read_only_tools=["add"], **more
    )


async def send(c: RoomClient, content: str) -> None:
    client_id = str(uuid.uuid4())
    await c.send_raw(json.dumps({"type": "send", "client_id": client_id, "content": content}))
    await c.wait_ack(client_id)


def turn_status(c: RoomClient, status: str) -> bool:
    return any(t["status"] == status for t in c.state.turns.values())


def card_states(c: RoomClient) -> list[str]:
    return [f["call"]["state"] for f in c.frames if f["type"] in ("tool_call", "tool_update")]


def offered(request: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in request.get("tools") or []}


def test_an_mcp_tool_is_offered_namespaced_and_its_card_settles_for_everyone(
    stack, fake, room, alice, bob, mcp_http
):
    server = server_row(mcp_http.url)
    membership_join(room=room, user=bob[0])
    name = f"{server.name}__add"

    async def scenario() -> list[RoomClient]:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await a.connect()
        await b.connect()
        await send(a, f'add them !tool={name}:{{"a": 2, "b": 3}} !say=It is 5.')
        for c in (a, b):
            await c.wait_for(lambda c: turn_status(c, "done"), timeout=40)
            await c.close()
        return [a, b]

    clients = run_async(scenario())
    call = ToolCall.objects.get(room=room)
    assert (call.name, call.kind, call.state, call.output) == (name, "mcp", "done", {"result": 5})
    assert (call.side_effects, call.idempotent, call.requires_approval) == (False, True, False)
    for c in clients:
        assert card_states(c) == ["running", "done"]
    first = fake.requests[-2]
    assert {name, f"{server.name}__register", f"{server.name}__launch"} <= offered(first)
    register = next(t for t in first["tools"] if t["function"]["name"] == f"{server.name}__register")
    assert "$defs" in register["function"]["parameters"]  # the nested schema as the server wrote it
    assert fake.requests[-1]["messages"][-1] == {"role": "tool", "tool_call_id": call.provider_call_id,
                                                 "content": '{"result": 5}'}  # fmt: skip
    assert Message.objects.get(pk=call.message_id).content.endswith("It is 5.")
    server.refresh_from_db()  # the worker kept the catalogue for the admin and settings pages
    assert "register" in {t["name"] for t in server.catalog}


def test_an_mcp_call_asks_first_by_default_and_runs_once_approved(stack, fake, room, alice, mcp_http):
    server = server_row(mcp_http.url)
    name = f"{server.name}__launch"

    async def scenario() -> RoomClient:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await send(a, f'go !tool={name}:{{"label": "rocket"}} !say=Launched.')
        await a.wait_for(lambda c: turn_status(c, "parked"), timeout=40)
        assert card_states(a) == ["awaiting_approval"]
        assert mcp_http.runs() == []  # nothing was sent before a person said yes
        call_id = next(f["call"]["id"] for f in a.frames if f["type"] == "tool_call")
        await a.send_raw(json.dumps({"type": "tool_approval", "call_id": call_id, "approved": True}))
        await a.wait_for(lambda c: turn_status(c, "done"), timeout=40)
        await a.close()
        return a

    run_async(scenario())
    call = ToolCall.objects.get(room=room)
    assert (call.kind, call.state, call.output, call.decided_by_id) == ("mcp", "done", {"result": "launched rocket"},
                                                                       alice[0].pk)  # fmt: skip
    assert (call.side_effects, call.idempotent) == (True, False)
    assert mcp_http.runs() == ["rocket"]


def test_a_server_that_is_down_leaves_its_tools_out_and_the_turn_answers(stack, fake, room, alice):
    server = server_row(f"http://127.0.0.1:{free_port()}/mcp")  # nothing listens there

    async def scenario() -> None:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await send(a, "hello !say=Hi.")
        await a.wait_for(lambda c: turn_status(c, "done"), timeout=40)
        await a.close()

    run_async(scenario())
    request = fake.requests[-1]
    assert not any(n.startswith(f"{server.name}__") for n in offered(request))
    told = [
        m["content"] for m in request["messages"] if m["role"] == "system" and server.name in m["content"]
    ]
    assert len(told) == 1 and "unavailable in this turn" in told[0]
    assert Turn.objects.get(room=room).status == "done"


def test_a_worker_killed_during_an_mcp_call_never_sends_it_again(stack, fake, room, alice, mcp_http):
    server = server_row(mcp_http.url)
    RoomMcpServer.objects.create(room=room, server=server, on=True, ask_first=False)
    name = f"{server.name}__launch"

    async def scenario() -> RoomClient:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await send(a, f'go !tool={name}:{{"label": "once", "seconds": 4}} !say=Maybe launched.')
        call = await started_call(room, name)
        kill_lease_holder(stack, Turn.objects.get(pk=call.turn_id))
        await a.wait_for(lambda c: c.state.turns.get(call.turn_id, {}).get("status") == "done", timeout=60)
        await a.close()
        return a

    run_async(scenario())
    call = ToolCall.objects.get(room=room)
    assert call.state == "interrupted" and "may or may not have taken effect" in call.error
    assert fake.requests[-1]["messages"][-1]["content"].startswith("Interrupted:")
    # the server finishes the one call it got (its worker died, not the server); the turn is over,
    # so a second run could only have come from recovery sending it again
    deadline = time.monotonic() + 30
    while mcp_http.runs() != ["once"]:
        assert time.monotonic() < deadline, f"runs: {mcp_http.runs()}"
        time.sleep(0.05)
    assert Turn.objects.get(pk=call.turn_id).status == "done"
    assert mcp_http.runs() == ["once"]


def test_a_stdio_server_runs_on_the_worker_and_its_tool_answers(stack, fake, room, alice, tmp_path, settings):
    from tests.mcpservers import stdio_command

    # the stack's workers run with DEBUG and no MCP_SECRET_KEY (a key derived from the dev
    # SECRET_KEY): encrypt with the same one here
    settings.DEBUG, settings.MCP_SECRET_KEY = True, ""

    command, args, env = stdio_command(tmp_path / "stdio-runs.log")
    from agents.mcp.admin import McpServerForm

    form = McpServerForm(data={"name": "local", "title": "", "transport": "stdio", "url": "", "command": command,
                               "args": json.dumps(args), "availability": "default", "read_only_tools": "[]",
                               "call_timeout": "20", "headers": "",
                               "environment": "\n".join(f"{k}={v}" for k, v in env.items())})  # fmt: skip
    assert form.is_valid(), form.errors
    form.save()
    RoomMcpServer.objects.create(room=room, server=McpServer.objects.get(name="local"), ask_first=False)

    async def scenario() -> None:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await send(a, 'log it !tool=local__launch:{"label": "via-stdio"} !say=Logged.')
        await a.wait_for(lambda c: turn_status(c, "done"), timeout=40)
        await a.close()

    run_async(scenario())
    call = ToolCall.objects.get(room=room)
    assert (call.kind, call.state, call.output) == ("mcp", "done", {"result": "launched via-stdio"})
    # the environment reached the command (it is where the server logs): stored encrypted
    assert (tmp_path / "stdio-runs.log").read_text().splitlines() == ["via-stdio"]
    assert str(tmp_path) not in McpServer.objects.get(name="local").secrets
