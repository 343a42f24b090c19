"""The turn queue as rooms sees it (`settings.ROOM_TURN_QUEUE`): rooms.turns.TurnQueue."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings

from agents import calls, turns
from agents.kicks import kick_room_on_commit
from agents.models import ToolCall, Turn
from agents.tools.registry import server_tools
from rooms.events import Row
from rooms.models import Room
from rooms.protocol import RoomEvent, ToolCallData
from rooms.turns import ToolInfo

_MENTION = re.compile(r"(?<![\w@])@(ai|assistant|bot)\b", re.IGNORECASE)


class RoomTurnQueue:
    """Which messages get an answer, and the turn service's actions a member may take."""

    def wanted(self, *, room: Room, content: str) -> bool:
        if not room.ai_enabled:
            return False
        return room.ai_trigger == Room.AiTrigger.EVERY or bool(_MENTION.search(content))

    def queue_full(self, *, room: Room) -> bool:
        limit = settings.RATE_QUEUED_TURNS_PER_ROOM
        if limit <= 0:
            return False
        return Turn.objects.filter(room=room, status=Turn.Status.QUEUED).count() >= limit

    def queued_row(
        self, *, room: Room, now: Any, client_tools: list[dict[str, Any]]
    ) -> tuple[Row, RoomEvent]:
        return turns.turn_queued_row(room=room, now=now, client_tools=client_tools)

    def posted_on_commit(self, *, room_id: int) -> None:
        kick_room_on_commit(room_id)

    def transcript_turns(self, *, message_ids: list[int]) -> tuple[dict[int, int], dict[int, str]]:
        answers = Turn.objects.filter(assistant_message_id__in=message_ids)
        triggers = Turn.objects.filter(trigger_message_id__in=message_ids)
        return (
            {int(m): int(t) for m, t in answers.values_list("assistant_message_id", "pk")},
            dict(triggers.values_list("trigger_message_id", "status")),
        )

    def transcript_calls(self, *, message_ids: list[int]) -> dict[int, list[ToolCallData]]:
        by_message: dict[int, list[ToolCallData]] = {}
        for call in (
            ToolCall.objects.filter(message_id__in=message_ids)
            .select_related("decided_by")
            .order_by("step", "index")
        ):
            by_message.setdefault(call.message_id, []).append(calls.call_wire(call))
        return by_message

    def tool_result(self, *, room: Room, user: Any, call_id: str, output: Any, error: str | None) -> str:
        return turns.turn_tool_result(room=room, user=user, call_id=call_id, output=output, error=error)

    def tool_decide(self, *, room: Room, user: Any, call_id: str, approved: bool, reason: str | None) -> str:
        return turns.turn_tool_decision(
            room=room, user=user, call_id=call_id, approved=approved, reason=reason
        )

    def tool_catalog(self) -> list[ToolInfo]:
        return [ToolInfo(t.name, t.description, t.side_effects, t.ask_first) for t in server_tools().values()]

    def cancel(self, *, room: Room, user: Any, turn_id: int) -> str:
        return turns.turn_cancel(room=room, user=user, turn_id=turn_id)

    def retry(self, *, room: Room, user: Any, turn_id: int) -> str:
        return turns.turn_retry(room=room, user=user, turn_id=turn_id)

    def moderator_stop(self, *, room: Room) -> int:
        return turns.turns_stop_all(room_id=room.pk)

    def moderator_clear(self, *, room: Room) -> int:
        return turns.turns_withdraw_queued(room_id=room.pk)

    def overview(self, *, limit: int) -> dict[str, Any]:
        counts: dict[str, dict[int, int]] = {"running": {}, "queued": {}, "parked": {}}
        active = Turn.objects.filter(status__in=list(counts)).order_by().values_list("room_id", "status")
        for room_id, status in active:
            counts[status][room_id] = counts[status].get(room_id, 0) + 1
        attention = (
            Turn.objects.filter(status__in=(Turn.Status.FAILED, Turn.Status.PARKED))
            .order_by("-created_at")
            .values("id", "room_id", "status", "error", "created_at")[:limit]
        )
        return {**counts, "attention": list(attention)}
