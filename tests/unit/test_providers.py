"""Providers against a real local HTTP server (FakeLLM); no Django needed."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import types
import urllib.request
from collections.abc import Iterator

import pytest

from agents.providers import (
    AsyncModelStream,
    ChatMessage,
    ModelRequest,
    ModelStream,
    ProviderError,
    StepEnd,
    StreamEvent,
    TextDelta,
    ToolCallRequest,
    get_provider,
    reset_provider_cache,
)
from agents.providers.demo import DemoProvider
from agents.providers.openai_compat import OpenAICompatibleProvider
from agents.providers.scripted import ScriptedProvider
from tests.fakellm import FakeLLM

TOOLS = ({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},)


@pytest.fixture(autouse=True)
def _isolated_run() -> None:
    """Override tests/conftest.py's autouse fixture: these tests need no Django stack."""


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM(delay=0.0, tokens=5) as server:
        yield server


@pytest.fixture
def provider(fake_llm: FakeLLM) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(fake_llm.base_url, "", "fake-model", timeout=10)


def req(text: str, **kwargs: object) -> ModelRequest:
    return ModelRequest(model="fake-model", messages=(ChatMessage("user", text),), **kwargs)


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


class Reader(threading.Thread):
    """Iterates a stream in a background thread, like the worker's reader thread."""

    def __init__(self, stream: ModelStream) -> None:
        super().__init__(daemon=True)
        self.stream, self.events, self.error = stream, [], None
        self.first_text = threading.Event()

    def run(self) -> None:
        try:
            for event in self.stream:
                self.events.append(event)
                if isinstance(event, TextDelta):
                    self.first_text.set()
        except BaseException as exc:
            self.error = exc


# -- OpenAICompatibleProvider against FakeLLM ---------------------------------------------------


def test_streams_default_reply_as_text_deltas(fake_llm: FakeLLM, provider: OpenAICompatibleProvider):
    with provider.stream(req("hello there !tokens=7")) as stream:
        events = list(stream)
    assert text_of(events) == fake_llm.default_reply("hello there", tokens=7)
    assert text_of(events).endswith("w1 w2 w3 w4 w5 w6 w7")
    assert sum(isinstance(e, TextDelta) for e in events) > 7  # one delta per word
    assert events[-1] == StepEnd(finish_reason="stop")
    assert fake_llm.wait_for_completed(1, 5)
    body = fake_llm.requests[0]
    assert body["stream"] is True and body["model"] == "fake-model"
    assert body["messages"] == [{"role": "user", "content": "hello there !tokens=7"}]
    assert "stream_options" not in body and "tools" not in body


def test_say_streams_exact_text(fake_llm: FakeLLM, provider: OpenAICompatibleProvider):
    said = "Hello,  *world*!\tSee `code` ok "
    events = list(provider.stream(req(f"first line\n!say={said}\nignored")))
    assert text_of(events) == said


def test_fake_scripted_replies_are_used_in_order(fake_llm: FakeLLM, provider):
    fake_llm.script(["reply one", "reply  two"])
    texts = [text_of(list(provider.stream(req("q")))) for _ in range(3)]
    assert texts == ["reply one", "reply  two", fake_llm.default_reply("q")]


def test_messages_tools_and_usage_are_sent(fake_llm: FakeLLM):
    provider = OpenAICompatibleProvider(fake_llm.base_url, "k", "fake-model", 10, include_usage=True)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = (
        ChatMessage("system", "be brief"),
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", "42", tool_call_id="c1"),
    )
    events = list(provider.stream(ModelRequest("other-model", messages, TOOLS, temperature=0.2)))
    body = fake_llm.requests[0]
    assert body["model"] == "other-model" and body["temperature"] == 0.2
    assert body["tools"] == list(TOOLS)
    assert body["messages"][2] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert body["messages"][3] == {"role": "tool", "content": "42", "tool_call_id": "c1"}
    assert events[-1].usage["completion_tokens"] > 0


def test_close_from_another_thread_mid_stream(fake_llm: FakeLLM, provider):
    stream = provider.stream(req("long !tokens=500 !delay=20"))
    reader = Reader(stream)
    reader.start()
    assert reader.first_text.wait(5)
    stream.close()
    reader.join(3)
    assert not reader.is_alive() and reader.error is None
    assert fake_llm.wait_for_disconnects(1, 5)
    assert fake_llm.completed == 0
    assert not any(isinstance(e, StepEnd) for e in reader.events)
    stream.close()  # idempotent


