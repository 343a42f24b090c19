"""The turn queue as rooms sees it (`settings.ROOM_TURN_QUEUE`): rooms.turns.TurnQueue."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings

from agents import turns
from agents.kicks import kick_room_on_commit
from agents.models import Turn
from rooms.events import Row
from rooms.models import Room
from rooms.protocol import RoomEvent

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

    def queued_row(self, *, room: Room, now: Any) -> tuple[Row, RoomEvent]:
        return turns.turn_queued_row(room=room, now=now)

    def posted_on_commit(self, *, room_id: int) -> None:
        kick_room_on_commit(room_id)

    def transcript_turns(self, *, message_ids: list[int]) -> tuple[dict[int, int], dict[int, str]]:
        answers = Turn.objects.filter(assistant_message_id__in=message_ids)
        triggers = Turn.objects.filter(trigger_message_id__in=message_ids)
        return (
            {int(m): int(t) for m, t in answers.values_list("assistant_message_id", "pk")},
            dict(triggers.values_list("trigger_message_id", "status")),
        )

    def cancel(self, *, room: Room, user: Any, turn_id: int) -> str:
        return turns.turn_cancel(room=room, user=user, turn_id=turn_id)

    def retry(self, *, room: Room, user: Any, turn_id: int) -> str:
        return turns.turn_retry(room=room, user=user, turn_id=turn_id)
