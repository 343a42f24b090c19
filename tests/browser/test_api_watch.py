"""The OpenAI-compatible door seen from a browser: the official `openai` client streams a
room's turn while a person watches the same turn stream live in Chromium."""

from __future__ import annotations

import threading
from typing import Any

import openai
import pytest

from rooms.models import Message
from rooms.services import membership_join
from tests.browser.test_user_story import room_url, wait_live, wait_turns

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_openai_client_streams_a_turn_a_browser_watches(stack, fake, room, alice, bob, page_for):
    membership_join(room=room, user=bob[0])
    page = page_for(bob[0])
    page.goto(room_url(stack, room))
    wait_live(page)
    got: dict[str, Any] = {"chunks": []}

    def ask() -> None:  # the official client, synchronous, as a script would use it
        client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=alice[1], max_retries=0)
        try:
            stream = client.chat.completions.create(
                model=room.slug, stream=True,
                messages=[{"role": "user", "content": "Count for us !tokens=60 !delay=40"}],
            )  # fmt: skip
            for chunk in stream:
                got["chunks"].append(chunk.choices[0].delta.content or "")
        except Exception as exc:  # re-raised in the test thread
            got["error"] = exc

    script = threading.Thread(target=ask, name="openai-client")
    script.start()
    # Bob's page shows Alice's question and the answer streaming in, while the script reads it
    page.wait_for_selector("li.msg.role-user >> text=Count for us")
    page.wait_for_selector("li.msg.role-assistant[data-status=streaming] .body:not(:empty)")
    script.join(60)
    assert not script.is_alive() and "error" not in got
    wait_turns(room, 1)
    answer = Message.objects.get(room=room, role="assistant")
    page.wait_for_selector(f"#m-{answer.id}[data-status=complete]")
    text = "".join(got["chunks"])
    assert text == answer.content and text.endswith(" w59 w60")
    assert sum(1 for c in got["chunks"] if c) > 1
    assert page.locator(f"#m-{answer.id} .body").inner_text().strip() == answer.content.strip()
    assert Message.objects.get(room=room, role="user").author_id == alice[0].pk