def test_close_in_the_loop_body_then_break(fake_llm: FakeLLM, provider):
    seen = 0
    with provider.stream(req("!tokens=500 !delay=10")) as stream:
        for event in stream:
            seen += isinstance(event, TextDelta)
            if seen == 3:
                stream.close()
                break
    assert fake_llm.wait_for_disconnects(1, 5)
    assert list(stream) == []  # a closed stream yields nothing more


def test_close_while_read_is_blocked_on_hang(fake_llm: FakeLLM, provider):
    stream = provider.stream(req("!hang"))
    reader = Reader(stream)
    reader.start()
    assert fake_llm.wait_for_requests(1, 5)
    time.sleep(0.3)  # let the reader block in the socket read after the role chunk
    started = time.monotonic()
    stream.close()
    assert fake_llm.wait_for_disconnects(1, 5)
    reader.join(3)
    # Well under the 10 s read timeout: close() itself ended the blocked read.
    assert time.monotonic() - started < 2
    assert not reader.is_alive() and reader.error is None and reader.events == []


def test_close_before_iteration_sends_nothing(fake_llm: FakeLLM, provider):
    stream = provider.stream(req("hi"))
    stream.close()
    stream.close()
    assert list(stream) == []
    assert fake_llm.requests == []


def test_connection_survives_a_completed_stream(fake_llm: FakeLLM, provider):
    for _ in range(3):  # close() after a natural end must not break the pooled connection
        with provider.stream(req("again")) as stream:
            assert text_of(list(stream)) == fake_llm.default_reply("again")
    assert fake_llm.disconnects == 0


@pytest.mark.parametrize(
    ("code", "retryable"),
    [(500, True), (503, True), (429, True), (400, False), (401, False), (404, False)],
)
def test_http_errors_map_to_provider_error(fake_llm, provider, code: int, retryable: bool):
    with pytest.raises(ProviderError) as info:
        list(provider.stream(req(f"!fail={code}")))
    assert info.value.retryable is retryable
    assert f"HTTP {code}" in str(info.value) and "Fake failure" in str(info.value)
    assert len(fake_llm.requests) == 1  # SDK retries are off
    # what members see: the status, not the provider's words nor its host
    assert info.value.public == f"the model service refused the request (HTTP {code})"


def test_credentials_in_the_base_url_never_reach_an_error(fake_llm):
    host_port = fake_llm.base_url.split("//", 1)[1].split("/", 1)[0]
    url = fake_llm.base_url.replace("//", "//alice:s3cret@", 1)
    provider = OpenAICompatibleProvider(url, "", "fake-model", timeout=10)
    with pytest.raises(ProviderError) as info:
        list(provider.stream(req("!fail=401")))
    assert host_port in str(info.value) and "s3cret" not in str(info.value)
    assert "s3cret" not in provider.label and host_port not in info.value.public


def test_unreachable_server_is_retryable():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAICompatibleProvider(f"http://127.0.0.1:{port}/v1", "", "m", timeout=5)
    with pytest.raises(ProviderError) as info:
        list(provider.stream(req("hi")))
    assert info.value.retryable and "Could not reach" in str(info.value)


def test_read_timeout_is_retryable(fake_llm: FakeLLM):
    provider = OpenAICompatibleProvider(fake_llm.base_url, "", "fake-model", timeout=0.5)
    with pytest.raises(ProviderError) as info:
        list(provider.stream(req("!hang")))
    assert info.value.retryable


def test_tool_calls_are_assembled_by_index(fake_llm: FakeLLM, provider):
    text = 'weather? !tool=get_weather:{"city": "Paris", "unit": "C"} !tool=get_time:{}'
    events = list(provider.stream(req(text, tools=TOOLS)))
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert [(c.call_id, c.name) for c in calls] == [
        ("call_fake_0", "get_weather"),
        ("call_fake_1", "get_time"),
    ]
    assert json.loads(calls[0].arguments) == {"city": "Paris", "unit": "C"}
    assert json.loads(calls[1].arguments) == {}
    assert events[-1].finish_reason == "tool_calls"
    # Without tools in the request the directive is ignored and text is streamed.
    assert text_of(list(provider.stream(req(text)))).startswith("Answer to 'weather?")


def test_label_names_model_and_host(fake_llm: FakeLLM, provider):
    assert provider.label == f"fake-model via 127.0.0.1:{fake_llm.port}"
    assert not provider.is_demo


