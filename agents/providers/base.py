"""The provider interface: a model step is a stream of events that can be closed early."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class ChatMessage:
    """One message of the context sent to the model (OpenAI chat shape)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()


#: The runner's last message to the model when it continues an answer cut off by a fault,
#: after the assistant's text so far (agents/runner.py context_build).
CONTINUE_PROMPT = (
    "(Your previous answer was cut off by a server fault. Continue it exactly where it stopped, "
    "without repeating anything already written.)"
)


@dataclass(frozen=True)
class ModelRequest:
    """Everything one model step needs."""

    model: str
    messages: tuple[ChatMessage, ...]
    tools: tuple[dict[str, Any], ...] = ()
    temperature: float | None = None


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer's text."""

    text: str


@dataclass(frozen=True)
class ToolCallRequest:
    """The model asks for a tool call (assembled from its streamed deltas)."""

    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(frozen=True)
class StepEnd:
    """The step finished; `finish_reason` as the model gave it (stop, length, tool_calls)."""

    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=dict)


StreamEvent = TextDelta | ToolCallRequest | StepEnd


class ProviderError(Exception):
    """The model call failed; `retryable` says whether a new attempt could succeed.

    The message (`str(exc)`) is for the server's log: it may name the model host and repeat
    what the provider said. `public` is what members of the room are told."""

    GENERIC = "the model call failed"

    def __init__(self, message: str, *, retryable: bool = False, public: str = "") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.public = public or self.GENERIC


class ModelStream(ABC):
    """An open model step: iterate for events; `close()` ends it and its HTTP stream."""

    @abstractmethod
    def __iter__(self) -> Iterator[StreamEvent]: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ModelStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncModelStream(ABC):
    """An open model step on an event loop: `async for` its events; `aclose()` ends it and its
    HTTP stream (so does cancelling the task that iterates it)."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    @abstractmethod
    async def aclose(self) -> None: ...


class Provider(ABC):
    """A source of model steps. One instance per worker process is fine (thread-safe)."""

    #: Shown in the UI next to assistant messages and in the demo notice.
    label: str = "model"
    #: True for the offline demo provider: the UI says no real model is configured.
    is_demo: bool = False

    @abstractmethod
    def stream(self, request: ModelRequest) -> ModelStream:
        """Start one model step; never retries once text has been streamed."""

    def astream(self, request: ModelRequest) -> AsyncModelStream | None:
        """The same step for the worker's stream loop (agents/streams.py), or None if this
        provider only streams from a thread of its own (the runner then reads `stream`)."""
        return None
