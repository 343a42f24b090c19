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

import json
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
_REPORTED = "the model service reported an error"
_MALFORMED = "the model service sent a malformed answer"
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
        # host[:port] only: a base URL's user:password@ never reaches a log line or an error
        url = urlparse(str(self.client.base_url))
        self.host = (f"{url.hostname}:{url.port}" if url.port else url.hostname) or "api.openai.com"
        self.label = f"{default_model} via {self.host}"

    def stream(self, request: ModelRequest) -> ModelStream:
        """Return a stream; the HTTP request starts on first iteration, errors raise there."""
        return _OpenAIStream(self, request)

    def _create(self, request: ModelRequest) -> Any:
        """Start the request: the SDK sends it, checks the status and maps errors; the body's
        server-sent events are read raw (`_sse_chunks`), not through its pydantic models,
        which cost most of a worker's CPU per token (docs/performance.md)."""
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
        return self.client.chat.completions.with_streaming_response.create(**kwargs).__enter__()

    def _error(self, exc: Exception) -> ProviderError:
        """Translate an SDK (or unexpected) exception into a readable ProviderError."""
        # Reading the body raw, a read timeout or a dropped connection arrives as the HTTP
        # library's own error (httpx or httpx2, by SDK version): matched by class name.
        if isinstance(exc, openai.APITimeoutError) or _is_a(exc, "TimeoutException"):
            return ProviderError(
                f"The model server at {self.host} did not answer within {self.timeout:g}s.",
                retryable=True,
                public="the model did not answer in time",
            )
        if isinstance(exc, openai.APIConnectionError) or _is_a(exc, "TransportError"):
            cause = exc.__cause__ or exc.__context__
            detail = f": {cause}" if cause else "."
            return ProviderError(
                f"Could not reach the model server at {self.host}{detail}",
                retryable=True,
                public="the model service could not be reached",
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            body = exc.body
            said = body.get("message") if isinstance(body, dict) else None
            detail = str(said or exc.message)[:300]
            return ProviderError(
                f"The model server at {self.host} returned HTTP {status}: {detail}{_HINTS.get(status, '')}",
                retryable=status >= 500 or status in _RETRYABLE_STATUS,
                public=f"the model service refused the request (HTTP {status})",
            )
        if isinstance(exc, openai.APIError):  # an error event inside a 200 stream
            return ProviderError(
                f"The model server at {self.host} reported an error: {exc.message}",
                retryable=True,
                public=_REPORTED,
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
        self._sdk: Any = None  # the SDK's APIResponse, once the status line has arrived

    def __iter__(self) -> Iterator[StreamEvent]:
        with self._lock:
            if self._started or self._closed:
                return iter(())
            self._started = True
        return self._events()

    def _events(self) -> Iterator[StreamEvent]:
        try:
            response = self._read(lambda: self._provider._create(self._request))
            if response is _CLOSED:
                return
            # the body as it arrives, split into lines here: one read (and its locks) per
            # network chunk, not per line, and no text decoder or line splitter per token
            received = response.http_response.iter_bytes()
            lines = _sse_lines(lambda: self._read(lambda: next(received, _END)))
            calls = _ToolCalls()
            finish: str | None = None
            usage: dict[str, int] = {}
            chunks = _sse_chunks(lines.__next__, self._provider.host)
            for chunk in chunks:
                if chunk is _CLOSED:
                    return
                if isinstance(chunk.get("usage"), dict):  # only with include_usage
                    usage = {k: v for k, v in chunk["usage"].items() if type(v) is int}
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta")
                    if delta:
                        for tc in delta.get("tool_calls") or ():
                            calls.add(tc)
                        if content := delta.get("content"):
                            yield TextDelta(content)
                            if self._closed:  # closed while the caller held the delta
                                return
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
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
            if isinstance(result, openai.APIResponse):
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
                _shutdown(self._sdk.http_response)
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
            except Exception:
                pass


def _is_a(exc: Exception, class_name: str) -> bool:
    return any(cls.__name__ == class_name for cls in type(exc).__mro__)


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


def _sse_lines(read_chunk: Callable[[], Any]) -> Iterator[Any]:
    """The lines of an event stream read in network chunks (split at LF, CRLF or CR, decoded
    as UTF-8); then _END, or _CLOSED if `read_chunk` says the stream was closed."""
    pending = b""
    while True:
        chunk = read_chunk()
        if chunk is _CLOSED or chunk is _END:
            if chunk is _END and pending:  # a last line without its line break
                yield pending.rstrip(b"\r").decode("utf-8", "replace")
            yield chunk
            return
        pending += chunk
        if b"\r" in pending:  # CRLF or CR endings; a CR at the end may be half of a CRLF
            tail = b"\r" if pending.endswith(b"\r") else b""
            body = pending[:-1] if tail else pending
            pending = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", "replace")


def _sse_chunks(read_line: Callable[[], Any], host: str) -> Iterator[Any]:
    """The JSON chunks of a Chat Completions event stream (until `data: [DONE]`); yields
    _CLOSED and stops if `read_line` says the stream was closed. An error event raises."""
    data: list[str] = []
    event = ""
    while True:
        line = read_line()
        if line is _CLOSED:
            yield _CLOSED
            return
        if line is _END:
            break
        if line:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
            continue
        if not data:  # a blank line ends an event; comments and keep-alives have no data
            continue
        text, data, kind, event = "\n".join(data), [], event, ""
        if text.strip() == "[DONE]":
            return
        try:
            chunk = json.loads(text)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            raise ProviderError(
                f"The model server at {host} sent a malformed event: {text[:100]!r}", public=_MALFORMED
            )
        if chunk.get("error") and (kind in ("", "error")):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise ProviderError(
                f"The model server at {host} reported an error: {message or 'unknown'}",
                retryable=True,
                public=_REPORTED,
            )
        yield chunk
    if data:  # a last event without its blank line
        raise ProviderError(f"The model server at {host} ended the stream mid-event", public=_MALFORMED)


class _ToolCalls:
    """Assembles streamed tool-call deltas by their `index`."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, delta: dict[str, Any]) -> None:
        call = self._calls.setdefault(delta.get("index") or 0, {"id": "", "name": "", "arguments": ""})
        if delta.get("id"):
            call["id"] = delta["id"]
        fn = delta.get("function")
        if isinstance(fn, dict):
            # Names normally come whole in one delta; some servers repeat them in every delta.
            if fn.get("name") and fn["name"] != call["name"]:
                call["name"] += fn["name"]
            if fn.get("arguments"):
                call["arguments"] += fn["arguments"]

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