# -- FakeLLM's own HTTP surface ---------------------------------------------------------------


def test_fake_http_endpoints(fake_llm: FakeLLM):
    def call(path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        url = fake_llm.base_url.removesuffix("/v1") + path
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as resp:
            return json.loads(resp.read())

    assert call("/v1/models")["data"][0]["id"] == "fake-model"
    done = call("/v1/chat/completions", {"messages": [{"role": "user", "content": "!say=hi you"}]})
    assert done["choices"][0]["message"]["content"] == "hi you"
    assert call("/_stats") == {"requests": 1, "disconnects": 0, "completed": 1}
    assert call("/_reset", {}) == {"ok": True}
    assert call("/_stats") == {"requests": 0, "disconnects": 0, "completed": 0}


# -- ScriptedProvider -------------------------------------------------------------------------


def test_scripted_provider_plays_replies_and_records():
    error = ProviderError("boom", retryable=True)
    provider = ScriptedProvider(
        [
            "Hello  big\nworld ",
            [TextDelta("a"), StepEnd("length")],
            error,
            [TextDelta("part"), ConnectionError("reset")],
        ]
    )
    first = list(provider.stream(req("one")))
    assert text_of(first) == "Hello  big\nworld " and len(first) > 3
    assert first[-1] == StepEnd("stop")
    assert list(provider.stream(req("two"))) == [TextDelta("a"), StepEnd("length")]
    with pytest.raises(ProviderError) as info:
        list(provider.stream(req("three")))
    assert info.value is error
    seen: list[StreamEvent] = []
    with pytest.raises(ProviderError) as info:
        seen.extend(provider.stream(req("four")))
    assert info.value.retryable and seen == [TextDelta("part")]
    with pytest.raises(ProviderError, match="no scripted reply"):
        list(provider.stream(req("five")))
    assert [r.messages[0].content for r in provider.requests] == [
        "one",
        "two",
        "three",
        "four",
        "five",
    ]


def test_scripted_provider_close_is_prompt_and_counted():
    provider = ScriptedProvider([" ".join(["word"] * 100)], delay=5)
    stream = provider.stream(req("hi"))
    reader = Reader(stream)
    reader.start()
    assert reader.first_text.wait(2)
    stream.close()
    stream.close()
    reader.join(2)
    assert not reader.is_alive() and reader.events == [TextDelta("word ")]
    assert provider.closed == 1


def test_scripted_provider_is_thread_safe():
    provider = ScriptedProvider([f"reply {i}" for i in range(40)])
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            text = text_of(list(provider.stream(req("x"))))
            with lock:
                results.append(text)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(results) == sorted(f"reply {i}" for i in range(40))
    assert len(provider.requests) == 40 and provider.remaining == 0


# -- DemoProvider -----------------------------------------------------------------------------


def test_demo_provider_streams_a_labelled_markdown_answer():
    provider = DemoProvider(delay=0)
    request = ModelRequest(
        "demo",
        (
            ChatMessage("user", "old"),
            ChatMessage("assistant", "x"),
            ChatMessage("user", "\nWhat is Django?\nsecond line"),
        ),
    )
    events = list(provider.stream(request))
    text = text_of(events)
    assert text == provider.answer(request)
    assert "> What is Django?" in text and "second line" not in text
    for needle in (
        "demo",
        "LLM_BASE_URL",
        "LLM_API_KEY",
        "LLM_MODEL",
        "https://api.openai.com/v1",
        "http://localhost:11434/v1",
        "\n- ",
        "```bash",
    ):
        assert needle in text
    assert events[-1] == StepEnd("stop")
    assert provider.is_demo and provider.label == "Demo model (offline)"


def test_demo_provider_close_stops_promptly():
    stream = DemoProvider(delay=0.5).stream(req("hi"))
    reader = Reader(stream)
    reader.start()
    assert reader.first_text.wait(2)
    started = time.monotonic()
    stream.close()
    reader.join(2)
    assert not reader.is_alive() and time.monotonic() - started < 0.3
    assert len(reader.events) == 1


def test_demo_provider_continues_an_answer_cut_off_by_a_fault_where_it_stopped():
    from agents.providers.base import CONTINUE_PROMPT

    provider = DemoProvider(delay=0)
    asked = ChatMessage("user", "alice: tell me everything")
    full = provider.answer(ModelRequest("demo", (asked,)))
    said = " ".join(full.split(" ")[:7]) + " "  # seven words were out when the worker died
    assert full.startswith(said) and said != full
    again = ModelRequest(
        "demo", (asked, ChatMessage("assistant", said), ChatMessage("user", CONTINUE_PROMPT))
    )
    rest = text_of(list(provider.stream(again)))
    assert said + rest == full  # the rest, nothing repeated, and not the continue prompt quoted
    assert "cut off" not in rest


def test_demo_provider_streams_the_same_on_a_loop_and_stops_when_cancelled():
    provider = DemoProvider(delay=0)
    request = req("What is Django?")

    async def read(stream: AsyncModelStream) -> list[StreamEvent]:
        return [event async for event in stream]

    assert asyncio.run(read(provider.astream(request))) == list(provider.stream(request))

    async def cancel_mid_answer() -> tuple[int, float]:
        seen: list[StreamEvent] = []

        async def consume() -> None:
            async for event in DemoProvider(delay=0.5).astream(request):
                seen.append(event)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)  # the first word is out, the second waits half a second
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(seen), time.monotonic() - started

    count, took = asyncio.run(cancel_mid_answer())
    assert count == 1 and took < 0.3


