"""The offline demo model: used when no real LLM is configured, and says so.

Offered the built-in tools, it calls them when the last user message asks for one (see
demo_tools: "what is 17% of 2340", "what time is it in Asia/Tokyo", "what did Bob say about
Porto yesterday", "note: ..."), and answers the results by rule; otherwise it streams its
canned answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime

from .base import (
    CONTINUE_PROMPT,
    AsyncModelStream,
    ModelRequest,
    ModelStream,
    Provider,
    StepEnd,
    StreamEvent,
    TextDelta,
    ToolCallRequest,
)
from .demo_tools import calls_planned, offered_tools, results_answer, user_text

_WORDS = re.compile(r"\s+|\S+\s*")  # words keep their trailing whitespace: join == original

_ANSWER = """\
**This is the demo model** — no real LLM is configured, so an offline stand-in is answering.

{echo}

To chat with a real model, set these environment variables and restart the web server \
and the worker:

- `LLM_BASE_URL` — an OpenAI-compatible endpoint, e.g. `https://api.openai.com/v1` for \
OpenAI or `http://localhost:11434/v1` for Ollama
- `LLM_API_KEY` — your API key (any value works for a local Ollama)
- `LLM_MODEL` — the model name, e.g. `gpt-4o-mini` or `llama3.2`

For example, with Ollama running locally:

```bash
export LLM_BASE_URL=http://localhost:11434/v1
export LLM_API_KEY=ollama
export LLM_MODEL=llama3.2
```

Everything else works the same with the demo model: answers stream in, you can stop them, \
and everyone in the room sees the same conversation.
"""


def _echo(request: ModelRequest) -> str:
    """Quote the first line of the last user message, so the answer visibly reacts."""
    for message in reversed(request.messages):
        if message.role == "user":
            line = next((ln.strip() for ln in message.content.splitlines() if ln.strip()), "")
            if line:
                if len(line) > 120:
                    line = line[:119].rstrip() + "…"
                return f"You said:\n\n> {line}"
    return "Say something and I will answer (in demo mode)."


class DemoProvider(Provider):
    """Streams a canned markdown answer word by word, without any network."""

    label = "Demo model (offline)"
    is_demo = True

    def __init__(self, delay: float = 0.03) -> None:
        self.delay = delay

    def answer(self, request: ModelRequest) -> str:
        """The full text the demo model streams for `request`."""
        return _ANSWER.format(echo=_echo(request))

    def tool_calls(self, request: ModelRequest) -> list[ToolCallRequest]:
        """The tool calls the demo model makes for `request`: none unless it offers tools and
        its last message is a person's asking for one."""
        text = user_text(request)
        offered = offered_tools(request)
        if text is None or not offered:
            return []
        planned = calls_planned(text, offered, today=datetime.now(UTC).date())
        # a provider's call ids are unique in a room (ToolCall rows are keyed on them)
        return [
            ToolCallRequest(
                call_id=f"call_demo_{uuid.uuid4().hex[:16]}", name=c.name, arguments=json.dumps(c.arguments)
            )
            for c in planned
        ]

    def stream(self, request: ModelRequest) -> _DemoStream:
        """Start a step: tool calls when asked for, the results' answer after them, or the
        canned answer, streamed word by word; after a fault, the rest of what it was saying."""
        rest = self._rest_after_a_fault(request)
        if rest is not None:
            return _DemoStream(_WORDS.findall(rest), self.delay)
        if request.messages and request.messages[-1].role == "tool":
            return _DemoStream(_WORDS.findall(results_answer(request)), self.delay)
        calls = self.tool_calls(request)
        if calls:
            return _DemoStream([], self.delay, calls)
        return _DemoStream(_WORDS.findall(self.answer(request)), self.delay)

    def _rest_after_a_fault(self, request: ModelRequest) -> str | None:
        """If the runner asks to continue an answer cut off by a fault: the rest of it."""
        messages = request.messages
        if len(messages) < 2 or messages[-1].content != CONTINUE_PROMPT or messages[-2].role != "assistant":
            return None
        said, before = messages[-2].content, replace(request, messages=messages[:-2])
        after_tools = bool(before.messages) and before.messages[-1].role == "tool"
        full = results_answer(before) if after_tools else self.answer(before)
        return full[len(said) :] if full.startswith(said) else full

    def astream(self, request: ModelRequest) -> AsyncModelStream:
        """The same step on the worker's stream loop (as a real model's)."""
        return _DemoAsyncStream(self.stream(request))


class _DemoStream(ModelStream):
    def __init__(self, tokens: list[str], delay: float, calls: list[ToolCallRequest] | None = None) -> None:
        end = StepEnd(finish_reason="tool_calls" if calls else "stop")
        self._events: list[StreamEvent] = [*(TextDelta(t) for t in tokens), *(calls or []), end]
        self._delay = delay
        # An Event instead of sleep(): close() from another thread wakes the wait at once.
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[StreamEvent]:
        for i, event in enumerate(self._events):
            if (i and self._stop.wait(self._delay)) or self._stop.is_set():
                return
            yield event

    def close(self) -> None:
        """Stop the stream; safe from any thread, idempotent."""
        self._stop.set()


class _DemoAsyncStream(AsyncModelStream):
    def __init__(self, inner: _DemoStream) -> None:
        self._inner = inner

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        for i, event in enumerate(self._inner._events):
            if i:
                await asyncio.sleep(self._inner._delay)
            if self._inner._stop.is_set():
                return
            yield event

    async def aclose(self) -> None:
        self._inner.close()
