"""LLM providers: `get_provider()` returns the one configured by the LLM_* settings."""

from __future__ import annotations

import os
import threading

from .base import (
    AsyncModelStream,
    ChatMessage,
    ModelRequest,
    ModelStream,
    Provider,
    ProviderError,
    StepEnd,
    StreamEvent,
    TextDelta,
    ToolCallRequest,
)

__all__ = [
    "AsyncModelStream",
    "ChatMessage",
    "ModelRequest",
    "ModelStream",
    "Provider",
    "ProviderError",
    "StepEnd",
    "StreamEvent",
    "TextDelta",
    "ToolCallRequest",
    "get_provider",
    "reset_provider_cache",
]

_lock = threading.Lock()
# Keyed by pid: a provider built before a fork (Celery prefork) would share its HTTP
# connection pool with the children, so each process builds its own.
_cached: tuple[int, Provider] | None = None


def get_provider() -> Provider:
    """The process-wide provider chosen by settings.LLM_PROVIDER (openai, demo or a dotted path)."""
    global _cached
    with _lock:
        if _cached is None or _cached[0] != os.getpid():
            _cached = (os.getpid(), _build())
        return _cached[1]


def reset_provider_cache() -> None:
    """Forget the cached provider (tests, settings changes)."""
    global _cached
    with _lock:
        _cached = None


def _build() -> Provider:
    # Imported here so importing this package never needs configured Django settings.
    from django.conf import settings

    choice = (getattr(settings, "LLM_PROVIDER", "") or "demo").strip()
    if choice.lower() == "openai":
        from .openai_compat import OpenAICompatibleProvider

        return OpenAICompatibleProvider(
            settings.LLM_BASE_URL or None,
            settings.LLM_API_KEY,
            settings.LLM_MODEL,
            settings.LLM_TIMEOUT,
        )
    if choice.lower() == "demo":
        from .demo import DemoProvider

        return DemoProvider()
    from django.utils.module_loading import import_string

    cls = import_string(choice)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise TypeError(f"LLM_PROVIDER={choice!r} is not a Provider subclass")
    return cls()