# -- get_provider -----------------------------------------------------------------------------


@pytest.fixture
def llm_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    # get_provider() reads django.conf.settings at call time: a stand-in keeps Django out.
    fake_settings = types.SimpleNamespace(
        LLM_PROVIDER="demo", LLM_BASE_URL="", LLM_API_KEY="", LLM_MODEL="m", LLM_TIMEOUT=5.0
    )
    monkeypatch.setattr("django.conf.settings", fake_settings)
    reset_provider_cache()
    yield fake_settings
    reset_provider_cache()


def test_get_provider_chooses_and_caches(llm_settings: types.SimpleNamespace):
    demo = get_provider()
    assert isinstance(demo, DemoProvider) and get_provider() is demo
    reset_provider_cache()
    llm_settings.LLM_PROVIDER = "openai"
    llm_settings.LLM_BASE_URL = "http://localhost:11434/v1"
    real = get_provider()
    assert isinstance(real, OpenAICompatibleProvider) and real.label == "m via localhost:11434"
    reset_provider_cache()
    llm_settings.LLM_PROVIDER = "agents.providers.scripted.ScriptedProvider"
    assert isinstance(get_provider(), ScriptedProvider)
    reset_provider_cache()
    llm_settings.LLM_PROVIDER = "json.JSONDecoder"
    with pytest.raises(TypeError):
        get_provider()


def test_an_error_event_mid_stream_raises_after_the_text_before_it(fake_llm: FakeLLM, provider):
    events = []
    with pytest.raises(ProviderError, match="reported an error: Fake error mid-stream") as err:
        with provider.stream(req("!streamerror\n!say=partial answer")) as stream:
            events.extend(stream)
    assert text_of(events) == "partial answer"
    assert err.value.retryable


def test_event_stream_lines_are_split_however_the_network_cuts_them():
    from agents.providers.openai_compat import _EventStream

    body = (
        b'data: {"n": 1}\r\n\r\n'  # CRLF
        b": a comment\n"
        b'event: message\ndata: {"n": 2,\ndata:  "t": "\xc3\xa9"}\n\n'  # two data lines, UTF-8
        b'data: {"n": 3}\r\r'  # CR only
        b"data: [DONE]\n\n"
        b'data: {"n": 4}\n\n'  # after the end: ignored
    )
    for cut in (1, 2, 3, 7, len(body)):  # every chunking: CRLF and UTF-8 split across reads
        decoder = _EventStream("host")
        chunks = [c for i in range(0, len(body), cut) for c in decoder.feed(body[i : i + cut])]
        assert chunks == [{"n": 1}, {"n": 2, "t": "é"}, {"n": 3}], cut
        assert decoder.done and decoder.end() == []


