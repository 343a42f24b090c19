"""The offline demo model: used when no real LLM is configured, and says so."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

from .base import ModelRequest, ModelStream, Provider, StepEnd, StreamEvent, TextDelta

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

    def stream(self, request: ModelRequest) -> ModelStream:
        """Start streaming the canned answer."""
        return _DemoStream(_WORDS.findall(self.answer(request)), self.delay)


class _DemoStream(ModelStream):
    def __init__(self, tokens: list[str], delay: float) -> None:
        self._tokens = tokens
        self._delay = delay
        # An Event instead of sleep(): close() from another thread wakes the wait at once.
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[StreamEvent]:
        for i, token in enumerate(self._tokens):
            if (i and self._stop.wait(self._delay)) or self._stop.is_set():
                return
            yield TextDelta(token)
        if not self._stop.is_set():
            yield StepEnd(finish_reason="stop")

    def close(self) -> None:
        """Stop the stream; safe from any thread, idempotent."""
        self._stop.set()
