"""Template filters for the tool cards (templates/includes/tool_call.html); static/js/room/view.js
shows the same text for live calls."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template

register = template.Library()

STATE_LABELS = {
    "running": "running…",
    "done": "done",
    "error": "error",
    "denied": "denied",
    "interrupted": "outcome unknown",
    "awaiting_approval": "waiting for approval",
}


@register.filter
def pretty_json(value: Any) -> str:
    """A tool's input or output as indented JSON text (the template escapes it: never HTML)."""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        return str(value)


@register.filter
def tool_duration(call: dict[str, Any]) -> str:
    """How long a finished call ran ("" while it runs, or if it never started)."""
    started, finished = call.get("started_at"), call.get("finished_at")
    if not started or not finished:
        return ""
    try:
        seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    except ValueError:
        return ""
    return duration_text(seconds)


def duration_text(seconds: float) -> str:
    """120 ms, 1.3 s, 2 min 5 s: the same steps as view.js's durationText."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


@register.filter
def tool_state_label(call: dict[str, Any], me_id: int | None = None) -> str:
    """The card's state badge: running…, done, waiting for Alice's browser, ..."""
    state = call.get("state", "")
    if state == "waiting_client":
        mine = me_id is not None and call.get("initiator_id") == me_id
        who = call.get("initiator_name") or "the asker"
        if call.get("name") == "choose":
            return "waiting for your choice" if mine else f"waiting for {who} to choose"
        return "waiting for your browser" if mine else f"waiting for {who}'s browser"
    return STATE_LABELS.get(state, state)
