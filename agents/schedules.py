"""Scheduled turns: create a schedule, and fire its due occurrences (from the sweeper).

An occurrence is a schedule and a slot. Firing one is one transaction: a single INSERT claims
it (the `(schedule, slot)` row is unique, so of any number of sweepers racing for it one insert
wins and the others' conflict on it and do nothing), then the schedule moves to its next slot
and the message is posted through `rooms.services.message_post`, the socket's own path (same
checks, events and turn queue; its client_id is derived from the occurrence as well). A crash
before the commit undoes the claim with the rest, so the next sweep runs the occurrence once,
late; after the commit the turn is queued and the room sweeper kicks it if the kick was lost.

No backfill: a schedule late by many slots runs once, and its next slot is the first one after
now. An interval whose previous run's turn is still going skips the slot (recorded `skipped`).
An error that may pass (a busy or locked room, a database fault) undoes the claim too: the
slot stays due and is tried again after a back-off, so it never consumes a one-shot.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from agents.models import Schedule, ScheduleRun, Turn
from rooms import metrics
from rooms.models import Room
from rooms.selectors import membership_of
from rooms.services import message_post
from rooms.turns import turn_queue

log = logging.getLogger(__name__)

_OCCURRENCE_NS = uuid.UUID("6f0c5c1e-3b7a-4c55-9a55-5c8e1f1a7d11")
_GOING = (Turn.Status.QUEUED, Turn.Status.RUNNING, Turn.Status.PARKED)


class ScheduleInvalid(Exception):
    """A schedule that cannot be made; `code` is a stable error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# --- slots -------------------------------------------------------------------------------------


def zone_of(name: str) -> ZoneInfo:
    """The IANA time zone `name`; ScheduleInvalid if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleInvalid("invalid_timezone", f"unknown time zone {name!r}") from exc


def slot_after(schedule: Schedule, *, after: datetime) -> datetime | None:
    """The schedule's first slot strictly after `after` (None: a one-shot has no more)."""
    if schedule.kind == Schedule.Kind.ONCE:
        return schedule.run_at if schedule.run_at and schedule.run_at > after else None
    if schedule.kind == Schedule.Kind.INTERVAL:
        step = timedelta(seconds=int(schedule.interval_seconds or 0))
        base = schedule.next_run_at or after
        if base > after:
            return base
        # keep the phase: the next multiple of the interval after `after`
        return base + step * ((after - base) // step + 1)
    local = after.astimezone(zone_of(schedule.timezone))
    found: datetime = croniter(schedule.cron, local).get_next(datetime)
    return found.astimezone(ZoneInfo("UTC"))


def schedule_validate(schedule: Schedule, *, now: datetime) -> None:
    """Raise ScheduleInvalid unless the schedule can be made as it is."""
    zone_of(schedule.timezone)
    prompt = schedule.prompt.strip()
    if not prompt:
        raise ScheduleInvalid("invalid_prompt", "a schedule needs a message to post")
    if len(prompt) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise ScheduleInvalid("invalid_prompt", f"at most {settings.CHAT_MAX_MESSAGE_CHARS} characters")
    if schedule.kind == Schedule.Kind.CRON:
        if not schedule.cron or not croniter.is_valid(schedule.cron):
            raise ScheduleInvalid("invalid_cron", f"not a cron expression: {schedule.cron!r}")
    elif schedule.kind == Schedule.Kind.INTERVAL:
        if not schedule.interval_seconds or schedule.interval_seconds < settings.SCHEDULE_MIN_INTERVAL:
            raise ScheduleInvalid(
                "invalid_interval", f"an interval is at least {settings.SCHEDULE_MIN_INTERVAL:g} seconds"
            )
    elif schedule.kind == Schedule.Kind.ONCE:
        if schedule.run_at is None or schedule.run_at <= now:
            raise ScheduleInvalid("invalid_time", "a one-shot needs a time in the future")
    else:
        raise ScheduleInvalid("invalid_kind", f"unknown kind {schedule.kind!r}")


# --- writes ------------------------------------------------------------------------------------


def schedule_create(
    *,
    room: Room,
    user: Any,
    prompt: str,
    kind: str,
    cron: str = "",
    interval_seconds: int | None = None,
    run_at: datetime | None = None,
    tz: str = "UTC",
    via: str = Schedule.Via.PAGE,
    call_id: int | None = None,
) -> Schedule:
    """Make a schedule for a member of the room; ScheduleInvalid (changing nothing) if it can't be.

    With `call_id` (the `schedule` tool) the same call makes the same schedule only once.
    """
    if call_id is not None:
        existing = Schedule.objects.filter(created_by_call_id=call_id).first()
        if existing is not None:
            return existing
    if membership_of(room=room, user=user) is None:
        raise ScheduleInvalid("forbidden", "only members of the room can schedule in it")
    now = timezone.now()
    if run_at is not None and timezone.is_naive(run_at):
        run_at = timezone.make_aware(run_at, zone_of(tz))
    schedule = Schedule(
        room=room, created_by=user, prompt=prompt.strip(), kind=kind, cron=cron.strip(),
        interval_seconds=interval_seconds, run_at=run_at, timezone=tz, created_via=via,
        created_by_call_id=call_id,
    )  # fmt: skip
    schedule_validate(schedule, now=now)
    if Schedule.objects.filter(room=room, enabled=True).count() >= settings.SCHEDULES_PER_ROOM_MAX:
        raise ScheduleInvalid("too_many", f"a room has at most {settings.SCHEDULES_PER_ROOM_MAX} schedules")
    if kind == Schedule.Kind.INTERVAL:
        schedule.next_run_at = now + timedelta(seconds=int(interval_seconds or 0))
    else:
        schedule.next_run_at = slot_after(schedule, after=now)
    schedule.save()
    return schedule


def schedule_delete(*, schedule: Schedule, user: Any) -> None:
    """Remove a schedule (its creator, or the room's owner); its runs go with it."""
    if user.pk not in (schedule.created_by_id, schedule.room.owner_id):
        raise ScheduleInvalid("forbidden", "only its creator or the room's owner can remove it")
    schedule.delete()


def schedule_pause(*, schedule: Schedule, enabled: bool) -> Schedule:
    """Pause a schedule, or resume it from its next slot after now (no backfill)."""
    schedule.enabled = enabled
    if enabled:
        schedule.next_run_at = slot_after(schedule, after=timezone.now())
        schedule.retry_at = None
        schedule.failures = 0
    schedule.save(update_fields=["enabled", "next_run_at", "retry_at", "failures"])
    return schedule


# --- firing ------------------------------------------------------------------------------------

_CLAIM = """
    INSERT INTO agents_schedulerun (schedule_id, slot, status, claimed_by, error, created_at)
    SELECT id, next_run_at, 'posted', %(owner)s, '', now()
      FROM agents_schedule
     WHERE id = %(schedule)s AND enabled AND next_run_at = %(slot)s
    ON CONFLICT (schedule_id, slot) DO NOTHING
    RETURNING id
"""


def occurrence_claim(*, schedule_id: int, slot: datetime, owner: str) -> int | None:
    """Claim one occurrence in one statement: the new run's id, or None if another process has
    it (or the schedule moved on). Inside the firing transaction: a rollback frees it."""
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM, {"owner": owner[:120], "schedule": schedule_id, "slot": slot})
        row = cursor.fetchone()
    return int(row[0]) if row else None


