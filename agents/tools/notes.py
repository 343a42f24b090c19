"""The `note` tool: the assistant adds a note to the room's notes panel (a write: it asks first)."""

from __future__ import annotations

from typing import Any

from agents.tools.base import Tool, ToolContext, ToolError
from rooms.services import NOTE_MAX_CHARS, note_add


class Note(Tool):
    """Pins a short text to the room's notes panel, which everyone in the room sees."""

    name = "note"
    description = (
        "Add a note to this room's notes panel, which every member sees: decisions, to-dos, "
        "facts to remember. Use it when someone asks you to remember or note something. Write "
        f"the note itself, short and self-contained (at most {NOTE_MAX_CHARS} characters). A room "
        "member may have to approve it first."
    )
    parameters = {
        "type": "object",
        "properties": {
            "text": {
                "type": "string",
                "minLength": 1,
                "maxLength": NOTE_MAX_CHARS,
                "description": "The note's text.",
            }
        },
        "required": ["text"],
        "additionalProperties": False,
    }
    side_effects = True
    idempotent = False  # each run adds a note: never re-run after a crash
    ask_first = True

    def run(self, ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
        """Add the note: {"note_id": ..., "text": the text as stored}."""
        text = args.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ToolError("text must be a non-empty string")
        note = note_add(room_id=ctx.room_id, text=text, call_id=ctx.call_id)
        return {"note_id": note.pk, "text": note.text}
