"""The turn queue as rooms sees it (`settings.ROOM_TURN_QUEUE`): rooms.turns.TurnQueue."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings

from agents import agent_settings, calls, schedules, turns
from agents.kicks import kick_room_on_commit
from agents.lease import room_turns_lock
from agents.models import Schedule, ToolCall, Turn
from agents.tools.registry import server_tools
from rooms.events import Row
from rooms.models import Room
from rooms.protocol import RoomEvent, ToolCallData, TurnData
from rooms.turns import AgentChoice, AgentSetup, ToolInfo, TurnRefused

_MENTION = re.compile(r"(?<![\w@])@(ai|assistant|bot)\b", re.IGNORECASE)


class RoomTurnQueue:
    """Which messages get an answer, and the turn service's actions a member may take."""

    def wanted(self, *, room: Room, content: str) -> bool:
        if not room.ai_enabled:
            return False
        return room.ai_trigger == Room.AiTrigger.EVERY or bool(_MENTION.search(content))

    def queue_full_locked(self, *, room: Room) -> bool:
        limit = settings.RATE_QUEUED_TURNS_PER_ROOM
        if limit <= 0:
            return False
        # The room's turn lock, held to the post's commit: every change to the number of queued
        # turns (a post, a take, a cancel, a recovery) takes it, so this count cannot go stale
        # before the post's turn is in. (A count alone, or one inside the post's statement,
        # reads a snapshot from before a concurrent post committed: both took the last place.)
        room_turns_lock(room.pk)
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

    def turns_read(
        self,
        *,
        room_id: int,
        turn_ids: list[int] | None = None,
        trigger_message_ids: list[int] | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[TurnData]:
        found = Turn.objects.filter(room_id=room_id)
        if turn_ids is not None:
            found = found.filter(pk__in=turn_ids)
        if trigger_message_ids is not None:
            found = found.filter(trigger_message_id__in=trigger_message_ids)
        if before is not None:
            found = found.filter(pk__lt=before)
        return [turns.turn_wire(t) for t in found.order_by("-pk")[: max(1, limit)]]

    def calls_read(
        self, *, room_id: int, turn_id: int | None = None, call_id: str | None = None, limit: int = 200
    ) -> list[ToolCallData]:
        found = ToolCall.objects.filter(room_id=room_id).select_related("decided_by")
        if call_id is not None:
            if not call_id.isdigit() or len(call_id) > 18:
                return []
            found = found.filter(pk=int(call_id))
        if turn_id is not None:
            found = found.filter(turn_id=turn_id)
        newest = list(found.order_by("-pk")[: max(1, limit)])
        return [calls.call_wire(c) for c in sorted(newest, key=lambda c: (c.turn_id, c.step, c.index))]

    def schedules_read(self, *, room: Room) -> list[dict[str, Any]]:
        return [schedules.schedule_wire(s) for s in schedules.schedules_of_room(room=room)]

    def schedule_new(self, *, room: Room, user: Any, fields: dict[str, Any]) -> dict[str, Any]:
        fields = dict(fields)
        tz = fields.pop("timezone", "UTC") or "UTC"
        try:
            made = schedules.schedule_create(room=room, user=user, tz=tz, via=Schedule.Via.API, **fields)
        except schedules.ScheduleInvalid as exc:
            raise TurnRefused(exc.code, exc.detail) from None
        made.recent_runs = []  # type: ignore[attr-defined]
        return schedules.schedule_wire(made)

    def schedule_remove(self, *, room: Room, user: Any, schedule_id: int) -> bool:
        found = Schedule.objects.filter(pk=schedule_id, room=room).select_related("room").first()
        if found is None:
            return False
        try:
            schedules.schedule_delete(schedule=found, user=user)
        except schedules.ScheduleInvalid as exc:
            raise TurnRefused(exc.code, exc.detail) from None
        return True

    def tool_result(self, *, room: Room, user: Any, call_id: str, output: Any, error: str | None) -> str:
        return turns.turn_tool_result(room=room, user=user, call_id=call_id, output=output, error=error)

    def tool_decide(self, *, room: Room, user: Any, call_id: str, approved: bool, reason: str | None) -> str:
        return turns.turn_tool_decision(
            room=room, user=user, call_id=call_id, approved=approved, reason=reason
        )

    def tool_catalog(self) -> list[ToolInfo]:
        return [ToolInfo(t.name, t.description, t.side_effects, t.ask_first) for t in server_tools().values()]

    def agent_settings(self, *, room: Room) -> tuple[AgentSetup | None, list[AgentChoice]]:
        return agent_settings.agent_settings(room=room)

    def agent_settings_save(self, *, room: Room, setup: AgentSetup | None, chosen: list[int]) -> None:
        agent_settings.agent_settings_save(room=room, setup=setup, chosen=chosen)

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
