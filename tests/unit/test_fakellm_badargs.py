"""The fake LLM's !badargs directive: a tool call whose arguments are not JSON (no Django)."""

from __future__ import annotations

import json

import pytest

from agents.providers import ChatMessage, ModelRequest, StepEnd, ToolCallRequest
from agents.providers.openai_compat import OpenAICompatibleProvider
from tests.fakellm import BAD_ARGUMENTS, FakeLLM

TOOLS = ({"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}},)


@pytest.fixture(autouse=True)
def _isolated_run() -> None:
    """Override tests/conftest.py's autouse fixture: these tests need no Django stack."""


def test_badargs_streams_a_call_whose_arguments_are_malformed_json():
    with FakeLLM(delay=0.0) as fake:
        provider = OpenAICompatibleProvider(fake.base_url, "", "fake-model", timeout=10)
        text = 'sum? !badargs=calculator !tool=calculator:{"expression": "2+2"}'
        request = ModelRequest(model="fake-model", messages=(ChatMessage("user", text),), tools=TOOLS)
        events = list(provider.stream(request))
        calls = [e for e in events if isinstance(e, ToolCallRequest)]
        assert [(c.name, c.arguments) for c in calls] == [
            ("calculator", BAD_ARGUMENTS),
            ("calculator", '{"expression": "2+2"}'),
        ]
        with pytest.raises(ValueError):
            json.loads(calls[0].arguments)
        assert isinstance(events[-1], StepEnd) and events[-1].finish_reason == "tool_calls"
        # without tools in the request the directive is ignored, like !tool
        plain = list(provider.stream(ModelRequest(model="fake-model", messages=(ChatMessage("user", text),))))
        assert not [e for e in plain if isinstance(e, ToolCallRequest)]
