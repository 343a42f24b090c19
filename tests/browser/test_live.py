"""A room live in real Chromium: markdown while it streams, hostile streamed output, presence and
typing, the keyboard, the screen reader's live region, and phone width."""

from __future__ import annotations

import pytest

from rooms.models import Message
from tests.browser.test_markdown import SETUP_JS
from tests.browser.test_user_story import room_url, send, wait_live, wait_turns
from tests.browser.test_xss import no_script_ran
from tests.browser.waits import wait_js

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RICH_ANSWER = """## Plan

Three steps, see [the docs](https://docs.example.com/guide "Guide"):

1. Install **it**
2. Run `make run`
   - then open the *room*

```python
def greet(name: str) -> str:
    # say hello
    return f"Hello {name}"  # 42
```

| step | time |
|:-----|-----:|
| install | 2 min |
| run | 1 s |

That is all: the answer goes on for a while so the test can look at it mid-stream, word after
word after word after word after word after word after word after word after word after word.
"""

HOSTILE_ANSWER = """Here is *markdown* with traps <script>window.__xss = 'script'</script>

<img src=x onerror="window.__xss = 'img'"> and <svg onload="window.__xss = 'svg'">

[a link](javascript:window.__xss='link') [entity](&#106;avascript:window.__xss='entity') <javascript:window.__xss='auto'>

```html
</code></pre><img src=x onerror="window.__xss='fence'">
```

| <img src=x onerror="window.__xss='cell'"> | [x](javascript:window.__xss='cell-link') |
|---|---|
| <iframe src="javascript:window.__xss='iframe'"></iframe> | b |

and it goes on streaming for a while, word after word after word after word after word, done.
"""


def open_live(stack, room, page_for, *users) -> list:
    """One page per user, each in its own browser context, open on the room and live."""
    pages = [page_for(user) for user in users]
    for page in pages:
        page.goto(room_url(stack, room))
        wait_live(page)
    return pages


def load_renderers(page) -> None:
    page.evaluate(SETUP_JS.replace("STATIC", "/static"))


def canon_body(page, message_id: int) -> str:
    return page.evaluate(f"__md.canon(document.querySelector('#m-{message_id} > .body'))")


def test_markdown_renders_while_streaming_and_ends_as_the_server_html(
    stack, fake, room, alice, bob, page_for
):
    a, b = open_live(stack, room, page_for, alice[0], bob[0])
    fake.script([RICH_ANSWER])
    send(a, "How do I start? !delay=40")
    streaming = "li.msg.role-assistant[data-status=streaming] .body"
    a.wait_for_selector(f"{streaming} h2 + p")
    a.evaluate(f"window.__h2 = document.querySelector('{streaming} h2')")
    # The code block is highlighted while it streams, the list is a list, the link is a link.
    a.wait_for_selector(f"{streaming} pre code.language-python .hljs-keyword >> text=def")
    assert a.locator(f"{streaming} ol > li > ul > li em").inner_text() == "room"
    assert (
        a.locator(f"{streaming} a[href='https://docs.example.com/guide']").get_attribute("rel")
        == "noopener noreferrer nofollow"
    )
    a.wait_for_selector(f"{streaming} table td >> text=install")
    # Finished blocks are not rendered again: the heading is the very same element.
    assert a.evaluate(f"window.__h2 === document.querySelector('{streaming} h2')")
    # Bob reloads mid-stream: the server renders the partial answer as markdown, then it goes on.
    b.reload()
    assert b.locator("li.msg.role-assistant[data-status=streaming] .body h2").inner_text() == "Plan"
    wait_live(b)
    wait_turns(room, 1)
    message = Message.objects.get(room=room, role="assistant")
    assert message.content == RICH_ANSWER
    for page in (a, b):
        page.wait_for_selector(f"#m-{message.id}[data-status=complete]")
        load_renderers(page)
        # the final DOM (server HTML, highlighted) is what the browser renders from the text
        fresh = page.evaluate(
            "(t) => { const d = document.createElement('div'); d.className = 'body'; d.append(__md.md.renderMarkdown(t)); return __md.canon(d); }",
            message.content,
        )
        assert canon_body(page, message.id) == fresh
        assert (
            page.locator(f"#m-{message.id} .body pre code .hljs-string").first.inner_text()
            == 'f"Hello {name}"'
        )
        assert page.locator(f"#m-{message.id}").get_attribute("aria-busy") is None


