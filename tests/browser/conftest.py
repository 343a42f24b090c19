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


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


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
