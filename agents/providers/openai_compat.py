"""Any OpenAI-compatible Chat Completions server (OpenAI, Ollama, vLLM, LM Studio, llama.cpp).

`stream()` is read from a thread of its own; `astream()` is the same step on an event loop (the
worker's stream loop, agents/streams.py), through the SDK's async client on aiohttp, whose HTTP
parser is C: a few times less CPU per network chunk than the sync client's (docs/performance.md).
Cancelling the task that iterates it, or `aclose()`, ends the request and its connection.

Cancellation contract of the stream returned by `stream()`:
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

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlparse

import openai

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
        self._api_key = api_key or "not-needed"
        # max_retries=0: a silent SDK retry could duplicate text already streamed to users.
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=timeout
        )
        self._async: tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI] | None = None
        # host[:port] only: a base URL's user:password@ never reaches a log line or an error
        url = urlparse(str(self.client.base_url))
        self.host = (f"{url.hostname}:{url.port}" if url.port else url.hostname) or "api.openai.com"
        self.label = f"{default_model} via {self.host}"

    def stream(self, request: ModelRequest) -> ModelStream:
        """Return a stream; the HTTP request starts on first iteration, errors raise there."""
        return _OpenAIStream(self, request)

    def astream(self, request: ModelRequest) -> AsyncModelStream:
        """The step for an event loop; the HTTP request starts on first iteration."""
        return _OpenAIAsyncStream(self, request)

    def _async_client(self) -> openai.AsyncOpenAI:
        """The SDK's async client of the running loop (one per loop: its connections belong to
        it), on the aiohttp transport."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=self.timeout,
                http_client=openai.DefaultAioHttpClient(timeout=self.timeout),
            )  # fmt: skip
            self._async = (loop, client)
        return self._async[1]

    async def aclose(self) -> None:
        """Close the async client of the running loop (its connections), if it has one."""
        if self._async is not None and self._async[0] is asyncio.get_running_loop():
            client, self._async = self._async[1], None
            await client.close()

    def _create(self, request: ModelRequest) -> Any:
        """Start the request: the SDK sends it, checks the status and maps errors; the body's
        server-sent events are read raw (`_EventStream`), not through its pydantic models,
        which cost most of a worker's CPU per token (docs/performance.md)."""
        create = self.client.chat.completions.with_streaming_response.create
        return create(**self._arguments(request)).__enter__()

    async def _acreate(self, request: ModelRequest) -> Any:
        """`_create` on the running loop."""
        create = self._async_client().chat.completions.with_streaming_response.create
        return await create(**self._arguments(request)).__aenter__()

    def _arguments(self, request: ModelRequest) -> dict[str, Any]:
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
        return kwargs

    def _error(self, exc: Exception) -> ProviderError:
        """Translate an SDK (or unexpected) exception into a readable ProviderError."""
        # Reading the body raw, a read timeout or a dropped connection arrives as the HTTP
        # library's own error (httpx or httpx2, by SDK version): matched by class name. The
        # aiohttp transport calls a refused connection a connect timeout: its cause tells.
        refused = any(isinstance(e, OSError) and not isinstance(e, TimeoutError) for e in _causes(exc))
        timeout = isinstance(exc, openai.APITimeoutError) or _is_a(exc, "TimeoutException")
        if timeout and not refused:
            return ProviderError(
                f"The model server at {self.host} did not answer within {self.timeout:g}s.",
                retryable=True,
                public="the model did not answer in time",
            )
        if timeout or isinstance(exc, openai.APIConnectionError) or _is_a(exc, "TransportError"):
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
            # the body as it arrives: one read (and its locks) per network chunk, not per line
            received = response.http_response.iter_bytes()
            decoder, step = _EventStream(self._provider.host), _Step()
            while not decoder.done:
                data = self._read(lambda: next(received, _END))
                if data is _CLOSED:
                    return
                for chunk in decoder.end() if data is _END else decoder.feed(data):
                    for text in step.feed(chunk):
                        yield text
                        if self._closed:  # closed while the caller held the delta
                            return
                if data is _END:
                    break
            decoder.raise_if_failed()
            yield from step.end()
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