def test_hostile_model_output_stays_inert_while_it_streams(stack, fake, room, alice, page_for):
    a = page_for(alice[0])
    dialogs = []
    a.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    a.goto(room_url(stack, room))
    wait_live(a)
    fake.script([HOSTILE_ANSWER])
    send(a, "say something nasty !delay=25")
    streaming = "li.msg.role-assistant[data-status=streaming] .body"
    a.wait_for_selector(f"{streaming} pre code")
    no_script_ran(a)
    a.wait_for_selector(f"{streaming} table")
    no_script_ran(a)
    wait_turns(room, 1)
    a.wait_for_selector("li.msg.role-assistant[data-status=complete]")
    no_script_ran(a)
    assert "window.__xss = 'script'" in a.locator("li.msg.role-assistant .body").inner_text()
    a.reload()
    wait_live(a)
    no_script_ran(a)
    assert dialogs == []


def test_two_people_see_who_is_here_and_who_is_typing(stack, fake, room, alice, bob, page_for):
    a, b = open_live(stack, room, page_for, alice[0], bob[0])
    a.wait_for_selector("#presence li >> text=Bob")
    b.wait_for_selector("#presence li >> text=Alice")
    assert a.locator("#presence li.me").inner_text() == "Alice (you)"
    a.type("#content", "Hel")
    b.wait_for_selector("#typing >> text=Alice is typing…")
    b.close()
    wait_js(a, "![...document.querySelectorAll('#presence li')].some(li => li.textContent.includes('Bob'))")


def test_keyboard_enter_sends_shift_enter_breaks_the_line_escape_stops(stack, fake, room, alice, page_for):
    (a,) = open_live(stack, room, page_for, alice[0])
    a.focus("#content")
    a.keyboard.type("first line")
    a.keyboard.press("Shift+Enter")
    a.keyboard.type("second line !tokens=200 !delay=50")
    assert a.input_value("#content") == "first line\nsecond line !tokens=200 !delay=50"
    assert a.locator("li.msg.role-user").count() == 0
    a.keyboard.press("Enter")
    a.wait_for_selector("li.msg.role-assistant[data-status=streaming] .body:not(:empty)")
    assert a.input_value("#content") == ""
    assert (
        Message.objects.get(room=room, role="user").content == "first line\nsecond line !tokens=200 !delay=50"
    )
    # screen readers: the transcript is a polite live region; a streaming answer is busy until done
    assert a.locator("#transcript").get_attribute("aria-live") == "polite"
    assert a.locator("li.msg.role-assistant").get_attribute("aria-busy") == "true"
    a.keyboard.press("Escape")
    a.wait_for_selector("li.msg.role-assistant[data-status=cancelled]")
    assert a.locator("li.msg.role-assistant").get_attribute("aria-busy") is None
    assert a.locator("#stop").is_hidden()
    wait_turns(room, 1)
    assert Message.objects.get(room=room, role="assistant").status == "cancelled"


def test_phone_width_has_no_sideways_scroll_and_keeps_the_composer_in_view(
    stack, fake, room, alice, page_for
):
    a = page_for(alice[0])
    a.set_viewport_size({"width": 390, "height": 844})
    a.goto(room_url(stack, room))
    wait_live(a)
    fake.script(
        [
            "```text\n"
            + "x" * 300
            + "\n```\n\n| a | b | c | d | e | f |\n|---|---|---|---|---|---|\n"
            + "| long cell text | " * 6
            + "\n\n"
            + "averyveryverylongwordwithoutanyspaces" * 5
        ]
    )
    send(a, "wide things please")
    a.wait_for_selector("li.msg.role-assistant[data-status=complete] table")
    assert a.evaluate("document.documentElement.scrollWidth") <= 390
    box = a.locator("#content").bounding_box()
    assert box is not None and box["y"] + box["height"] <= 844
    send(a, "still works on a phone !say=yes")
    a.wait_for_selector("li.msg.role-assistant >> text=yes")
