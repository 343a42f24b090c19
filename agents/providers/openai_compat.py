"""Any OpenAI-compatible Chat Completions server (OpenAI, Ollama, vLLM, LM Studio, llama.cpp).

Cancellation contract of the returned stream:
- ``close()`` may be called from any thread, any number of times.
- If another thread is blocked reading the stream, ``close()`` shuts the socket down at once
  (the server sees the disconnect immediately, the blocked read returns) and leaves the
  actual release to the reading thread, so a file descriptor is never closed under a read.
- After ``close()`` the iterator simply ends: it never raises because of the close.
  Real failures (while not closed) are raised as ``ProviderError``.
- Limitation: before the response headers arrive there is no socket to shut down; a close in
  that phase takes effect as soon as the headers arrive (or the request times out).
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlparse

import openai

from .base import (
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

T = TypeVar("T")
_CLOSED: Any = object()  # returned by _read() when the stream was closed on purpose
_END: Any = object()
_RETRYABLE_STATUS = {408, 409, 425, 429}
_HINTS = {
    401: " Check LLM_API_KEY.",
    403: " Check LLM_API_KEY and the model's access rights.",
    404: " Check LLM_MODEL and LLM_BASE_URL.",
}


class OpenAICompatibleProvider(Provider):
    """Streams Chat Completions through the official `openai` SDK (SDK retries off)."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str,
        default_model: str,
        timeout: float = 60.0,
        *,
        include_usage: bool = False,
    ) -> None:
        self.base_url = base_url or None
        self.default_model = default_model
        self.timeout = timeout
        # stream_options is rejected by some older compatible servers, hence opt-in.
        self.include_usage = include_usage
        # max_retries=0: a silent SDK retry could duplicate text already streamed to users.
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key or "not-needed", max_retries=0, timeout=timeout
        )
        self.host = urlparse(str(self.client.base_url)).netloc or "api.openai.com"
        self.label = f"{default_model} via {self.host}"

    def stream(self, request: ModelRequest) -> ModelStream:
        """Return a stream; the HTTP request starts on first iteration, errors raise there."""
        return _OpenAIStream(self, request)

    def _create(self, request: ModelRequest) -> openai.Stream[Any]:
        kwargs: dict[str, Any] = {
            "model": request.model or self.default_model,
            "messages": [_message_dict(m) for m in request.messages],
            "stream": True,
        }
        if request.tools:
            kwargs["tools"] = list(request.tools)
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if self.include_usage:
            kwargs["stream_options"] = {"include_usage": True}
        return self.client.chat.completions.create(**kwargs)

    def _error(self, exc: Exception) -> ProviderError:
        """Translate an SDK (or unexpected) exception into a readable ProviderError."""
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(
                f"The model server at {self.host} did not answer within {self.timeout:g}s.",
                retryable=True,
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = f": {cause}" if cause else "."
            return ProviderError(
                f"Could not reach the model server at {self.host}{detail}", retryable=True
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            body = exc.body
            detail = body.get("message") if isinstance(body, dict) else None
            detail = str(detail or exc.message)[:300]
            return ProviderError(
                f"The model server at {self.host} returned HTTP {status}: {detail}"
                f"{_HINTS.get(status, '')}",
                retryable=status >= 500 or status in _RETRYABLE_STATUS,
            )
        if isinstance(exc, openai.APIError):  # an error event inside a 200 stream
            return ProviderError(
                f"The model server at {self.host} reported an error: {exc.message}", retryable=True
            )
        return ProviderError(f"Unexpected error from the model server at {self.host}: {exc!r}")


class _OpenAIStream(ModelStream):
    def __init__(self, provider: OpenAICompatibleProvider, request: ModelRequest) -> None:
        self._provider = provider
        self._request = request
        self._lock = threading.Lock()
        self._closed = False
        self._reading = False  # a thread is inside an SDK call (connect or network read)
        self._started = False
        self._sdk: openai.Stream[Any] | None = None

    def __iter__(self) -> Iterator[StreamEvent]:
        with self._lock:
            if self._started or self._closed:
                return iter(())
            self._started = True
        return self._events()

    def _events(self) -> Iterator[StreamEvent]:
        try:
            sdk = self._read(lambda: self._provider._create(self._request))
            if sdk is _CLOSED:
                return
            chunks = iter(sdk)
            calls = _ToolCalls()
            finish: str | None = None
            usage: dict[str, int] = {}
            while (chunk := self._read(lambda: next(chunks, _END))) not in (_CLOSED, _END):
                if chunk.usage is not None:  # only with include_usage, in a choice-less chunk
                    usage = {
                        k: v for k, v in chunk.usage.model_dump().items() if isinstance(v, int)
                    }
                for choice in chunk.choices or ():
                    delta = choice.delta
                    if delta is not None:
                        for tc in delta.tool_calls or ():
                            calls.add(tc)
                        if delta.content:
                            yield TextDelta(delta.content)
                            if self._closed:  # closed while the caller held the delta
                                return
                    if choice.finish_reason:
                        finish = choice.finish_reason
            if chunk is _CLOSED:
                return
            requests = calls.requests()
            if requests and finish in (None, "stop"):
                finish = "tool_calls"  # some servers say "stop" even when calling tools
            yield from requests
            yield StepEnd(finish_reason=finish or "stop", usage=usage)
        finally:
            self._release()  # in the reading thread: never closes a socket under a read

    def _read(self, call: Callable[[], T]) -> T:
        """Run one blocking SDK call; return _CLOSED instead of raising if closed meanwhile."""
        with self._lock:
            if self._closed:
                return _CLOSED
            self._reading = True
        try:
            result = call()
        except Exception as exc:
            if self._closed:  # the socket was shut down on purpose: end quietly
                return _CLOSED
            raise self._provider._error(exc) from exc
        finally:
            with self._lock:
                self._reading = False
        with self._lock:
            if isinstance(result, openai.Stream):
                self._sdk = result
            if self._closed:
                return _CLOSED
        return result

    def close(self) -> None:
        """End the step now: the server sees the disconnect, iteration stops quietly."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._sdk is not None:
                _shutdown(self._sdk.response)
            if self._reading:
                return  # the reader wakes up (socket shut down) and releases the response
            sdk, self._sdk = self._sdk, None
        if sdk is not None:
            sdk.close()

    def _release(self) -> None:
        with self._lock:
            sdk, self._sdk = self._sdk, None
        if sdk is not None:
            try:
                sdk.close()
            except Exception:  # noqa: BLE001 - best effort, the stream is over anyway
                pass


def _shutdown(response: Any) -> None:
    """Shut the response's socket down so a read blocked in another thread returns now.

    Closing the fd would not do it: on Linux a blocked recv()/poll() keeps the socket alive
    and no FIN is sent. Only HTTP/1.x (a connection owned by this response); skipped once
    the response is closed, because its connection may already serve another request.
    """
    try:
        if response.is_closed or not str(response.http_version).startswith("HTTP/1"):
            return
        sock = response.extensions["network_stream"].get_extra_info("socket")
        # socket.socket.shutdown, not SSLSocket.shutdown, which would also drop the SSL object
        # under the reading thread.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, KeyError, AttributeError, TypeError):
        pass  # already closed or not a plain socket: response.close() still follows


class _ToolCalls:
    """Assembles streamed tool-call deltas by their `index`."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, delta: Any) -> None:
        call = self._calls.setdefault(delta.index or 0, {"id": "", "name": "", "arguments": ""})
        if delta.id:
            call["id"] = delta.id
        fn = delta.function
        if fn is not None:
            # Names normally come whole in one delta; some servers repeat them in every delta.
            if fn.name and fn.name != call["name"]:
                call["name"] += fn.name
            if fn.arguments:
                call["arguments"] += fn.arguments

    def requests(self) -> list[ToolCallRequest]:
        return [
            ToolCallRequest(
                call_id=c["id"] or f"call_{uuid.uuid4().hex[:24]}",
                name=c["name"],
                arguments=c["arguments"] or "{}",
            )
            for _, c in sorted(self._calls.items())
        ]


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        data["name"] = message.name
    if message.tool_call_id:
        data["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        data["tool_calls"] = [dict(tc) for tc in message.tool_calls]
        if not message.content:
            data["content"] = None  # OpenAI wants null, not "", next to tool_calls
    return data
