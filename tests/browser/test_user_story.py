"""The user story of the first issue, in two real browsers (two users, two contexts)."""

from __future__ import annotations

import re
import time

import pytest

from agents.models import Turn
from rooms.models import Message
from tests.browser.waits import wait_js

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def room_url(stack, room) -> str:
    return f"{stack.base_url}/r/{room.slug}/"


def wait_live(page) -> None:
    wait_js(page, "document.body.dataset.wsState === 'live'")


def send(page, text: str) -> None:
    page.fill("#content", text)
    page.press("#content", "Enter")


def assistant_bodies(page) -> list[str]:
    return page.locator("li.msg.role-assistant .body").all_inner_texts()


def wait_turns(room, n: int, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    terminal = ("done", "cancelled", "failed", "interrupted")
    while Turn.objects.filter(room=room, status__in=terminal).count() < n:
        assert time.monotonic() < deadline, "turns did not finish"
        time.sleep(0.1)


def test_two_people_chat_and_watch_the_same_stream_live(stack, fake, room, alice, bob, page_for):
    a, b = page_for(alice[0]), page_for(bob[0])
    for page in (a, b):
        page.goto(room_url(stack, room))
        wait_live(page)
    send(a, "Hello from Alice !tokens=60 !delay=40")
    # Bob sees Alice's message and the answer streaming in, live
    b.wait_for_selector("li.msg.role-user >> text=Hello from Alice")
    b.wait_for_selector("li.msg.role-assistant[data-status=streaming] .body:not(:empty)")
    a.wait_for_selector("#stop:not([hidden])")
    # Bob reloads mid-answer: the server-rendered page has the partial text, then it goes on
    b.reload()
    partial = b.locator("li.msg.role-assistant .body").inner_text()
    assert partial.startswith("Answer to")
    assert b.locator("li.msg.role-assistant").get_attribute("data-status") == "streaming"
    wait_live(b)
    wait_turns(room, 1)
    final = Message.objects.get(room=room, role="assistant").content
    for page in (a, b):
        page.wait_for_selector("li.msg.role-assistant[data-status=complete]")
        assert assistant_bodies(page)[0].strip() == final.strip()
    # Bob answers; Alice sees him
    send(b, "Hi Alice, Bob here !say=Nice to meet you both.")
    a.wait_for_selector("li.msg.role-user >> text=Hi Alice, Bob here")
    a.wait_for_selector("li.msg.role-assistant >> text=Nice to meet you both.")
    wait_turns(room, 2)
    assert Message.objects.filter(room=room, role="user").count() == 2


def test_queue_three_messages_then_stop_the_running_answer(stack, fake, room, alice, page_for):
    a = page_for(alice[0])
    a.goto(room_url(stack, room))
    wait_live(a)
    send(a, "long answer please !tokens=80 !delay=40")
    a.wait_for_selector("li.msg.role-assistant[data-status=streaming] .body:not(:empty)")
    for i in (1, 2, 3):
        send(a, f"queued {i} !say=reply {i}")
    # accepted at once: three user messages shown and stored while the first answer streams
    deadline = time.monotonic() + 5
    while Message.objects.filter(room=room, role="user").count() < 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert Message.objects.filter(room=room, role="assistant", status="streaming").count() == 1
    a.click("#stop")
    a.wait_for_selector("li.msg.role-assistant[data-status=cancelled]")
    wait_turns(room, 4)
    answers = list(Message.objects.filter(room=room, role="assistant").order_by("seq"))
    assert answers[0].status == "cancelled" and answers[0].content
    assert [m.content for m in answers[1:]] == ["reply 1", "reply 2", "reply 3"]
    wait_js(a, "document.querySelectorAll('li.msg.role-assistant[data-status=complete]').length === 3")
    texts = [t.strip() for t in assistant_bodies(a)]
    assert texts[1:] == ["reply 1", "reply 2", "reply 3"]
    assert texts[0] == answers[0].content.strip()
    assert re.search("stopped", a.locator("li.msg.role-assistant").first.inner_text())


def test_an_answer_finishes_with_every_tab_closed(stack, fake, room, alice, page_for):
    a = page_for(alice[0])
    a.goto(room_url(stack, room))
    wait_live(a)
    send(a, "keep going without me !tokens=40 !delay=30")
    a.wait_for_selector("li.msg.role-assistant[data-status=streaming]")
    a.context.close()
    wait_turns(room, 1)
    again = page_for(alice[0])
    again.goto(room_url(stack, room))
    message = Message.objects.get(room=room, role="assistant")
    assert message.status == "complete" and message.content.endswith("w40")
    assert again.locator("li.msg.role-assistant").get_attribute("data-status") == "complete"
    assert assistant_bodies(again)[0].strip() == message.content.strip()


def test_sign_up_create_a_room_and_a_guest_joins_it(stack, fake, chromium):
    signup = chromium.new_context()
    guest = chromium.new_context()
    try:
        a = signup.new_page()
        a.goto(stack.base_url + "/")
        a.click("text=Sign up")
        a.fill("#id_username", "carol")
        a.fill("#id_display_name", "Carol")
        a.fill("#id_password1", "a-long-Passw0rd!")
        a.fill("#id_password2", "a-long-Passw0rd!")
        a.click("button:has-text('Create account')")
        a.fill("#id_title", "Book club")
        a.click("button:has-text('Create room')")
        a.wait_for_url(re.compile(r"/r/book-club-[0-9a-f]+/$"))
        wait_live(a)
        room_path = a.url.split(stack.base_url)[1]
        send(a, "What should we read next? !say=Try *Middlemarch*.")
        a.wait_for_selector("li.msg.role-assistant[data-status=complete] em >> text=Middlemarch")

        g = guest.new_page()
        g.goto(f"{stack.base_url}/guest/?next={room_path}")
        g.fill("#id_display_name", "Dana (guest)")
        g.click("button:has-text('Join')")
        g.wait_for_url(re.compile(re.escape(room_path) + "$"))
        wait_live(g)
        assert "What should we read next?" in g.locator("#transcript").inner_text()
        send(g, "Hi from a guest !say=Welcome, Dana.")
        a.wait_for_selector("li.msg.role-user >> text=Hi from a guest")
        a.wait_for_selector("li.msg.role-assistant >> text=Welcome, Dana.")
        assert "Dana (guest)" in a.locator("#transcript").inner_text()
    finally:
        signup.close()
        guest.close()