class _OpenAIAsyncStream(AsyncModelStream):
    def __init__(self, provider: OpenAICompatibleProvider, request: ModelRequest) -> None:
        self._provider = provider
        self._request = request
        self._closed = False
        self._started = False
        self._sdk: Any = None  # the SDK's AsyncAPIResponse, once the status line has arrived

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        if self._started or self._closed:
            return _nothing()
        self._started = True
        return self._events()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        try:
            self._sdk = await self._call(self._provider._acreate(self._request))
            if self._closed:
                return
            received = self._sdk.http_response.aiter_bytes()
            decoder, step = _EventStream(self._provider.host), _Step()
            while not decoder.done:
                data = await self._call(anext(received, _END))
                for chunk in decoder.end() if data is _END else decoder.feed(data):
                    for text in step.feed(chunk):
                        yield text
                        if self._closed:
                            return
                if data is _END:
                    break
            decoder.raise_if_failed()
            for event in step.end():
                yield event
        finally:
            await self.aclose()

    async def _call(self, step: Awaitable[T]) -> T:
        try:
            return await step
        except ProviderError:
            raise
        except Exception as exc:  # not a cancellation: that one goes through as it is
            raise self._provider._error(exc) from exc

    async def aclose(self) -> None:
        self._closed = True
        sdk, self._sdk = self._sdk, None
        if sdk is not None:
            try:
                await sdk.close()  # mid-body: the connection is closed, the server sees it
            except Exception:
                pass


async def _nothing() -> AsyncIterator[StreamEvent]:
    return
    yield  # an async generator that ends at once


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    for _ in range(10):  # the SDK's error, the HTTP library's, the transport's, the socket's
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


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


class _EventStream:
    """Incremental decoder of a Chat Completions event stream: the body's bytes in, however the
    network cuts them (lines end in LF, CRLF or CR; UTF-8 may be split), JSON chunks out, until
    `data: [DONE]` (then `done`). An error event, a malformed one or a cut stream ends it too,
    after the chunks before it: `raise_if_failed()` then raises the ProviderError."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.done = False
        self.error: ProviderError | None = None
        self._pending = b""
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        pending = self._pending + chunk
        if b"\r" in pending:  # CRLF or CR endings; a CR at the end may be half of a CRLF
            tail = b"\r" if pending.endswith(b"\r") else b""
            body = pending[:-1] if tail else pending
            pending = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        *complete, self._pending = pending.split(b"\n")
        return self._lines(complete)

    def end(self) -> list[dict[str, Any]]:
        """The body ended: a last line without its line break counts, but an event still without
        its blank line is an error (the stream was cut)."""
        last = [self._pending.rstrip(b"\r")] if self._pending else []
        self._pending = b""
        chunks = self._lines(last)
        if self._data and not self.done:
            self.done = True
            self.error = ProviderError(
                f"The model server at {self.host} ended the stream mid-event", public=_MALFORMED
            )
        return chunks

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _lines(self, lines: list[bytes]) -> list[dict[str, Any]]:
        chunks = []
        for raw in lines:
            if self.done:
                break
            if raw:
                field, _, value = raw.decode("utf-8", "replace").partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data":
                    self._data.append(value)
                elif field == "event":
                    self._event = value
                continue
            if not self._data:  # a blank line ends an event; comments and keep-alives have no data
                continue
            text, kind = "\n".join(self._data), self._event
            self._data, self._event = [], ""
            if text.strip() == "[DONE]":
                self.done = True
                break
            try:
                chunks.append(self._chunk(text, kind))
            except ProviderError as exc:
                self.done, self.error = True, exc
        return chunks

    def _chunk(self, text: str, kind: str) -> dict[str, Any]:
        try:
            chunk = json.loads(text)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            raise ProviderError(
                f"The model server at {self.host} sent a malformed event: {text[:100]!r}", public=_MALFORMED
            )
        if chunk.get("error") and (kind in ("", "error")):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise ProviderError(
                f"The model server at {self.host} reported an error: {message or 'unknown'}",
                retryable=True,
                public=_REPORTED,
            )
        return chunk


class _Step:
    """One step's events from its JSON chunks: text as it comes, then the tool calls assembled
    and the step's end."""

    def __init__(self) -> None:
        self.calls = _ToolCalls()
        self.finish: str | None = None
        self.usage: dict[str, int] = {}

    def feed(self, chunk: dict[str, Any]) -> list[TextDelta]:
        texts = []
        if isinstance(chunk.get("usage"), dict):  # only with include_usage
            self.usage = {k: v for k, v in chunk["usage"].items() if type(v) is int}
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if delta:
                for tc in delta.get("tool_calls") or ():
                    self.calls.add(tc)
                if content := delta.get("content"):
                    texts.append(TextDelta(content))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return texts

    def end(self) -> list[StreamEvent]:
        requests: list[StreamEvent] = list(self.calls.requests())
        finish = self.finish
        if requests and finish in (None, "stop"):
            finish = "tool_calls"  # some servers say "stop" even when calling tools
        return [*requests, StepEnd(finish_reason=finish or "stop", usage=self.usage)]


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
