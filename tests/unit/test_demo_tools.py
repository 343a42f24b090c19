"""The offline demo model with the built-in tools: the calls it makes, and how it answers their
results (no Django database, no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from agents.providers import ChatMessage, ModelRequest, StepEnd, StreamEvent, TextDelta, ToolCallRequest
from agents.providers.demo import DemoProvider
from agents.tools.base import ToolContext
from agents.tools.calculator import Calculator
from agents.tools.clock import Clock

NAMES = ("calculator", "current_time", "search_room", "note")


@pytest.fixture(autouse=True)
def _isolated_run() -> None:
    """Override tests/conftest.py's autouse fixture: these tests need no Django stack."""


def specs(*names: str) -> tuple[dict, ...]:
    return tuple(
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in names
    )


def req(*messages: ChatMessage, tools: tuple[str, ...] = NAMES) -> ModelRequest:
    return ModelRequest(
        model="demo", messages=(ChatMessage("system", "Be helpful."), *messages), tools=specs(*tools)
    )


def events_of(request: ModelRequest) -> list[StreamEvent]:
    with DemoProvider(delay=0).stream(request) as stream:
        return list(stream)


def calls_of(text: str, **kwargs) -> list[tuple[str, dict]]:
    events = events_of(req(ChatMessage("user", f"Alice: {text}"), **kwargs))
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    if calls:
        assert events[-1] == StepEnd(finish_reason="tool_calls")
        assert not [e for e in events if isinstance(e, TextDelta)]
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize(
    "text, expression",
    [
        ("what is 17% of 2340?", "17% of 2340"),
        ("@ai calculate (3 + 4) * sqrt(2)", "(3 + 4) * sqrt(2)"),
        ("2^10 =", "2^10"),
        ("how much is 1250 / 4 please", "1250 / 4"),
    ],
)
def test_demo_calls_the_calculator_for_arithmetic(text, expression):
    assert calls_of(text) == [("calculator", {"expression": expression})]


def test_demo_calls_the_clock_with_a_zone_when_one_is_named():
    assert calls_of("what time is it?") == [("current_time", {})]
    assert calls_of("What's the date in Asia/Tokyo?") == [("current_time", {"timezone": "Asia/Tokyo"})]


def test_demo_searches_for_what_bob_said_about_porto_yesterday():
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    assert calls_of("What did Bob say about Porto yesterday?") == [
        ("search_room", {"query": "Porto", "author": "Bob", "since": yesterday})
    ]
    assert calls_of("search the chat for cheap flights") == [("search_room", {"query": "cheap flights"})]
    assert calls_of("what did anyone say about Lisbon?") == [("search_room", {"query": "Lisbon"})]


def test_demo_notes_the_text_after_the_colon_and_nothing_else():
    assert calls_of("remember this: flights to Porto on Friday, what is 2+2?") == [
        ("note", {"text": "flights to Porto on Friday, what is 2+2?"})
    ]


def test_demo_makes_parallel_calls_with_ids_unique_across_steps():
    request = req(ChatMessage("user", "Alice: what is 12*12 and what time is it?"))
    first, second = events_of(request), events_of(request)
    calls = [e for e in first + second if isinstance(e, ToolCallRequest)]
    assert [c.name for c in calls] == ["calculator", "current_time"] * 2
    assert len({c.call_id for c in calls}) == 4


@pytest.mark.parametrize(
    "text, tools",
    [
        ("hello there", NAMES),
        ("what is the capital of France?", NAMES),
        ("the meeting is 10-12 tomorrow", NAMES),
        ("what time is it?", ("calculator",)),  # the tool it would need is not offered
        ("what is 17% of 2340?", ()),
    ],
)
def test_demo_answers_with_its_canned_text_when_no_offered_tool_is_asked_for(text, tools):
    events = events_of(req(ChatMessage("user", f"Alice: {text}"), tools=tools))
    assert not [e for e in events if isinstance(e, ToolCallRequest)]
    assert events[-1] == StepEnd(finish_reason="stop")
    assert "demo model" in "".join(e.text for e in events if isinstance(e, TextDelta))


def run_step(request: ModelRequest) -> tuple[str, list[ToolCallRequest]]:
    events = events_of(request)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return text, [e for e in events if isinstance(e, ToolCallRequest)]


def with_results(request: ModelRequest, calls: list[ToolCallRequest], outputs: list[str]) -> ModelRequest:
    """The next step's request: the model's calls, then one tool message per result."""
    assistant = ChatMessage(
        "assistant",
        "",
        tool_calls=tuple(
            {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ),
    )
    results = tuple(
        ChatMessage("tool", out, tool_call_id=c.call_id) for c, out in zip(calls, outputs, strict=True)
    )
    return ModelRequest(model="demo", messages=(*request.messages, assistant, *results), tools=request.tools)


def test_demo_quotes_the_results_of_real_tools_in_its_answer():
    first = req(ChatMessage("user", "Alice: what is 17% of 2340, and what time is it in Europe/Lisbon?"))
    _, calls = run_step(first)
    tools = {"calculator": Calculator(), "current_time": Clock()}
    ctx = ToolContext(room_id=1, turn_id=1, call_id=1, initiator_id=None)
    outputs = [json.dumps(tools[c.name].run(ctx, json.loads(c.arguments))) for c in calls]
    events = events_of(with_results(first, calls, outputs))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    answer = "".join(e.text for e in deltas)
    assert len(deltas) > 5 and events[-1] == StepEnd(finish_reason="stop")  # word by word
    assert "17% of 2340 = **397.8**" in answer
    assert "(Europe/Lisbon)" in answer and json.loads(outputs[1])["date"] in answer
    assert not [e for e in events if isinstance(e, ToolCallRequest)]  # no second round of calls


def test_demo_answers_search_results_notes_and_failures():
    first = req(ChatMessage("user", "Alice: what did Bob say about Porto? And note: book the hotel"))
    _, calls = run_step(first)
    assert [c.name for c in calls] == ["note"]
    answer, _ = run_step(with_results(first, calls, [json.dumps({"note_id": 3, "text": "book the hotel"})]))
    assert "Noted in the room's notes: “book the hotel”" in answer

    first = req(ChatMessage("user", "Alice: what did Bob say about Porto?"))
    _, calls = run_step(first)
    hit = {"seq": 4, "author": "Bob", "role": "user", "created_at": "2026-12-02T10:00:00+00:00",
           "excerpt": "cheap flights to **Porto**"}  # fmt: skip
    answer, _ = run_step(with_results(first, calls, [json.dumps({"results": [hit], "count": 1})]))
    assert (
        "I found 1 message:" in answer
        and "> **Bob** (2026-12-02 10:00): cheap flights to **Porto**" in answer
    )
    answer, _ = run_step(with_results(first, calls, [json.dumps({"error": "the database is away"})]))
    assert "The `search_room` tool failed: the database is away" in answer
    answer, _ = run_step(with_results(first, calls, ["denied by Alice"]))
    assert "The `search_room` tool said: denied by Alice" in answer


def test_closing_the_demo_stream_stops_its_tool_calls():
    stream = DemoProvider(delay=0).stream(req(ChatMessage("user", "Alice: what is 2+2?")))
    stream.close()
    assert list(stream) == []
