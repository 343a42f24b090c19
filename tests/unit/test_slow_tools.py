"""The slow test tools (tests/tools.py) that the real-stack tests and the chaos run load through
AGENT_TOOLS_EXTRA: valid schemas, and what each run leaves behind."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from agents.tools.base import ToolContext
from agents.tools.registry import server_tools
from rooms.models import RoomNote
from tests.tools import Launch, SlowLookup

pytestmark = pytest.mark.django_db


@pytest.fixture
def with_extra_tools(settings):
    settings.AGENT_TOOLS = [*settings.AGENT_TOOLS, "tests.tools.Launch", "tests.tools.SlowLookup"]
    server_tools.cache_clear()
    yield server_tools()
    server_tools.cache_clear()


def test_the_extra_tools_register_next_to_the_built_in_ones_with_valid_schemas(with_extra_tools):
    assert {"calculator", "note", "launch", "slow_lookup"} <= set(with_extra_tools)
    for name in ("launch", "slow_lookup"):
        schema = with_extra_tools[name].spec()["function"]["parameters"]
        Draft202012Validator.check_schema(schema)
        assert list(Draft202012Validator(schema).iter_errors({"label": "x", "key": "x", "seconds": 31}))
    launch, lookup = with_extra_tools["launch"], with_extra_tools["slow_lookup"]
    assert (launch.side_effects, launch.idempotent, launch.ask_first) == (True, False, False)
    assert (lookup.side_effects, lookup.idempotent) == (False, True)


def test_launch_writes_one_note_with_the_call_id_and_slow_lookup_writes_nothing(room):
    ctx = ToolContext(room_id=room.pk, turn_id=1, call_id=41, initiator_id=None)
    assert Launch().run(ctx, {"label": "probe", "seconds": 0})["label"] == "probe"
    assert SlowLookup().run(ctx, {"key": "abc", "seconds": 0.01}) == {"key": "abc", "value": "ABC"}
    assert list(RoomNote.objects.filter(room=room).values_list("text", "call_id")) == [("launch probe", 41)]
