"""Hostile content renders inert in real Chromium: server-rendered and live, user and model."""

from __future__ import annotations

import time

import pytest

from tests.browser.test_user_story import room_url, send, wait_live, wait_turns
from tests.browser.waits import wait_js

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAYLOADS = [
    "<script>window.__xss = 'script'</script>",
    "<img src=x onerror=\"window.__xss = 'img'\">",
    "[click me](javascript:window.__xss='link')",
    "<svg onload=\"window.__xss = 'svg'\"><circle r=5 /></svg>",
    "<a href=\"javascript:window.__xss='a'\">a</a> <iframe src=\"javascript:window.__xss='iframe'\"></iframe>",
    "```html\n</code></pre><img src=x onerror=\"window.__xss='fence'\">\n```",
]


def no_script_ran(page) -> None:
    assert page.evaluate("window.__xss === undefined"), page.evaluate("window.__xss")
    # nothing executable made it into the transcript's DOM
    assert (
        page.locator("#transcript script, #transcript iframe, #transcript svg, #transcript img").count() == 0
    )
    assert page.evaluate(
        "[...document.querySelectorAll('#transcript *')].every(e => [...e.attributes]"
        ".every(a => !a.name.startsWith('on') && !/^\\s*javascript:/i.test(a.value)))"
    )


def test_hostile_user_and_model_content_renders_inert_live_and_after_reload(
    stack, fake, room, alice, bob, page_for
):
    a, b = page_for(alice[0]), page_for(bob[0])
    dialogs = []
    for page in (a, b):
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(room_url(stack, room))
        wait_live(page)
    for i, payload in enumerate(PAYLOADS):
        # the user's message carries the payload, and the model is told to say it back
        first_line = payload.replace("\n", " ")
        send(a, f"{payload}\n!say={first_line}")
        wait_turns(room, i + 1)
    wait_js(
        b,
        f"document.querySelectorAll('li.msg.role-assistant[data-status=complete]').length === {len(PAYLOADS)}",
    )
    for page in (a, b):
        no_script_ran(page)
        assert "window.__xss" in page.locator("#transcript").inner_text()  # shown as text
        page.reload()
        wait_live(page)
        no_script_ran(page)
    assert dialogs == []


def test_the_page_runs_under_a_csp_that_refuses_inline_and_foreign_scripts(stack, room, alice, page_for):
    from tests.browser.conftest import CSP_VIOLATIONS

    page = page_for(alice[0])
    response = page.goto(room_url(stack, room))
    policy = response.headers["content-security-policy"]
    for directive in ("script-src 'self'", "object-src 'none'", "base-uri 'none'"):
        assert directive in policy, policy
    wait_live(page)
    # a script that got into the DOM by any path (not through our sanitizers) does not run
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.__xss = 1';"
        " document.body.append(s); const f = document.createElement('script');"
        " f.src = 'https://evil.example/x.js'; document.body.append(f); }"
    )
    deadline = time.monotonic() + 10
    while len(CSP_VIOLATIONS) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert page.evaluate("window.__xss === undefined")
    assert any("inline script" in v for v in CSP_VIOLATIONS), CSP_VIOLATIONS
    assert any("evil.example" in v for v in CSP_VIOLATIONS), CSP_VIOLATIONS
    CSP_VIOLATIONS.clear()  # provoked on purpose
