"""Slots of schedules: cron in a time zone (across a DST change), intervals without backfill,
one-shots; and what schedule_create refuses (changing nothing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from agents.models import Schedule
from agents.schedules import ScheduleInvalid, schedule_create, slot_after
from rooms.services import room_create


def cron(expr: str, tz: str) -> Schedule:
    return Schedule(kind=Schedule.Kind.CRON, cron=expr, timezone=tz)


def test_weekdays_at_nine_in_lisbon_follow_its_clock_across_summer_time():
    schedule = cron("0 9 * * 1-5", "Europe/Lisbon")
    friday = datetime(2026, 3, 27, 10, 0, tzinfo=UTC)  # Lisbon is UTC+0 until Sunday the 29th
    monday = slot_after(schedule, after=friday)
    assert monday == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)  # 9:00 WEST is 8:00 UTC
    assert slot_after(schedule, after=datetime(2026, 3, 26, 8, 30, tzinfo=UTC)) == datetime(
        2026, 3, 26, 9, 0, tzinfo=UTC
    )


def test_an_interval_late_by_many_slots_moves_to_its_next_slot_after_now_keeping_its_phase():
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    schedule = Schedule(kind=Schedule.Kind.INTERVAL, interval_seconds=600, next_run_at=start)
    now = start + timedelta(hours=5, minutes=3)  # 30 slots missed
    assert slot_after(schedule, after=now) == start + timedelta(hours=5, minutes=10)
    exactly = start + timedelta(minutes=20)
    assert slot_after(schedule, after=exactly) == start + timedelta(minutes=30)  # strictly after


def test_a_one_shot_has_its_time_then_nothing():
    at = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    schedule = Schedule(kind=Schedule.Kind.ONCE, run_at=at)
    assert slot_after(schedule, after=at - timedelta(seconds=1)) == at
    assert slot_after(schedule, after=at) is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"kind": "cron", "cron": "61 * * * *"}, "invalid_cron"),
        ({"kind": "cron", "cron": "0 9 * * *", "tz": "Mars/Olympus"}, "invalid_timezone"),
        ({"kind": "interval", "interval_seconds": 5}, "invalid_interval"),
        ({"kind": "once", "run_at": datetime(2020, 1, 1, tzinfo=UTC)}, "invalid_time"),
        ({"kind": "weekly"}, "invalid_kind"),
        ({"kind": "cron", "cron": "0 9 * * *", "prompt": "   "}, "invalid_prompt"),
    ],
)
def test_a_schedule_that_cannot_be_made_is_refused_with_a_code(alice, fields, code):
    room = room_create(owner=alice[0], title="r")
    fields = {"prompt": "summarise yesterday"} | fields
    with pytest.raises(ScheduleInvalid) as refused:
        schedule_create(room=room, user=alice[0], **fields)
    assert refused.value.code == code
    assert not Schedule.objects.exists()


@pytest.mark.django_db
def test_only_members_schedule_and_a_cron_starts_at_its_next_slot(alice, bob):
    room = room_create(owner=alice[0], title="r", visibility="private")
    with pytest.raises(ScheduleInvalid) as refused:
        schedule_create(room=room, user=bob[0], prompt="hi", kind="cron", cron="0 9 * * *")
    assert refused.value.code == "forbidden"
    made = schedule_create(
        room=room, user=alice[0], prompt="hi", kind="cron", cron="0 9 * * *", tz="Asia/Tokyo"
    )
    local = made.next_run_at.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (9, 0) and made.next_run_at > datetime.now(UTC)
