"""MCP tools in real Chromium: a call of a real MCP server's tool (tests/mcpserver.py) as a card
with its server's badge, asking first by default, and the owner's MCP servers page. Saves the
screenshots in docs/screenshots/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.mcp.models import McpServer, RoomMcpServer
from tests.browser.test_tools_ui import card, shot, wait_call
from tests.browser.test_user_story import room_url, send, wait_live, wait_turns
from tests.mcpservers import HttpMcpServer

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def mcp_http(tmp_path: Path) -> Iterator[HttpMcpServer]:
    server = HttpMcpServer(log=tmp_path / "runs.log").start()
    yield server
    server.stop()


def crm_server(url: str) -> McpServer:
    # each test has its own row (and id), so the worker connects anew to this test's server
    return McpServer.objects.create(name="crm", title="Contacts", transport="http", url=url,
                                    availability="optional", read_only_tools=["add"])  # fmt: skip


def test_an_mcp_call_card_shows_its_server_input_and_output(stack, fake, room, alice, page_for, mcp_http):
    server = crm_server(mcp_http.url)
    RoomMcpServer.objects.create(room=room, server=server, on=True, ask_first=False)
    name = f"{server.name}__register"
    args = {"person": {"name": "Ana Lima", "address": {"city": "Porto", "postcode": "4000-123"}},
            "tags": ["supplier", "cork"]}  # fmt: skip
    a = page_for(alice[0])
    a.goto(room_url(stack, room))
    wait_live(a)
    send(
        a, f"Add Ana from Porto to the contacts !tool={name}:{json.dumps(args)} !say=Ana Lima is registered."
    )
    done = a.locator(f"{card(a, name)}[data-state=done]")
    done.wait_for()
    assert done.locator(".tool-kind").inner_text() == "MCP"
    call = wait_call(room, name, "done")
    assert call.kind == "mcp" and call.output == {"registered": "Ana Lima", "city": "Porto",
                                                  "tags": ["supplier", "cork"]}  # fmt: skip
    wait_turns(room, 1)
    a.wait_for_selector("li.msg.role-assistant[data-status=complete]")
    done.locator("summary").click()
    assert json.loads(done.locator(".tool-input").inner_text()) == args
    assert json.loads(done.locator(".tool-output").inner_text())["city"] == "Porto"
    shot(a, "tool-call-mcp")
    a.reload()  # the server-rendered card is the same, badge included
    wait_live(a)
    assert a.locator(f"{card(a, name)}[data-state=done] .tool-kind").inner_text() == "MCP"


def test_the_owner_switches_an_mcp_server_on_and_its_side_effects_ask_first(
    stack, fake, room, alice, page_for, mcp_http
):
    server = crm_server(mcp_http.url)
    a = page_for(alice[0])
    a.goto(f"{stack.base_url}/r/{room.slug}/settings/")
    a.click("#room-mcp-link")
    row = a.locator(f"tr[data-server={server.name}]")
    assert not row.locator("input[name=on]").is_checked()  # optional: off until the owner says
    assert row.locator("input[name=ask_first]").is_checked()  # side effects ask first by default
    row.locator("input[name=on]").check()
    a.click("#mcp-settings button[type=submit]")
    a.wait_for_selector("text=MCP servers saved.")
    choice = RoomMcpServer.objects.get(room=room, server=server)
    assert (choice.on, choice.ask_first) == (True, True)
    a.goto(room_url(stack, room))
    wait_live(a)
    name = f"{server.name}__launch"
    send(a, f'Launch the newsletter !tool={name}:{{"label": "newsletter"}} !say=Sent.')
    waiting = a.locator(f"{card(a, name)}[data-state=awaiting_approval]")
    waiting.wait_for()
    assert mcp_http.runs() == []
    shot(a, "tool-approval-mcp")
    waiting.locator("button:text-is('Approve')").click()
    wait_call(room, name, "done")
    assert mcp_http.runs() == ["newsletter"]
