"""The chat UI in real Chromium: queue positions, offline outbox, no-JS reading, load earlier,
settings and profile, phone width; saves the screenshots shown in the README."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from rooms.models import Message
from rooms.services import message_post
from tests.browser.test_user_story import room_url, send, wait_live, wait_turns
from tests.browser.waits import wait_js

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def test_queued_questions_show_their_position_and_can_be_withdrawn(stack, fake, room, alice, page_for):
    a = page_for(alice[0])
    a.goto(room_url(stack, room))
    wait_live(a)
    send(a, "hold on !tokens=60 !delay=50")
    a.wait_for_selector("li.msg.role-assistant[data-status=streaming]")
    for i in (1, 2, 3):
        send(a, f"question {i} !say=answer {i}")
    for i in (1, 2, 3):
        a.wait_for_selector(f"li.msg.role-user:has-text('question {i}') .status >> text=queued #{i}")
    a.click("li.msg.role-user:has-text('question 2') button.withdraw")
    a.wait_for_selector("li.msg.role-user:has-text('question 2') .status >> text=withdrawn")
    a.wait_for_selector("li.msg.role-user:has-text('question 3') .status >> text=queued #2")
    wait_turns(room, 4)
    answers = list(Message.objects.filter(room=room, role="assistant").values_list("content", flat=True))
    assert answers[1:] == ["answer 1", "answer 3"]


def test_messages_typed_offline_wait_in_the_outbox_and_are_sent_once(stack, fake, room, alice, page_for):
    a = page_for(alice[0])
    a.goto(room_url(stack, room))
    wait_live(a)
    a.context.set_offline(True)
    a.evaluate("window.roomClient.socket() && window.roomClient.socket().close()")
    wait_js(a, "document.body.dataset.wsState !== 'live'")
    send(a, "written offline one !say=got one")
    send(a, "written offline two !say=got two")
    assert a.locator("li.msg.pending").count() == 2
    assert a.evaluate("window.roomClient.outbox.length") == 2
    a.context.set_offline(False)
    a.evaluate("window.dispatchEvent(new Event('online'))")
    wait_live(a)
    wait_js(a, "document.querySelectorAll('li.msg.pending').length === 0")
    wait_turns(room, 2)
    for text in ("written offline one !say=got one", "written offline two !say=got two"):
        assert Message.objects.filter(room=room, content=text).count() == 1
    a.reload()
    wait_live(a)
    assert a.locator("li.msg.role-user").count() == 2  # nothing re-sent by the reload


def test_the_transcript_is_readable_with_javascript_off(stack, chromium, room, alice):
    from tests.browser.conftest import session_cookie

    message_post(room=room, author=alice[0], client_id=uuid.uuid4(), content="**bold** words")
    context = chromium.new_context(java_script_enabled=False)
    try:
        context.add_cookies([session_cookie(alice[0], stack.base_url)])
        page = context.new_page()
        page.goto(room_url(stack, room))
        assert page.locator("li.msg.role-user .body strong").inner_text() == "bold"
        # the composer still works: a plain form post
        page.fill("#content", "sent without JavaScript")
        page.click("#send")
        page.wait_for_selector("li.msg >> text=sent without JavaScript")
    finally:
        context.close()


def test_load_earlier_pages_up_through_a_long_transcript(stack, room, alice, page_for):
    room.ai_enabled = False
    room.save()
    for i in range(130):
        message_post(room=room, author=alice[0], client_id=uuid.uuid4(), content=f"message {i}")
    a = page_for(alice[0])
    a.goto(room_url(stack, room))
    wait_live(a)
    assert a.locator("li.msg").count() == 100
    a.click("#load-earlier")
    wait_js(a, "document.querySelectorAll('li.msg').length === 130")
    assert a.locator("li.msg .body").first.inner_text().strip() == "message 0"
    assert a.locator("#load-earlier").count() == 0


def test_the_owner_changes_ai_settings_and_a_member_sets_a_display_name(stack, fake, room, alice, page_for):
    a = page_for(alice[0])
    a.goto(room_url(stack, room))
    a.click("#room-settings")
    a.select_option("#id_ai_trigger", "mention")
    a.fill("#id_system_prompt", "You are terse.")
    a.click("button:has-text('Save')")
    a.wait_for_url(room_url(stack, room))
    room.refresh_from_db()
    assert (room.ai_trigger, room.system_prompt) == ("mention", "You are terse.")
    a.goto(stack.base_url + "/profile/")
    a.fill("#id_display_name", "Alice A.")
    a.click("button:has-text('Save')")
    a.wait_for_selector("text=Profile saved.")
    alice[0].refresh_from_db()
    assert alice[0].first_name == "Alice A."


WORKER_DIES_ANSWER = """Then **nothing is lost**. The sweeper finds the expired lease:

```python
turn = Turn.objects.get(id=turn_id)
if turn.lease_expired():  # no renewal for 20 s
    runner.resume(turn)   # continues the same message
```

1. Its lease expires (no renewal within `LEASE_TIMEOUT`).
2. Celery beat's sweeper finalises the partial answer from its chunks.
3. Another worker continues it, and every browser shows *recovering…* meanwhile.

| fault | outcome |
|---|---|
| worker killed | answer continued |
| Redis restart | clients `sync` from Postgres |
"""


def test_screenshots_of_home_a_room_mid_stream_and_phone_width(stack, fake, room, alice, bob, page_for):
    a, b = page_for(alice[0]), page_for(bob[0])
    for page in (a, b):
        page.goto(room_url(stack, room))
        wait_live(page)
    send(
        a,
        "Can you explain **resumable streams**? !say=Sure. Every chunk is *persisted* first, then broadcast.",
    )
    b.wait_for_selector("li.msg.role-assistant[data-status=complete]")
    fake.script([WORKER_DIES_ANSWER])
    send(b, "Nice, and what if a worker dies? !delay=60")
    # mid-stream, with the code block already highlighted and the list still growing
    a.wait_for_selector("li.msg.role-assistant[data-status=streaming] .body ol li >> text=Its lease")
    shot(a, "room-mid-stream")
    a.set_viewport_size({"width": 390, "height": 844})
    shot(a, "phone")
    a.set_viewport_size({"width": 1100, "height": 800})
    a.goto(stack.base_url + "/")
    shot(a, "home")
    DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
    for name in ("home", "room-mid-stream", "phone"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
        shutil.copy(SHOTS / f"{name}.png", DOCS_SHOTS / f"{name}.png")


def test_a_tab_too_far_behind_reloads_itself_and_shows_the_room_as_it_is(
    stack, room, alice, page_for, settings
):
    # the test stack replays at most 400 events (tests/stack.py): 450 messages while offline
    settings.RATE_MESSAGES_PER_MINUTE = 0
    room.ai_enabled = False
    room.save()
    a = page_for(alice[0])
    a.goto(room_url(stack, room))
    wait_live(a)
    a.evaluate("window.__samePage = true")  # gone once the page reloads
    a.context.set_offline(True)
    a.evaluate("window.roomClient.socket() && window.roomClient.socket().close()")
    wait_js(a, "document.body.dataset.wsState !== 'live'")
    for i in range(450):
        message_post(room=room, author=alice[0], client_id=uuid.uuid4(), content=f"while away {i}")
    a.context.set_offline(False)
    with a.expect_navigation(timeout=30_000):  # it reconnects with its old seq, is closed 4413
        a.evaluate("window.dispatchEvent(new Event('online'))")
    wait_live(a)
    assert a.evaluate("window.__samePage") is None, "the page was loaded again"
    a.wait_for_selector("li.msg.role-user:has-text('while away 449')")
    assert a.locator("li.msg.role-user:has-text('while away 0')").count() == 0  # not in the last page
