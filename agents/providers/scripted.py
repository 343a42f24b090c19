"""A provider that plays back scripted replies, for unit tests."""

from __future__ import annotations

import asyncio
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence

from .base import (
    AsyncModelStream,
    ModelRequest,
    ModelStream,
    Provider,
    ProviderError,
    StepEnd,
    StreamEvent,
    TextDelta,
)

#: One scripted reply: a string (streamed word by word, then StepEnd("stop")), a list of
#: events played exactly as given (an Exception inside it is raised when reached, e.g. after
#: some text), or an Exception raised on first iteration.
Reply = str | Sequence[StreamEvent | BaseException] | BaseException

_WORDS = re.compile(r"\s+|\S+\s*")


def split_words(text: str) -> list[str]:
    """Split `text` into word tokens keeping their whitespace: "".join(tokens) == text."""
    return _WORDS.findall(text)


def as_provider_error(exc: BaseException) -> ProviderError:
    """ProviderError as is; anything else wrapped (retryable for connection/timeout errors)."""
    if isinstance(exc, ProviderError):
        return exc
    retryable = isinstance(exc, (ConnectionError, TimeoutError))
    return ProviderError(str(exc) or type(exc).__name__, retryable=retryable)


class ScriptedProvider(Provider):
    """Each `stream()` call takes the next scripted reply; records requests and closes. With
    `on_loop`, `astream()` plays them too, so the runner streams on the worker's stream loop."""

    label = "Scripted model"

    def __init__(self, replies: Iterable[Reply] = (), delay: float = 0.0, *, on_loop: bool = False) -> None:
        self.delay = delay
        self.on_loop = on_loop
        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque(replies)
        self.requests: list[ModelRequest] = []
        #: How many streams were closed (each counted once, however often close() is called).
        self.closed = 0

    def add(self, *replies: Reply) -> None:
        """Queue more replies."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def remaining(self) -> int:
        """Replies not used yet."""
        with self._lock:
            return len(self._replies)

    def stream(self, request: ModelRequest) -> ModelStream:
        """Record `request` and return a stream playing the next reply."""
        with self._lock:
            self.requests.append(request)
            if self._replies:
                reply: Reply = self._replies.popleft()
            else:
                reply = ProviderError("ScriptedProvider: no scripted reply left for this request")
        return _ScriptedStream(self, _events(reply))

    def astream(self, request: ModelRequest) -> AsyncModelStream | None:
        if not self.on_loop:
            return None
        stream = self.stream(request)
        assert isinstance(stream, _ScriptedStream)
        return _ScriptedAsyncStream(stream)

    def _count_close(self) -> None:
        with self._lock:
            self.closed += 1


def _events(reply: Reply) -> list[StreamEvent | BaseException]:
    if isinstance(reply, str):
        return [*(TextDelta(t) for t in split_words(reply)), StepEnd(finish_reason="stop")]
    if isinstance(reply, BaseException):
        return [reply]
    return list(reply)


class _ScriptedStream(ModelStream):
    def __init__(self, provider: ScriptedProvider, events: list[StreamEvent | BaseException]):
        self._provider = provider
        self._events = events
        self._stop = threading.Event()  # wait(delay) instead of sleep: close() wakes it
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[StreamEvent]:
        for i, event in enumerate(self._events):
            if (i and self._provider.delay and self._stop.wait(self._provider.delay)) or self._stop.is_set():
                return
            if isinstance(event, BaseException):
                raise as_provider_error(event)
            yield event

    def close(self) -> None:
        """Stop the stream; safe from any thread, idempotent."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
        self._provider._count_close()


class _ScriptedAsyncStream(AsyncModelStream):
    """The same reply on an event loop (the delay is an asyncio sleep)."""

    def __init__(self, inner: _ScriptedStream) -> None:
        self._inner = inner

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        try:
            for i, event in enumerate(self._inner._events):
                if i and self._inner._provider.delay:
                    await asyncio.sleep(self._inner._provider.delay)
                if self._inner._stop.is_set():
                    return
                if isinstance(event, BaseException):
                    raise as_provider_error(event)
                yield event
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self._inner.close()
