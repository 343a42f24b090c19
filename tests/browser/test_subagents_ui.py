"""A sub-agent's card in real Chromium: the child run's text and its own tool calls grow inside
the parent's card live, with a link to the agent's room; a reload mid-run shows the same card
from the server. Saves docs/screenshots/subagent-card.png."""

from __future__ import annotations

import json

import pytest

from agents.models import Agent, RoomAgent, ToolCall
from rooms.services import room_create
from tests.browser.test_tools_ui import card, shot, wait_call
from tests.browser.test_user_story import room_url, send, wait_live, wait_turns

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_sub_agent_card_shows_the_child_run_live_and_after_a_reload(stack, fake, room, alice, page_for):
    researcher = room_create(owner=alice[0], title="Researcher", system_prompt="You research things.")
    agent = Agent.objects.create(room=researcher, name="researcher", description="Finds things out.")
    RoomAgent.objects.create(room=room, agent=agent)
    inner = 'Check the numbers !tool=calculator:{"expression": "17% of 2340"} !tokens=60 !delay=90'
    page = page_for(alice[0])
    page.goto(room_url(stack, room))
    wait_live(page)
    send(page, f"Ask the researcher !tool=ask_researcher:{json.dumps({'task': inner})} !say=Asked.")
    box = f"{card(page, 'ask_researcher')} .agent-progress"
    # the child's own call, then its text, while the card still runs
    page.wait_for_selector(f"{box} .agent-calls li[data-state=done] .tool-name:text-is('calculator')")
    page.wait_for_selector(f"{box} .agent-text:has-text('w12')")
    assert page.locator(f"{card(page, 'ask_researcher')}[data-state=running]").count() == 1
    link = page.locator(f"{box} a.agent-room")
    assert link.inner_text() == "Researcher" and link.get_attribute("href") == f"/r/{researcher.slug}/"
    shot(page, "subagent-card")
    # a reload mid-run: the server renders the same card, and it goes on growing
    page.reload()
    wait_live(page)
    assert page.locator(f"{box} .agent-text").count() == 1
    call = wait_call(room, "ask_researcher", "done", timeout=60)
    wait_turns(room, 1)
    page.wait_for_selector(f"{card(page, 'ask_researcher')}[data-state=done] .agent-status:text-is('done')")
    final = page.locator(f"{box} .agent-text").inner_text()
    assert final.endswith("w60") and call.output["answer"].endswith(final.lstrip("…")[-200:])
    assert ToolCall.objects.filter(room=researcher, name="calculator", state="done").count() == 1


def test_a_sub_agent_answer_with_markup_stays_text_in_the_card_live_and_server_rendered(
    stack, fake, room, alice, page_for
):
    researcher = room_create(owner=alice[0], title="<b>Researcher</b>")
    agent = Agent.objects.create(room=researcher, name="researcher", description="Finds things out.")
    RoomAgent.objects.create(room=room, agent=agent)
    evil = '<img src=x onerror="window.pwned=1"> done'
    page = page_for(alice[0])
    page.goto(room_url(stack, room))
    wait_live(page)
    send(page, f"Ask !tool=ask_researcher:{json.dumps({'task': 'go !say=' + evil})} !say=Asked.")
    wait_call(room, "ask_researcher", "done", timeout=60)
    box = f"{card(page, 'ask_researcher')} .agent-progress"
    page.wait_for_selector(f"{card(page, 'ask_researcher')}[data-state=done]")
    for _ in range(2):  # live, then as the server renders it
        assert page.locator(f"{box} .agent-text").inner_text() == evil
        assert page.locator(f"{box} a.agent-room").inner_text() == "<b>Researcher</b>"
        assert page.locator(f"{box} img").count() == 0 and page.locator(f"{box} b").count() == 0
        assert page.evaluate("window.pwned === undefined")
        page.reload()
        wait_live(page)
