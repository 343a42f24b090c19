"""A turn's tools: what the model is offered, how its calls are planned and run, and how each
call's result reads in the model's context (the provider's own format)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.db import connection
from jsonschema import Draft202012Validator

from agents.agent_settings import AGENT_TOOL_PARAMETERS, AgentTool, room_agent_tools
from agents.calls import OUTCOME_UNKNOWN, CallPlan, call_settle, call_start
from agents.lease import TakenTurn
from agents.models import ToolCall
from agents.providers.base import ChatMessage, ToolCallRequest
from agents.tools.base import Tool, ToolContext, ToolError
from agents.tools.hooks import CallInfo, hooks_after, hooks_before
from agents.tools.registry import server_tools
from rooms.models import Room

log = logging.getLogger(__name__)


def room_tool_names(room: Room) -> tuple[list[str], set[str]]:
    """The server tools on in the room, and those that ask a person first."""
    tools = server_tools()
    default_on = settings.AGENT_TOOLS_ON or list(tools)
    on = [n for n in (room.tools_on if room.tools_on is not None else default_on) if n in tools]
    if room.tools_ask_first is not None:
        ask = {n for n in room.tools_ask_first if n in tools}
    else:
        ask = {n for n, t in tools.items() if t.ask_first}
    return on, ask


def _schema_error(schema: dict[str, Any], value: Any) -> str:
    error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if error is None:
        return ""
    where = ".".join(str(p) for p in error.absolute_path) or "input"
    return f"invalid arguments: {where}: {error.message[:300]}"


@dataclass
class Toolbox:
    """The tools of one turn: the room's server tools and the client tools its message offered."""

    room: Room
    server: dict[str, Tool] = field(default_factory=dict)
    ask_first: set[str] = field(default_factory=set)
    client: dict[str, dict[str, Any]] = field(default_factory=dict)
    agents: dict[str, AgentTool] = field(default_factory=dict)  # sub-agents, by tool name

    @classmethod
    def for_turn(cls, *, room: Room, client_tools: Iterable[dict[str, Any]]) -> Toolbox:
        on, ask = room_tool_names(room)
        tools = server_tools()
        agents = {n: a for n, a in room_agent_tools(room=room).items() if n not in tools}
        client = {
            t["name"]: t for t in client_tools if t.get("name") not in tools and t.get("name") not in agents
        }
        return cls(room=room, server={n: tools[n] for n in on}, ask_first=ask, client=client, agents=agents)

    def specs(self) -> tuple[dict[str, Any], ...]:
        """The tools as the model is offered them (OpenAI `tools`)."""
        offered = [t.spec() for t in self.server.values()]
        offered += [a.spec() for a in self.agents.values()]
        offered += [
            {"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                              "parameters": t["parameters"]}}
            for t in self.client.values()
        ]  # fmt: skip
        return tuple(offered)

    def plan(self, request: ToolCallRequest, *, turn_id: int, initiator_id: int | None) -> CallPlan:
        """How one of the model's calls is made: its kind, first state, and the hooks' say."""
        name = request.name
        plan = CallPlan(provider_call_id=request.call_id, name=name, kind=ToolCall.Kind.SERVER,
                        arguments=request.arguments, input=None, state=ToolCall.State.ERROR)  # fmt: skip
        try:
            args = json.loads(request.arguments) if request.arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return replace(plan, error=f"the arguments are not valid JSON ({exc.msg}); send a JSON object")
        plan = replace(plan, input=args)
        tool = self.server.get(name)
        if name in self.client:
            # a client tool may do anything: never re-run, and its answer comes from a person
            plan = replace(plan, kind=ToolCall.Kind.CLIENT, side_effects=True, idempotent=False)
            schema = self.client[name]["parameters"]
        elif tool is not None:
            plan = replace(plan, side_effects=tool.side_effects, idempotent=tool.idempotent)
            schema = tool.parameters
        elif name in self.agents:
            # the child may do anything, but a dispatch again attaches to its one run
            plan = replace(plan, kind=ToolCall.Kind.AGENT, side_effects=True, idempotent=True)
            schema = AGENT_TOOL_PARAMETERS
        else:
            return replace(plan, error=f"there is no tool named {name!r} in this room")
        problem = _schema_error(schema, args) if isinstance(args, dict) else "the arguments must be an object"
        if problem:
            return replace(plan, error=problem)
        decision = hooks_before(CallInfo(self.room.pk, turn_id, name, plan.kind, args, initiator_id))
        if decision.action == "block":
            return replace(plan, error=f"blocked: {decision.reason or 'by a hook'}")
        if decision.action == "substitute":  # the hook answered: the tool does not run
            return replace(plan, state=ToolCall.State.DONE, output=decision.output)
        if decision.input is not None:
            plan = replace(plan, input=decision.input)
        if plan.kind == ToolCall.Kind.CLIENT:
            return replace(plan, state=ToolCall.State.WAITING_CLIENT)
        if name in self.ask_first:
            return replace(plan, state=ToolCall.State.AWAITING_APPROVAL, requires_approval=True)
        return replace(plan, state=ToolCall.State.RUNNING)


# --- running the server calls of a step ---------------------------------------------------------


def _run_one(taken: TakenTurn, call: ToolCall, tool: Tool) -> None:
    """Start (committed first), run, settle one server call; hooks around it."""
    info = CallInfo(
        taken.room_id, taken.turn_id, call.name, call.kind, call.input, call.initiator_id, call.pk
    )
    try:
        if not call_start(taken=taken, call_id=call.pk):
            return  # settled meanwhile (cancelled), or already started by a worker now gone
        began = time.monotonic()
        output: Any = None
        error = ""
        try:
            output = tool.run(
                ToolContext(taken.room_id, taken.turn_id, call.pk, call.initiator_id), call.input or {}
            )
            json.dumps(output)  # must be storable as JSON
        except ToolError as exc:
            error = str(exc)[:2000] or "the tool failed"
        except (TypeError, ValueError) as exc:
            error = f"the tool returned output that is not JSON: {exc}"
        except Exception as exc:
            log.exception("tool %s crashed (call %s)", call.name, call.pk)
            error = f"the tool crashed: {type(exc).__name__}"
        state = ToolCall.State.ERROR if error else ToolCall.State.DONE
        call_settle(taken=taken, call_id=call.pk, state=state, output=None if error else output, error=error)
        hooks_after(info, output=output, error=error, duration=time.monotonic() - began)
    finally:
        connection.close()  # this thread's connection goes back to the pool


_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, settings.TOOL_CONCURRENCY), thread_name_prefix="tool")
    return _pool