def test_event_stream_cut_mid_event_is_an_error():
    from agents.providers.openai_compat import _EventStream

    for body in (b'data: {"n": 1}\n\ndata: [DONE]', b'data: {"n": 1}\n\ndata: {"n": 2}\n'):
        decoder = _EventStream("host")  # the last event lacks its blank line: the stream was cut
        assert decoder.feed(body) == [{"n": 1}] and decoder.error is None
        assert decoder.end() == [] and decoder.done
        with pytest.raises(ProviderError, match="mid-event"):
            decoder.raise_if_failed()
    decoder = _EventStream("host")  # an error event: the chunks before it come first
    error = b'data: {"error": {"message": "boom"}}\n\n'
    assert decoder.feed(b'data: {"n": 1}\n\n' + error + b'data: {"n": 2}\n\n') == [{"n": 1}]
    with pytest.raises(ProviderError, match="reported an error: boom"):
        decoder.raise_if_failed()
    decoder = _EventStream("host")  # a complete stream without [DONE] just ends
    assert decoder.feed(b'data: {"n": 1}\n\n') == [{"n": 1}]
    assert decoder.end() == [] and not decoder.done


# -- the same provider on an event loop (astream) ---------------------------------------------


def arun(provider: OpenAICompatibleProvider, text: str, **kwargs: object) -> list[StreamEvent]:
    async def read() -> list[StreamEvent]:
        try:
            return [event async for event in provider.astream(req(text, **kwargs))]
        finally:
            await provider.aclose()

    return asyncio.run(read())


def test_astream_streams_the_same_events(fake_llm: FakeLLM, provider: OpenAICompatibleProvider):
    events = arun(provider, "hello there")
    assert text_of(events) == fake_llm.default_reply("hello there")
    assert isinstance(events[-1], StepEnd) and events[-1].finish_reason == "stop"
    text = 'weather? !tool=get_weather:{"city": "Paris"} !tool=get_time:{}'
    calls = [e for e in arun(provider, text, tools=TOOLS) if isinstance(e, ToolCallRequest)]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("call_fake_0", "get_weather", {"city": "Paris"}),
        ("call_fake_1", "get_time", {}),
    ]


def test_astream_cancelled_mid_stream_disconnects(fake_llm: FakeLLM, provider):
    async def read_then_cancel() -> list[StreamEvent]:
        events: list[StreamEvent] = []
        first = asyncio.Event()

        async def read() -> None:
            async for event in provider.astream(req("long !tokens=500 !delay=20")):
                events.append(event)
                first.set()

        task = asyncio.create_task(read())
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await provider.aclose()
        return events

    events = asyncio.run(read_then_cancel())
    assert events and not any(isinstance(e, StepEnd) for e in events)
    assert fake_llm.wait_for_disconnects(1, 5)
    assert fake_llm.completed == 0


def test_astream_aclose_ends_a_blocked_read(fake_llm: FakeLLM, provider):
    async def hang_then_close() -> float:
        stream = provider.astream(req("!hang"))
        task = asyncio.create_task(anext(aiter(stream), None))
        await asyncio.sleep(0.3)  # the request is made; the read waits for a token
        started = time.monotonic()
        task.cancel()
        await stream.aclose()
        with pytest.raises(asyncio.CancelledError):
            await task
        await provider.aclose()
        return time.monotonic() - started

    assert asyncio.run(hang_then_close()) < 2  # well under the 10 s read timeout
    assert fake_llm.wait_for_disconnects(1, 5)


@pytest.mark.parametrize(("code", "retryable"), [(500, True), (429, True), (400, False), (401, False)])
def test_astream_http_errors_map_to_provider_error(fake_llm, provider, code: int, retryable: bool):
    with pytest.raises(ProviderError) as info:
        arun(provider, f"!fail={code}")
    assert info.value.retryable is retryable and f"HTTP {code}" in str(info.value)
    assert info.value.public == f"the model service refused the request (HTTP {code})"
    assert len(fake_llm.requests) == 1


def test_astream_unreachable_and_timeout_are_retryable(fake_llm: FakeLLM):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ProviderError) as info:
        arun(OpenAICompatibleProvider(f"http://127.0.0.1:{port}/v1", "", "m", timeout=5), "hi")
    assert info.value.retryable and "Could not reach" in str(info.value)
    with pytest.raises(ProviderError) as info:
        arun(OpenAICompatibleProvider(fake_llm.base_url, "", "m", timeout=0.5), "!hang")
    assert info.value.retryable and "did not answer" in str(info.value)


def test_astream_error_event_mid_stream(fake_llm: FakeLLM, provider):
    events: list[StreamEvent] = []

    async def read() -> None:
        try:
            async for event in provider.astream(req("!streamerror\n!say=partial answer")):
                events.append(event)
        finally:
            await provider.aclose()

    with pytest.raises(ProviderError, match="reported an error: Fake error mid-stream"):
        asyncio.run(read())
    assert text_of(events) == "partial answer"
