"""Slow server tools for the real-stack tests and the chaos run, loaded by the workers through
`AGENT_TOOLS_EXTRA` (tests/stack.py, bench/chaos/stack.py). They sleep, so a test or a fault can
kill the worker between a call's `started_at` and its result.

`launch` has a side effect and is not idempotent: each run that completes writes one RoomNote
with the call's id, so the runs of every call are counted in its own table. `slow_lookup` reads
nothing and changes nothing: it may be run again after a crash.
"""

from __future__ import annotations

import time
from typing import Any

from agents.tools.base import Tool, ToolContext
from rooms.services import note_add

SECONDS_MAX = 30

_SECONDS = {"type": "number", "minimum": 0, "maximum": SECONDS_MAX, "description": "How long it takes."}


class Launch(Tool):
    """A slow side effect: after `seconds`, a note "launch <label>" in the room."""

    name = "launch"
    description = "Launch something: takes `seconds`, then records the launch in the room's notes."
    parameters = {
        "type": "object",
        "properties": {"label": {"type": "string", "minLength": 1, "maxLength": 80}, "seconds": _SECONDS},
        "required": ["label", "seconds"],
        "additionalProperties": False,
    }
    side_effects = True
    idempotent = False  # each run writes a note: never run again after a crash
    ask_first = False

    def run(self, ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
        """Sleep, then write the note: {"note_id": ..., "label": ...}."""
        time.sleep(float(args["seconds"]))
        note = note_add(room_id=ctx.room_id, text=f"launch {args['label']}", call_id=ctx.call_id)
        return {"note_id": note.pk, "label": args["label"]}


class SlowLookup(Tool):
    """A slow read: after `seconds`, the key it was asked for, upper-cased."""

    name = "slow_lookup"
    description = "Look a key up: takes `seconds`, returns the value. Reads only."
    parameters = {
        "type": "object",
        "properties": {"key": {"type": "string", "minLength": 1, "maxLength": 80}, "seconds": _SECONDS},
        "required": ["key", "seconds"],
        "additionalProperties": False,
    }
    side_effects = False
    idempotent = True

    def run(self, ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
        """Sleep, then answer: {"key": ..., "value": KEY}."""
        time.sleep(float(args["seconds"]))
        return {"key": args["key"], "value": str(args["key"]).upper()}