def occurrence_client_id(*, schedule_id: int, slot: datetime) -> uuid.UUID:
    """The posted message's client_id: the same for every attempt at one occurrence."""
    return uuid.uuid5(_OCCURRENCE_NS, f"{schedule_id}:{slot.isoformat()}")


@dataclass
class FireReport:
    """What one pass of the scheduler did."""

    posted: int = 0
    skipped: int = 0
    failed: int = 0  # refused for good: the schedule stopped
    errors: int = 0  # may pass: the slot stays due, tried again after a back-off
    lost: int = 0  # another process had the occurrence


def _post_content(room: Room, prompt: str) -> str:
    """The posted text: a room that answers only when mentioned gets the mention."""
    if not turn_queue().wanted(room=room, content=prompt):
        return f"@assistant {prompt}"
    return prompt


def _advance(schedule: Schedule, *, now: datetime) -> None:
    once = schedule.kind == Schedule.Kind.ONCE  # its one slot is the one being run
    schedule.next_run_at = None if once else slot_after(schedule, after=now)
    if schedule.next_run_at is None:
        schedule.enabled = False
    schedule.failures = 0
    schedule.retry_at = None
    schedule.last_error = ""
    schedule.save(update_fields=["next_run_at", "enabled", "failures", "retry_at", "last_error"])


