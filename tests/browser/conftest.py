"""Real Chromium (Debian's) driven by Python Playwright, against the real stack."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


# What Chromium reported refusing under the site's Content-Security-Policy during a test.
CSP_VIOLATIONS: list[str] = []


def _note_csp_violation(message: Any) -> None:
    if "Content Security Policy" in message.text:
        CSP_VIOLATIONS.append(f"{message.location.get('url')}: {message.text}")


class _WatchedBrowser:
    """The browser, whose every context reports CSP violations to CSP_VIOLATIONS."""

    def __init__(self, browser: Any) -> None:
        self._browser = browser

    def new_context(self, **kwargs: Any) -> Any:
        context = self._browser.new_context(**kwargs)
        context.on("console", _note_csp_violation)
        return context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._browser, name)


# Per module, not per session: Playwright's sync API leaves its event loop set as the running
# loop of the test thread while it lives, and then Django's test Client cannot run the async
# (static files) middleware for the integration tests that follow in the same session.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield _WatchedBrowser(browser)
        finally:
            browser.close()


@pytest.fixture(autouse=True)
def _runs_under_the_csp() -> Iterator[None]:
    """Every browser test runs under the site's Content-Security-Policy: nothing it loads or
    runs may be refused (a test that provokes a refusal on purpose clears the list)."""
    CSP_VIOLATIONS.clear()
    yield
    assert not CSP_VIOLATIONS, "refused by the Content-Security-Policy:\n" + "\n".join(CSP_VIOLATIONS)


def session_cookie(user: Any, base_url: str) -> dict[str, Any]:
    """Log a user in the way the login form would, and hand the cookie to a browser context."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return {"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base_url}


@pytest.fixture
def page_for(chromium: Any, stack: Any) -> Iterator[Any]:
    contexts: list[Any] = []

    def open_as(user: Any) -> Any:
        context = chromium.new_context(viewport={"width": 1100, "height": 800})
        context.add_cookies([session_cookie(user, stack.base_url)])
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        return page

    yield open_as
    for context in contexts:
        context.close()