def run_server_calls(taken: TakenTurn, calls: list[ToolCall], toolbox: Toolbox, heartbeat: Any) -> None:
    """Run the step's runnable server calls, at most TOOL_CONCURRENCY at once, calling
    `heartbeat()` (lease renewal; it raises to stop) while they run. A call past TOOL_TIMEOUT
    is ended `error`; its thread is left to finish (Python threads cannot be killed) and its
    late result is refused by the compare-and-set."""
    runnable = [
        c for c in calls
        if c.kind == ToolCall.Kind.SERVER and c.state == ToolCall.State.RUNNING and c.started_at is None
    ]  # fmt: skip
    futures = {}
    for call in runnable:
        tool = toolbox.server.get(call.name) or server_tools().get(call.name)
        if tool is None:
            call_settle(
                taken=taken,
                call_id=call.pk,
                state=ToolCall.State.ERROR,
                error="the tool is no longer available",
            )
            continue
        futures[call.pk] = (_executor().submit(_run_one, taken, call, tool), time.monotonic())
    for call_id, (future, began) in futures.items():
        while True:
            try:
                future.result(timeout=0.25)
                break
            except FutureTimeout:
                heartbeat()
                if time.monotonic() - began > settings.TOOL_TIMEOUT:
                    late = f"the tool took longer than {settings.TOOL_TIMEOUT:g} s"
                    call = next(c for c in runnable if c.pk == call_id)
                    if call.side_effects and not call.idempotent:  # its thread goes on: it may take effect
                        call_settle(taken=taken, call_id=call_id, state=ToolCall.State.INTERRUPTED,
                                    error=f"{late}: it may or may not have taken effect")  # fmt: skip
                    else:
                        call_settle(taken=taken, call_id=call_id, state=ToolCall.State.ERROR, error=late)
                    break
            except Exception:  # the start or the settle failed (the lease, the database)
                log.warning("tool call %s failed outside the tool", call_id, exc_info=True)
                break


# --- the model's context ------------------------------------------------------------------------


def result_text(call: ToolCall) -> str:
    """What the model reads as the call's result."""
    if call.state == ToolCall.State.DONE:
        return json.dumps(call.output, ensure_ascii=False, default=str)
    if call.state == ToolCall.State.DENIED:
        return f"The call was not run: {call.error}. Answer without it."
    if call.kind == ToolCall.Kind.AGENT and isinstance(call.output, dict) and "status" in call.output:
        return "Error: " + json.dumps(call.output, ensure_ascii=False)  # {status, reason, retryable}
    if call.state == ToolCall.State.INTERRUPTED:
        return f"Interrupted: {OUTCOME_UNKNOWN}. Do not assume it ran; say so if it matters."
    return f"Error: {call.error or 'the call failed'}"


def step_messages(text: str, calls: list[ToolCall]) -> list[ChatMessage]:
    """One step as the model's context: its text with its calls, then a `tool` message each."""
    calls = sorted(calls, key=lambda c: c.index)
    tool_calls = tuple(
        {"id": c.provider_call_id, "type": "function",
         "function": {"name": c.name, "arguments": c.arguments or json.dumps(c.input)}}
        for c in calls
    )  # fmt: skip
    results = [
        ChatMessage(role="tool", content=result_text(c), tool_call_id=c.provider_call_id) for c in calls
    ]
    return [ChatMessage(role="assistant", content=text, tool_calls=tool_calls), *results]


def steps_messages(content: str, calls: list[ToolCall]) -> tuple[list[ChatMessage], str]:
    """An assistant message's steps as the model's context (the text of step n is the content
    up to its calls' `text_offset`); returns them and the text after the last step."""
    messages: list[ChatMessage] = []
    offset = 0
    by_step: dict[int, list[ToolCall]] = {}
    for call in calls:
        by_step.setdefault(call.step, []).append(call)
    for step in sorted(by_step):
        end = max(offset, min(by_step[step][0].text_offset, len(content)))
        messages += step_messages(content[offset:end], by_step[step])
        offset = end
    return messages, content[offset:]


def unique_call_ids(
    requests: list[ToolCallRequest], *, turn_id: int, step: int, used: set[str]
) -> list[ToolCallRequest]:
    """The model's calls with ids unique in the turn (its context refers to calls by id)."""
    out = []
    for i, r in enumerate(requests):
        call_id = r.call_id if r.call_id and r.call_id not in used else f"call_{turn_id}_{step}_{i}"
        used.add(call_id)
        out.append(ToolCallRequest(call_id=call_id, name=r.name, arguments=r.arguments))
    return out
