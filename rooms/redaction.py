"""Redaction of a moderated message's text from the room's stored event frames (what replay sends).

The frames are re-encoded by their frame models (rooms.protocol), so the stored text stays exactly
as pydantic writes it. A moderation action (rooms.moderation) calls these inside its transaction.
"""

from __future__ import annotations

from django.db import connection

from rooms.protocol import MessageEvent, MessageUpdateEvent, ToolCallEvent, ToolUpdateEvent

_MESSAGE_FRAMES = """
    SELECT id, type, frame FROM rooms_roomevent
     WHERE room_id = %s AND type IN ('message', 'message_update')
       AND (frame::jsonb #>> '{message,id}')::bigint = %s
"""


_CALL_FRAMES = """
    SELECT id, type, frame FROM rooms_roomevent
     WHERE room_id = %s AND type IN ('tool_call', 'tool_update')
       AND (frame::jsonb #>> '{call,message_id}')::bigint = %s
"""


def call_frames_redact(*, room_id: int, message_id: int) -> int:
    """Blank the input, output and error of the stored tool call events of a deleted answer."""
    with connection.cursor() as cursor:
        cursor.execute(_CALL_FRAMES, [room_id, message_id])
        rows = cursor.fetchall()
        for event_id, kind, frame in rows:
            model = ToolCallEvent if kind == "tool_call" else ToolUpdateEvent
            event = model.model_validate_json(frame)
            event.call.input, event.call.output = {}, None
            event.call.error = "deleted by a moderator" if event.call.error else None
            cursor.execute("UPDATE rooms_roomevent SET frame = %s WHERE id = %s", [event.encode(), event_id])
    return len(rows)


def message_frames_redact(*, room_id: int, message_id: int) -> int:
    """Blank `content` and `html` in the stored frames of a message's events (what replay
    sends); re-encoded by their frame models, so the text stays as pydantic writes it."""
    with connection.cursor() as cursor:
        cursor.execute(_MESSAGE_FRAMES, [room_id, message_id])
        rows = cursor.fetchall()
        for event_id, kind, frame in rows:
            model = MessageEvent if kind == "message" else MessageUpdateEvent
            event = model.model_validate_json(frame)
            event.message.content = ""
            event.message.html = ""
            cursor.execute("UPDATE rooms_roomevent SET frame = %s WHERE id = %s", [event.encode(), event_id])
    return len(rows)
