"""Hooks every tool call goes through, whatever its kind: `before_tool_call` may allow it,
rewrite its input, block it (the model gets the reason) or substitute an output;
`after_tool_call` sees the output or error and the duration. Configured by dotted paths in
settings.TOOL_HOOKS, run in that order; the default logs each call."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings
from django.utils.module_loading import import_string

log = logging.getLogger("agents.tools")


@dataclass(frozen=True)
class CallInfo:
    """The call a hook sees."""

    room_id: int
    turn_id: int
    name: str
    kind: str
    input: Any
    initiator_id: int | None
    call_id: int | None = None  # None before the call is stored (at planning)


@dataclass(frozen=True)
class Decision:
    """What `before_tool_call` says: allow (optionally with a new `input`), block with a
    `reason`, or substitute an `output` (the tool does not run)."""

    action: Literal["allow", "block", "substitute"] = "allow"
    input: Any = None  # with "allow": the input to use instead, if not None
    reason: str = ""
    output: Any = None


class ToolHook:
    """Subclass and override either method; both are called for every call."""

    def before_tool_call(self, call: CallInfo) -> Decision | None:
        return None

    def after_tool_call(self, call: CallInfo, *, output: Any, error: str, duration: float) -> None:
        return None


class LogCalls(ToolHook):
    """Logs each call's end: name, kind, room, turn, duration, and the error if any."""

    def after_tool_call(self, call: CallInfo, *, output: Any, error: str, duration: float) -> None:
        log.info(
            "tool %s (%s) room %s turn %s call %s: %s in %.0f ms",
            call.name, call.kind, call.room_id, call.turn_id, call.call_id,
            f"error: {error}" if error else "ok", duration * 1000,
        )  # fmt: skip


@functools.cache
def tool_hooks() -> tuple[ToolHook, ...]:
    return tuple(import_string(path)() for path in settings.TOOL_HOOKS)


def hooks_before(call: CallInfo) -> Decision:
    """Run every `before_tool_call` in order: a rewrite passes on the new input, a block or a
    substitute ends it. A hook that raises blocks the call (fail closed)."""
    current = call
    for hook in tool_hooks():
        try:
            decision = hook.before_tool_call(current)
        except Exception:
            log.exception("before_tool_call of %s failed: the call is blocked", type(hook).__name__)
            return Decision(action="block", reason="a tool hook failed")
        if decision is None or decision.action == "allow":
            if decision is not None and decision.input is not None:
                current = CallInfo(**{**current.__dict__, "input": decision.input})
            continue
        return decision
    return Decision(input=current.input if current is not call else None)


def hooks_after(call: CallInfo, *, output: Any, error: str, duration: float) -> None:
    """Run every `after_tool_call`; a hook that raises is logged, never fails the call."""
    for hook in tool_hooks():
        try:
            hook.after_tool_call(call, output=output, error=error, duration=duration)
        except Exception:
            log.exception("after_tool_call of %s failed", type(hook).__name__)
