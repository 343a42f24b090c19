"""The agent loop against real Postgres with a scripted model: steps, server and client tools,
approvals, parking, recovery of a call a dead worker had started, hooks."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from agents import runner
from agents.models import ToolCall, Turn
from agents.providers.base import StepEnd, TextDelta, ToolCallRequest
from agents.providers.scripted import ScriptedProvider
from agents.tools import registry
from agents.tools.base import Tool, ToolContext, ToolError
from agents.tools.hooks import CallInfo, Decision, ToolHook
from agents.turns import (
    turn_cancel,
    turn_recover_if_expired,
    turn_take_next,
    turn_tool_decision,
    turn_tool_result,
    turns_expire_waits,
)
from rooms.models import RoomEvent
from rooms.protocol import parse_server_frame
from rooms.services import membership_join, message_post
from rooms.turns import TurnRefused

pytestmark = pytest.mark.django_db(transaction=True)
RUNS: dict[str, int] = {}
GATE = threading.Event()


class Add(Tool):
    name = "add"
    description = "Adds two numbers."
    parameters = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                  "required": ["a", "b"]}  # fmt: skip

    def run(self, ctx: ToolContext, args: dict[str, Any]) -> Any:
        RUNS["add"] = RUNS.get("add", 0) + 1
        if args["b"] == 0 and args["a"] == 0:
            raise ToolError("nothing to add")
        return {"sum": args["a"] + args["b"]}


class Launch(Tool):
    """A side effect that must never happen twice; waits on GATE when asked to."""

    name = "launch"
    description = "Launches a rocket."
    parameters = {"type": "object", "properties": {"wait": {"type": "boolean"}}}
    side_effects = True
    idempotent = False

    def run(self, ctx: ToolContext, args: dict[str, Any]) -> Any:
        RUNS["launch"] = RUNS.get("launch", 0) + 1
        if args.get("wait"):
            GATE.wait(20)
        return {"launched": True}


class Slow(Tool):
    """Read-only, waits on GATE: re-run after a crash."""

    name = "slow"
    description = "Looks something up slowly."
    parameters = {"type": "object", "properties": {}}

    def run(self, ctx: ToolContext, args: dict[str, Any]) -> Any:
        RUNS["slow"] = RUNS.get("slow", 0) + 1
        if RUNS["slow"] == 1:
            GATE.wait(20)
        return {"found": RUNS["slow"]}


class BlockLaunches(ToolHook):
    seen: list[tuple[str, str]] = []

    def before_tool_call(self, call: CallInfo) -> Decision | None:
        if call.name == "add" and call.input.get("a") == 13:
            return Decision(action="block", reason="13 is unlucky")
        if call.name == "add" and call.input.get("a") == 7:
            return Decision(input={"a": 70, "b": call.input["b"]})
        return None

    def after_tool_call(self, call: CallInfo, *, output: Any, error: str, duration: float) -> None:
        BlockLaunches.seen.append((call.name, error))


@pytest.fixture(autouse=True)
def tools(settings: Any) -> Any:
    settings.AGENT_TOOLS = [f"{__name__}.Add", f"{__name__}.Launch", f"{__name__}.Slow"]
    settings.AGENT_TOOLS_ON = []
    settings.TOOL_HOOKS = [f"{__name__}.BlockLaunches", "agents.tools.hooks.LogCalls"]
    from agents.tools import hooks

    registry.server_tools.cache_clear()
    hooks.tool_hooks.cache_clear()
    RUNS.clear()
    GATE.clear()
    BlockLaunches.seen = []
    yield
    GATE.set()
    registry.server_tools.cache_clear()
    hooks.tool_hooks.cache_clear()


@pytest.fixture
def scripted(monkeypatch: Any) -> ScriptedProvider:
    provider = ScriptedProvider()
    monkeypatch.setattr(runner, "get_provider", lambda: provider)
    return provider


def calling(*calls: tuple[str, dict[str, Any] | str], text: str = "Let me check.") -> list[Any]:
    events: list[Any] = [TextDelta(text)] if text else []
    for i, (name, args) in enumerate(calls):
        arguments = args if isinstance(args, str) else json.dumps(args)
        events.append(ToolCallRequest(call_id=f"c{i}", name=name, arguments=arguments))
    return [*events, StepEnd(finish_reason="tool_calls")]


def post(room: Any, user: Any, text: str, tools: list[dict[str, Any]] | None = None) -> Any:
    return message_post(room=room, author=user, client_id=uuid.uuid4(), content=text, client_tools=tools)


def run_next(room: Any) -> str:
    taken = turn_take_next(room_id=room.pk, owner="test")
    assert taken is not None
    return runner.turn_run(taken=taken)


def frames(room: Any, kind: str) -> list[dict[str, Any]]:
    rows = RoomEvent.objects.filter(room=room, type=kind).order_by("seq").values_list("frame", flat=True)
    for text in rows:
        parse_server_frame(text)  # every stored frame is one of the typed frames
    return [json.loads(t) for t in rows]


def test_a_read_only_call_runs_and_the_next_step_answers_with_its_result(room, alice, scripted):
    scripted.add(calling(("add", {"a": 2, "b": 3})), "The sum is 5.")
    post(room, alice[0], "what is 2+3?")
    assert run_next(room) == "done"
    call = ToolCall.objects.get()
    assert (call.state, call.output, call.kind) == ("done", {"sum": 5}, "server")
    assert call.started_at is not None and call.finished_at is not None
    answer = call.message
    answer.refresh_from_db()
    assert answer.content == "Let me check.\n\nThe sum is 5."
    second = scripted.requests[1].messages
    assert second[-2].role == "assistant" and second[-2].tool_calls[0]["function"]["name"] == "add"
    assert second[-1].role == "tool" and json.loads(second[-1].content) == {"sum": 5}
    assert [f["call"]["state"] for f in frames(room, "tool_call")] == ["running"]
    assert [f["call"]["state"] for f in frames(room, "tool_update")] == ["done"]
    assert [t["function"]["name"] for t in scripted.requests[0].tools] == ["add", "launch", "slow"]
    assert BlockLaunches.seen == [("add", "")]


def test_bad_arguments_an_unknown_tool_and_a_tool_error_are_told_to_the_model(room, alice, scripted):
    scripted.add(
        calling(("add", '{"a": 1,'), ("nope", {}), ("add", {"a": 0, "b": 0}), ("add", {"a": "x", "b": 1})),
        "Sorry.",
    )
    post(room, alice[0], "go")
    assert run_next(room) == "done"
    errors = list(ToolCall.objects.order_by("index").values_list("state", "error"))
    assert [s for s, _ in errors] == ["error"] * 4
    assert "not valid JSON" in errors[0][1] and "no tool named 'nope'" in errors[1][1]
    assert errors[2][1] == "nothing to add" and "invalid arguments: a" in errors[3][1]
    results = [m.content for m in scripted.requests[1].messages if m.role == "tool"]
    assert len(results) == 4 and all(r.startswith("Error: ") for r in results)


def test_hooks_block_a_call_and_rewrite_another(room, alice, scripted):
    scripted.add(calling(("add", {"a": 13, "b": 1}), ("add", {"a": 7, "b": 1})), "ok")
    post(room, alice[0], "go")
    run_next(room)
    blocked, rewritten = ToolCall.objects.order_by("index")
    assert (blocked.state, blocked.error) == ("error", "blocked: 13 is unlucky")
    assert (rewritten.state, rewritten.input, rewritten.output) == ("done", {"a": 70, "b": 1}, {"sum": 71})
    assert RUNS == {"add": 1}


def test_an_ask_first_call_parks_the_turn_until_an_allowed_person_approves(room, alice, bob, scripted):
    room.tools_ask_first = ["launch"]
    room.save()
    membership_join(room=room, user=bob[0])
    scripted.add(calling(("launch", {})), "Launched.")
    post(room, alice[0], "launch it")
    post(room, bob[0], "and then?")  # queued behind the parked turn
    assert run_next(room) == "parked"
    turn = Turn.objects.order_by("queue_seq").first()
    assert (turn.status, turn.lease_until) == ("parked", None)
    assert turn_take_next(room_id=room.pk, owner="w2") is None  # the next turn waits behind it
    call = ToolCall.objects.get()
    assert (call.state, call.requires_approval, RUNS) == ("awaiting_approval", True, {})
    with pytest.raises(TurnRefused) as refused:
        turn_tool_decision(room=room, user=bob[0], call_id=str(call.pk), approved=True, reason=None)
    assert refused.value.code == "forbidden"
    assert (
        turn_tool_decision(room=room, user=alice[0], call_id=str(call.pk), approved=True, reason=None)
        == "running"
    )
    with pytest.raises(TurnRefused) as again:
        turn_tool_decision(room=room, user=alice[0], call_id=str(call.pk), approved=False, reason=None)
    assert again.value.code == "conflict"
    assert Turn.objects.get(pk=turn.pk).status == "queued"
    assert run_next(room) == "done"
    call.refresh_from_db()
    assert (call.state, call.decided_by_id, RUNS) == ("done", alice[0].pk, {"launch": 1})


def test_a_denied_call_does_not_run_and_the_model_is_told(room, alice, scripted):
    room.tools_ask_first = ["launch"]
    room.save()
    scripted.add(calling(("launch", {})), "I did not launch.")
    post(room, alice[0], "launch it")
    assert run_next(room) == "parked"
    call = ToolCall.objects.get()
    turn_tool_decision(room=room, user=alice[0], call_id=str(call.pk), approved=False, reason="not today")
    assert run_next(room) == "done"
    call.refresh_from_db()
    assert (call.state, call.error, RUNS) == ("denied", "denied by Alice: not today", {})
    told = [m.content for m in scripted.requests[1].messages if m.role == "tool"]
    assert told == ["The call was not run: denied by Alice: not today. Answer without it."]


CLIENT_TOOL = {"name": "local_time", "description": "The user's local time.",
               "parameters": {"type": "object", "properties": {}}}  # fmt: skip


def test_a_client_tool_is_answered_only_by_the_person_who_offered_it(room, alice, bob, scripted):
    membership_join(room=room, user=bob[0])
    scripted.add(calling(("local_time", {})), "It is late.")
    post(room, alice[0], "what time is it here?", tools=[CLIENT_TOOL])
    assert run_next(room) == "parked"
    call = ToolCall.objects.get()
    assert (call.kind, call.state, call.initiator_id) == ("client", "waiting_client", alice[0].pk)
    with pytest.raises(TurnRefused) as refused:
        turn_tool_result(room=room, user=bob[0], call_id=str(call.pk), output={"t": "x"}, error=None)
    assert refused.value.code == "forbidden"
    with pytest.raises(TurnRefused) as missing:
        turn_tool_result(room=room, user=alice[0], call_id="999999", output=None, error=None)
    assert missing.value.code == "not_found"
    turn_tool_result(room=room, user=alice[0], call_id=str(call.pk), output={"time": "23:10"}, error=None)
    with pytest.raises(TurnRefused) as twice:
        turn_tool_result(room=room, user=alice[0], call_id=str(call.pk), output={"time": "later"}, error=None)
    assert twice.value.code == "conflict"
    assert run_next(room) == "done"
    call.refresh_from_db()
    assert (call.state, call.output) == ("done", {"time": "23:10"})
    assert [t["function"]["name"] for t in scripted.requests[0].tools][-1] == "local_time"


def test_a_parked_turn_can_be_cancelled_and_its_waiting_call_ends(room, alice, scripted):
    scripted.add(calling(("local_time", {})))
    post(room, alice[0], "time?", tools=[CLIENT_TOOL])
    assert run_next(room) == "parked"
    turn = Turn.objects.get()
    assert turn_cancel(room=room, user=alice[0], turn_id=turn.pk) == "cancelled"
    call = ToolCall.objects.get()
    assert (call.state, call.error) == ("error", "the turn was cancelled")
    assert call.message.status == "cancelled"


def test_a_wait_past_the_timeout_ends_the_call_and_the_turn_goes_on(room, alice, scripted, settings):
    scripted.add(calling(("local_time", {})), "No answer from your browser.")
    post(room, alice[0], "time?", tools=[CLIENT_TOOL])
    assert run_next(room) == "parked"
    settings.TOOL_WAIT_TIMEOUT = 0.0
    assert turns_expire_waits() == 1
    assert run_next(room) == "done"
    assert ToolCall.objects.get().error.startswith("no answer within")


def _run_dying(taken: Any, out: dict[str, str]) -> None:
    try:
        out["status"] = runner.turn_run(taken=taken)
    finally:
        connection.close()


def _run_until_started(room: Any, name: str) -> tuple[threading.Thread, dict[str, str]]:
    """Run the next turn in a thread until its `name` call has started; a worker that will die."""
    out: dict[str, str] = {}
    taken = turn_take_next(room_id=room.pk, owner="doomed")
    thread = threading.Thread(target=_run_dying, args=(taken, out))
    thread.start()
    deadline = time.monotonic() + 10
    while not ToolCall.objects.filter(name=name, started_at__isnull=False).exists():
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.02)
    return thread, out


def _worker_lost(room: Any) -> None:
    """The doomed worker's lease expires and the sweeper recovers its turn."""
    turn = Turn.objects.get(status="running")
    Turn.objects.filter(pk=turn.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert turn_recover_if_expired(turn_id=turn.pk)


def test_a_side_effecting_call_a_dead_worker_started_is_never_run_again(room, alice, scripted):
    scripted.add(calling(("launch", {"wait": True})), "I cannot tell whether it launched.")
    post(room, alice[0], "launch")
    doomed, out = _run_until_started(room, "launch")
    _worker_lost(room)
    assert run_next(room) == "done"  # another worker continues the turn
    call = ToolCall.objects.get()
    assert call.state == "interrupted" and "may or may not" in call.error
    told = [m.content for m in scripted.requests[1].messages if m.role == "tool"]
    assert told[0].startswith("Interrupted:")
    GATE.set()  # the old worker's tool returns: its result is refused, nothing runs again
    doomed.join(10)
    assert out["status"] == "lost"
    call.refresh_from_db()
    assert (call.state, RUNS["launch"]) == ("interrupted", 1)


def test_a_read_only_call_a_dead_worker_started_runs_again(room, alice, scripted):
    scripted.add(calling(("slow", {})), "Found it.")
    post(room, alice[0], "look it up")
    doomed, out = _run_until_started(room, "slow")
    _worker_lost(room)
    assert run_next(room) == "done"
    call = ToolCall.objects.get()
    assert (call.state, call.output, RUNS["slow"]) == ("done", {"found": 2}, 2)
    GATE.set()
    doomed.join(10)
    assert out["status"] == "lost"


def test_a_finished_call_is_reused_not_run_again_after_a_crash(room, alice, scripted):
    # the worker dies after the call finished, while the next step streams
    scripted.delay = 0.15
    scripted.add(calling(("add", {"a": 1, "b": 2})), "The sum is three, as you can see here.", "3.")
    post(room, alice[0], "1+2?")
    out: dict[str, str] = {}
    taken = turn_take_next(room_id=room.pk, owner="doomed")
    doomed = threading.Thread(target=_run_dying, args=(taken, out))
    doomed.start()
    deadline = time.monotonic() + 10
    while len(scripted.requests) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    _worker_lost(room)
    scripted.delay = 0.0
    assert run_next(room) == "done"
    doomed.join(10)
    assert out["status"] == "lost"
    call = ToolCall.objects.get()
    assert (call.state, RUNS) == ("done", {"add": 1})
    third = scripted.requests[2].messages  # the continuation got the stored result
    assert any(m.role == "tool" and json.loads(m.content) == {"sum": 3} for m in third)


def test_a_side_effect_past_the_tool_timeout_ends_interrupted_not_error(room, alice, scripted, settings):
    settings.TOOL_TIMEOUT = 0.3
    scripted.add(calling(("launch", {"wait": True})), "It may or may not have launched.")
    post(room, alice[0], "launch")
    assert run_next(room) == "done"
    call = ToolCall.objects.get()
    # the thread that runs it cannot be stopped: it goes on (here until GATE opens) and may well
    # take effect after the call ended, so "error" (it failed) would be a lie
    assert call.state == "interrupted" and "may or may not" in call.error, (call.state, call.error)
    told = [m.content for m in scripted.requests[1].messages if m.role == "tool"]
    assert told[0].startswith("Interrupted:")
