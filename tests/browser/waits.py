"""Waiting on the page's state under its Content-Security-Policy.

Playwright's `wait_for_function` builds its predicate with `eval` inside the page, which a CSP
without 'unsafe-eval' refuses; `page.evaluate` goes through the DevTools protocol instead and
is not subject to the page's CSP, so the condition is polled from here.
"""

from __future__ import annotations

import time
from typing import Any


def wait_js(page: Any, expression: str, timeout: float = 20.0) -> Any:
    """Poll a JavaScript expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout:g}s: {expression}")
        page.wait_for_timeout(50)
