"""Tool calls in real Chromium: cards that appear and settle live for every member and come back
after a reload, approvals (buttons for the asker and moderators, read-only for the others), the
page's client tools (local_time answered by itself, choose answered by a click), the notes
panel, and the room settings' tool table. Saves the screenshots in docs/screenshots/."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agents.models import ToolCall
from rooms.models import Message, Room, RoomNote
from rooms.services import membership_join
from tests.browser.conftest import session_cookie
from tests.browser.test_user_story import room_url, send, wait_live, wait_turns
from tests.conftest import make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def shot(page, name: str) -> None:
    DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_SHOTS / f"{name}.png"), full_page=False)
    assert (DOCS_SHOTS / f"{name}.png").stat().st_size > 10_000


def card(page, name: str) -> str:
    return f"li.msg.role-assistant .tool-call:has(.tool-name:text-is('{name}'))"


def wait_call(room: Room, name: str, state: str, timeout: float = 30) -> ToolCall:
    deadline = time.monotonic() + timeout
    while True:
        call = ToolCall.objects.filter(room=room, name=name).order_by("-id").first()
        if call is not None and call.state == state:
            return call
        assert time.monotonic() < deadline, f"{name} never became {state} ({call and call.state})"
        time.sleep(0.05)


def test_a_server_call_card_appears_and_settles_live_for_two_people_and_survives_a_reload(
    stack, fake, room, alice, bob, page_for
):
    a, b = page_for(alice[0]), page_for(bob[0])
    for page in (a, b):
        page.goto(room_url(stack, room))
        wait_live(page)
    send(a, 'What is 17% of 2,340? !tool=calculator:{"expression": "17% of 2340"} !tokens=40 !delay=60')
    for page in (a, b):
        page.wait_for_selector(f"{card(page, 'calculator')}[data-state=done] .tool-state:text-is('done')")
    # the answer still streams (step 2): Bob reloads, the card is in the server-rendered page
    assert Message.objects.get(room=room, role="assistant").status == "streaming"
    b.reload()
    done = b.locator(f"{card(b, 'calculator')}[data-state=done]")
    assert done.count() == 1
    assert done.locator(".tool-duration").inner_text().endswith(("ms", "s"))
    wait_live(b)
    # collapsed by default; opened, it shows the input and the output as JSON text
    assert not done.locator("details").evaluate("d => d.open")
    done.locator("summary").click()
    assert json.loads(done.locator(".tool-input").inner_text()) == {"expression": "17% of 2340"}
    output = json.loads(done.locator(".tool-output").inner_text())
    assert "397.8" in json.dumps(output)
    wait_turns(room, 1)
    for page in (a, b):
        page.wait_for_selector("li.msg.role-assistant[data-status=complete]")
    a.locator(f"{card(a, 'calculator')} summary").click()
    shot(a, "tool-call-two-users")
    assert b.locator(f"{card(b, 'calculator')}[data-state=done]").count() == 1  # not duplicated


def test_an_approval_shows_buttons_to_the_asker_and_moderators_and_text_to_the_others(
    stack, fake, room, alice, bob, page_for
):
    carol = make_user("Carol")
    membership_join(room=room, user=bob[0])
    membership_join(room=room, user=carol[0])
    a, b, c = page_for(alice[0]), page_for(bob[0]), page_for(carol[0])  # owner, asker, bystander
    for page in (a, b, c):
        page.goto(room_url(stack, room))
        wait_live(page)
    send(b, 'Remember that the trip is on May 3 !tool=note:{"text": "Trip: May 3"}')
    for page in (a, b, c):
        page.wait_for_selector(f"{card(page, 'note')}[data-state=awaiting_approval]")
    for decider in (a, b):  # the asker, and the owner
        assert decider.locator(f"{card(decider, 'note')} button.approve").is_visible()
        assert decider.locator(f"{card(decider, 'note')} button.deny").is_visible()
    bystander = c.locator(card(c, "note"))
    assert bystander.locator("button").count() == 0
    assert "Trip: May 3" in bystander.locator(".tool-input").inner_text()  # open: what it would do
    assert bystander.locator(".tool-wait").inner_text() == "Waiting for approval by Bob or a moderator"
    c.reload()  # still waiting after a reload, still read-only
    c.wait_for_selector(f"{card(c, 'note')} .tool-wait >> text=Waiting for approval by Bob")
    assert c.locator(f"{card(c, 'note')} button").count() == 0
    wait_live(c)
    b.reload()
    b.wait_for_selector(f"{card(b, 'note')} button.approve")
    wait_live(b)
    shot(b, "tool-approval-decider")
    shot(c, "tool-approval-bystander")
    # the bystander cannot decide even by hand: the server refuses it, and nothing changes
    call = wait_call(room, "note", "awaiting_approval")
    c.evaluate(
        "id => window.roomClient.socket().send(JSON.stringify({type: 'tool_approval', call_id: id, approved: true}))",
        str(call.pk),
    )
    c.wait_for_selector(f"{card(c, 'note')} .tool-notice >> text=forbidden")
    a.click(f"{card(a, 'note')} button.approve")
    for page in (a, b, c):
        page.wait_for_selector(f"{card(page, 'note')}[data-state=done]")
        assert page.locator(f"{card(page, 'note')} button").count() == 0  # gone from every device
        page.wait_for_selector("#notes li .note-text >> text=Trip: May 3")
    wait_turns(room, 1)
    assert RoomNote.objects.get(room=room).text == "Trip: May 3"
    assert wait_call(room, "note", "done").decided_by_id == alice[0].pk
    # the notes panel is server-rendered too, and fits a phone
    c.set_viewport_size({"width": 390, "height": 800})
    c.reload()
    assert c.locator("#notes li .note-text").all_inner_texts() == ["Trip: May 3"]
    assert c.locator("#notes").is_visible()
    assert c.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    SHOTS.mkdir(parents=True, exist_ok=True)
    c.screenshot(path=str(SHOTS / "tool-notes-phone.png"))


def test_a_deny_with_a_reason_reaches_the_model_and_every_page(stack, fake, room, alice, page_for):
    a = page_for(alice[0])
    a.goto(room_url(stack, room))
    wait_live(a)
    send(a, 'Note it !tool=note:{"text": "secret"} !say=Fine, I will not.')
    a.wait_for_selector(f"{card(a, 'note')} button.deny")
    a.fill(f"{card(a, 'note')} .deny-reason", "not this one")
    a.click(f"{card(a, 'note')} button.deny")
    a.wait_for_selector(f"{card(a, 'note')}[data-state=denied]")
    wait_turns(room, 1)
    call = ToolCall.objects.get(room=room, name="note")
    assert call.state == "denied" and "not this one" in call.error
    assert not RoomNote.objects.filter(room=room).exists()
    tool_messages = [m for m in fake.requests[-1]["messages"] if m.get("role") == "tool"]
    assert "not this one" in tool_messages[-1]["content"]


def test_local_time_is_answered_by_the_asking_page_and_the_answer_goes_on(stack, fake, chromium, room, alice):
    context = chromium.new_context(timezone_id="Asia/Tokyo", viewport={"width": 1100, "height": 800})
    try:
        context.add_cookies([session_cookie(alice[0], stack.base_url)])
        a = context.new_page()
        a.goto(room_url(stack, room))
        wait_live(a)
        send(a, "What time is it for me? !tool=local_time:{} !say=It is evening in Tokyo.")
        a.wait_for_selector(f"{card(a, 'local_time')}[data-state=done]")
        a.wait_for_selector("li.msg.role-assistant[data-status=complete] >> text=It is evening in Tokyo.")
        call = ToolCall.objects.get(room=room, name="local_time")
        assert call.kind == "client" and call.state == "done"
        assert call.output["time_zone"] == "Asia/Tokyo"
        assert call.output["local"].endswith("+09:00")
        offered = {t["function"]["name"] for t in fake.requests[0]["tools"]}
        assert {"local_time", "choose", "calculator"} <= offered
    finally:
        context.close()


def test_choose_shows_the_options_to_the_asker_only_and_survives_a_reload(
    stack, fake, room, alice, bob, page_for
):
    a, b = page_for(alice[0]), page_for(bob[0])
    for page in (a, b):
        page.goto(room_url(stack, room))
        wait_live(page)
    send(a, 'Which one? !tool=choose:{"question": "Pick", "options": ["A", "B"]}')
    a.wait_for_selector(f"{card(a, 'choose')} button.choice >> text=B")
    assert a.locator("li.msg.role-assistant .meta .status").inner_text() == "waiting…"
    b.wait_for_selector(f"{card(b, 'choose')} .tool-state >> text=waiting for Alice to choose")
    assert b.locator(f"{card(b, 'choose')} .tool-question").inner_text() == "Pick"
    assert b.locator(f"{card(b, 'choose')} button").count() == 0
    a.reload()  # a pending choice survives a reload
    a.wait_for_selector(f"{card(a, 'choose')} button.choice >> text=B")
    wait_live(a)
    assert a.locator(f"{card(a, 'choose')} button.choice").all_inner_texts() == ["A", "B"]
    shot(a, "tool-client-choose")
    a.click(f"{card(a, 'choose')} button.choice >> text=B")
    for page in (a, b):
        page.wait_for_selector(f"{card(page, 'choose')}[data-state=done]")
        page.wait_for_selector("li.msg.role-assistant[data-status=complete] >> text=Answer to")
    call = ToolCall.objects.get(room=room, name="choose")
    assert call.output == {"choice": "B"}


def test_a_turn_waiting_on_a_person_can_be_stopped(stack, fake, room, alice, page_for):
    a = page_for(alice[0])
    a.goto(room_url(stack, room))
    wait_live(a)
    send(a, 'Which? !tool=choose:{"question": "Pick", "options": ["A", "B"]}')
    a.wait_for_selector(f"{card(a, 'choose')} button.choice")
    a.click("#stop")
    a.wait_for_selector("li.msg.role-assistant[data-status=cancelled]")
    a.wait_for_selector(f"{card(a, 'choose')}:not([data-state=waiting_client])")
    assert a.locator(f"{card(a, 'choose')} button").count() == 0
    a.wait_for_selector("#stop[hidden]", state="attached")


def test_two_tabs_of_the_asker_answer_a_client_call_once_and_show_no_error(
    stack, fake, room, alice, page_for
):
    a1, a2 = page_for(alice[0]), page_for(alice[0])
    for page in (a1, a2):
        page.goto(room_url(stack, room))
        wait_live(page)
    send(a1, "Time? !tool=local_time:{} !say=Thanks.")
    for page in (a1, a2):
        page.wait_for_selector(f"{card(page, 'local_time')}[data-state=done]")
    wait_turns(room, 1)
    time.sleep(0.3)  # a second tab's refused answer, if any, has come back
    for page in (a1, a2):
        assert page.locator("#notices .notice").count() == 0
        assert page.locator(".tool-notice").count() == 0
    assert ToolCall.objects.get(room=room, name="local_time").state == "done"


def test_the_owner_turns_tools_off_and_on_and_sets_ask_first(stack, fake, room, alice, page_for):
    a = page_for(alice[0])
    a.goto(f"{stack.base_url}/r/{room.slug}/settings/")
    rows = a.locator("#tool-settings tbody tr")
    names = rows.evaluate_all("rows => rows.map(r => r.dataset.tool)")
    assert {"calculator", "current_time", "search_room", "note"} <= set(names)
    assert a.locator("#tool-note-ask").is_checked()  # the tool's own default
    assert not a.locator("#tool-calculator-ask").is_checked()
    a.uncheck("#tool-search_room-on")
    a.check("#tool-calculator-ask")
    a.click("button:has-text('Save')")
    wait_live(a)
    room.refresh_from_db()
    assert "search_room" not in room.tools_on and "calculator" in room.tools_on
    assert set(room.tools_ask_first) == {"calculator", "note", "schedule"}  # the tools' own defaults + one
    # a calculator call now asks first
    send(a, 'Sum? !tool=calculator:{"expression": "2+2"} !say=Four.')
    a.wait_for_selector(f"{card(a, 'calculator')}[data-state=awaiting_approval] button.approve")


def test_tool_input_output_and_errors_are_text_never_html(stack, fake, room, alice, page_for):
    a = page_for(alice[0])
    a.goto(room_url(stack, room))
    wait_live(a)
    evil = "<img src=x onerror=window.__xss=1>"
    send(a, '!tool=calculator:{"expression": "' + evil + '"} !say=No.')
    a.wait_for_selector(f"{card(a, 'calculator')}[data-state=error]")
    for page_state in ("live", "reloaded"):
        box = a.locator(card(a, "calculator"))
        box.locator("summary").click()
        assert evil in box.locator(".tool-input").inner_text()
        assert box.locator("img").count() == 0
        assert box.locator(".tool-error").inner_text()
        assert a.evaluate("window.__xss") is None, page_state
        a.reload()
        wait_live(a)
