"""The provider the benchmark's Celery worker runs (LLM_PROVIDER=bench.perf.provider.StampingProvider).

It is the project's OpenAI-compatible provider, talking to the fake OpenAI server
(tests/fakellm.py) over real HTTP, unchanged, except for user messages containing `!stamp`:
there every text delta is replaced, at the moment the provider yields it (to the worker's stream
loop, or to the runner), by the wall clock in ns, `[1732560000123456789]`. Clients find those
stamps in the deltas they receive, so "token latency" is measured from the provider's yield to
the client's receive. The text is stamped before the runner sees it, so persisted chunks and the
final message hold the same stamps: the convergence checks still compare like with like.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

from django.conf import settings

from agents.providers.base import AsyncModelStream, ModelRequest, ModelStream, StreamEvent, TextDelta
from agents.providers.openai_compat import OpenAICompatibleProvider


class _Stamped(ModelStream):
    def __init__(self, inner: ModelStream) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[StreamEvent]:
        for event in self.inner:
            if isinstance(event, TextDelta):
                event = TextDelta("[%d]" % time.time_ns())
            yield event

    def close(self) -> None:
        self.inner.close()


class _AsyncStamped(AsyncModelStream):
    def __init__(self, inner: AsyncModelStream) -> None:
        self.inner = inner

    async def _events(self) -> AsyncIterator[StreamEvent]:
        async for event in self.inner:
            if isinstance(event, TextDelta):
                event = TextDelta("[%d]" % time.time_ns())
            yield event

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    async def aclose(self) -> None:
        await self.inner.aclose()


class StampingProvider(OpenAICompatibleProvider):
    def __init__(self) -> None:
        super().__init__(
            settings.LLM_BASE_URL or None, settings.LLM_API_KEY, settings.LLM_MODEL, settings.LLM_TIMEOUT
        )

    def stream(self, request: ModelRequest) -> ModelStream:
        inner = super().stream(request)
        return _Stamped(inner) if _stamped(request) else inner

    def astream(self, request: ModelRequest) -> AsyncModelStream:
        inner = super().astream(request)
        return _AsyncStamped(inner) if _stamped(request) else inner


def _stamped(request: ModelRequest) -> bool:
    users = [m for m in request.messages if m.role == "user"]
    return bool(users) and "!stamp" in users[-1].content
