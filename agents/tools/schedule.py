"""The `schedule` tool: the assistant schedules a turn of the room (a write: it asks first)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone

from agents.models import Schedule
from agents.schedules import ScheduleInvalid, schedule_create
from agents.tools.base import Tool, ToolContext, ToolError
from rooms.models import Room


class ScheduleTurn(Tool):
    """Makes a schedule that posts a message into this room later, or again and again."""

    name = "schedule"
    description = (
        "Schedule a message to be posted into this room later, which you will then answer: once "
        "(`in_minutes`, or `at` an ISO 8601 time), every N minutes (`every_minutes`), or on a cron "
        "expression (`cron`, five fields, e.g. '0 9 * * 1-5' for weekdays at 9:00) in `timezone` "
        "(IANA, e.g. 'Europe/Lisbon'; default UTC). `prompt` is the message, written as the request "
        "you will answer then (e.g. 'Summarise yesterday's messages'). Give exactly one of "
        "in_minutes, at, every_minutes, cron. A room member may have to approve it first."
    )
    parameters = {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": 4000},
            "in_minutes": {"type": "number", "exclusiveMinimum": 0, "maximum": 525600},
            "at": {"type": "string", "maxLength": 40, "description": "ISO 8601 date and time"},
            "every_minutes": {"type": "number", "exclusiveMinimum": 0, "maximum": 525600},
            "cron": {"type": "string", "maxLength": 120},
            "timezone": {"type": "string", "maxLength": 64},
        },
        "required": ["prompt"],
        "additionalProperties": False,
    }
    side_effects = True
    # the schedule is unique per call: a re-run after a crash returns the same schedule
    idempotent = True
    ask_first = True

    def run(self, ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
        """Make it: {"schedule_id", "when", "next_run_at"}."""
        given = [k for k in ("in_minutes", "at", "every_minutes", "cron") if args.get(k) is not None]
        if len(given) != 1:
            raise ToolError("give exactly one of in_minutes, at, every_minutes, cron")
        if ctx.initiator_id is None:
            raise ToolError("nobody to schedule for: this turn has no initiator")
        tz = str(args.get("timezone") or "UTC")
        fields: dict[str, Any] = {}
        if "in_minutes" in given:
            run_at = timezone.now() + timedelta(minutes=float(args["in_minutes"]))
            fields = {"kind": Schedule.Kind.ONCE, "run_at": run_at}
        elif "at" in given:
            try:
                at = datetime.fromisoformat(str(args["at"]))
            except ValueError:
                raise ToolError(f"not an ISO 8601 time: {args['at']!r}") from None
            fields = {"kind": Schedule.Kind.ONCE, "run_at": at}
        elif "every_minutes" in given:
            seconds = round(float(args["every_minutes"]) * 60)
            fields = {"kind": Schedule.Kind.INTERVAL, "interval_seconds": seconds}
        else:
            fields = {"kind": Schedule.Kind.CRON, "cron": str(args["cron"])}
        room = Room.objects.get(pk=ctx.room_id)
        user = get_user_model().objects.get(pk=ctx.initiator_id)
        try:
            schedule = schedule_create(
                room=room, user=user, prompt=str(args["prompt"]), tz=tz, via=Schedule.Via.TOOL,
                call_id=ctx.call_id, **fields,
            )  # fmt: skip
        except ScheduleInvalid as exc:
            raise ToolError(exc.detail) from None
        return {
            "schedule_id": schedule.pk,
            "when": schedule.describe(),
            "next_run_at": schedule.next_run_at.isoformat() if schedule.next_run_at else None,
        }