def occurrence_fire(
    *, schedule_id: int, slot: datetime, owner: str, after_claim: Callable[[int], None] | None = None
) -> str:
    """Run one occurrence if this process wins it: 'posted', 'skipped', 'failed', 'error', 'lost'.

    `after_claim` is called inside the transaction right after the claim (a test's crash point).
    """
    now = timezone.now()
    try:
        with transaction.atomic():
            run_id = occurrence_claim(schedule_id=schedule_id, slot=slot, owner=owner)
            if run_id is None:
                return "lost"
            if after_claim is not None:
                after_claim(run_id)
            schedule = (
                Schedule.objects.select_for_update(of=("self",))
                .select_related("room", "created_by")
                .get(pk=schedule_id)
            )
            run = ScheduleRun.objects.get(pk=run_id)
            room, author = schedule.room, schedule.created_by
            if membership_of(room=room, user=author) is None:
                run.status, run.error = ScheduleRun.Status.FAILED, "its creator is no longer a member"
                run.save(update_fields=["status", "error"])
                schedule.enabled, schedule.next_run_at, schedule.last_error = False, None, run.error
                schedule.save(update_fields=["enabled", "next_run_at", "last_error"])
                return "failed"
            if schedule.kind == Schedule.Kind.INTERVAL and _previous_going(schedule, before=run_id):
                run.status = ScheduleRun.Status.SKIPPED
                run.save(update_fields=["status"])
                _advance(schedule, now=now)
                return "skipped"
            _advance(schedule, now=now)
            posted = message_post(
                room=room, author=author, content=_post_content(room, schedule.prompt),
                client_id=occurrence_client_id(schedule_id=schedule_id, slot=slot),
            )  # fmt: skip
            run.message_id = posted.message_id
            run.turn_id = (
                Turn.objects.filter(trigger_message_id=posted.message_id).values_list("pk", flat=True).first()
            )
            run.save(update_fields=["message", "turn"])
            return "posted"
    except Exception as exc:  # the claim is undone with the rest: the slot stays due
        log.warning("schedule %s slot %s: not posted, will retry: %s", schedule_id, slot, exc)
        _note_error(schedule_id=schedule_id, error=f"{type(exc).__name__}: {exc}", now=now)
        return "error"


def _previous_going(schedule: Schedule, *, before: int) -> bool:
    """Whether the turn of the schedule's previous posted run is still queued, running or parked."""
    turn_id = (
        ScheduleRun.objects.filter(schedule=schedule, status=ScheduleRun.Status.POSTED, pk__lt=before)
        .order_by("-pk")
        .values_list("turn_id", flat=True)
        .first()
    )
    return turn_id is not None and Turn.objects.filter(pk=turn_id, status__in=_GOING).exists()


def _note_error(*, schedule_id: int, error: str, now: datetime) -> None:
    failures = (Schedule.objects.filter(pk=schedule_id).values_list("failures", flat=True).first() or 0) + 1
    delay = min(settings.SCHEDULE_RETRY_BASE * 2 ** (failures - 1), settings.SCHEDULE_RETRY_MAX)
    Schedule.objects.filter(pk=schedule_id).update(
        failures=F("failures") + 1, retry_at=now + timedelta(seconds=delay), last_error=error[:2000]
    )


def schedules_fire(*, owner: str, limit: int = 200) -> FireReport:
    """The sweeper's pass: fire every due occurrence this process wins."""
    now = timezone.now()
    due = list(
        Schedule.objects.filter(enabled=True, next_run_at__lte=now)
        .filter(Q(retry_at__isnull=True) | Q(retry_at__lte=now))
        .order_by("next_run_at")
        .values_list("pk", "next_run_at")[:limit]
    )
    report = FireReport()
    for schedule_id, slot in due:
        assert slot is not None  # filtered on next_run_at
        outcome = occurrence_fire(schedule_id=schedule_id, slot=slot, owner=owner)
        metrics.SCHEDULE_RUNS.labels(outcome=outcome).inc()
        setattr(report, outcome, getattr(report, outcome) + 1)
    return report


# --- reads -------------------------------------------------------------------------------------


def schedules_of_room(*, room: Room) -> list[Schedule]:
    """The room's schedules with their latest runs (newest first)."""
    schedules = list(Schedule.objects.filter(room=room).select_related("created_by").order_by("id"))
    for schedule in schedules:
        schedule.recent_runs = list(  # type: ignore[attr-defined]
            ScheduleRun.objects.filter(schedule=schedule).select_related("turn").order_by("-slot")[:10]
        )
    return schedules


def schedule_wire(schedule: Schedule) -> dict[str, Any]:
    """A schedule as the HTTP API shows it, with its latest runs (from `schedules_of_room`)."""

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    runs = getattr(schedule, "recent_runs", [])
    return {
        "id": schedule.pk, "prompt": schedule.prompt, "kind": schedule.kind, "cron": schedule.cron,
        "interval_seconds": schedule.interval_seconds, "run_at": when(schedule.run_at),
        "timezone": schedule.timezone, "enabled": schedule.enabled,
        "next_run_at": when(schedule.next_run_at), "last_error": schedule.last_error,
        "created_by": {"id": schedule.created_by_id, "name": schedule.created_by.first_name
                       or schedule.created_by.username},
        "created_via": schedule.created_via,
        "runs": [{"slot": r.slot.isoformat(), "status": r.status, "message_id": r.message_id,
                  "turn_id": r.turn_id, "error": r.error} for r in runs],
    }  # fmt: skip
