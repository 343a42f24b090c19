"""Scheduled turns on the real stack (the stack's sweeper fires due schedules every second).

An occurrence (schedule + slot) runs at most once: with several schedulers racing for it, and
after a scheduler is killed between claiming it and posting its message. No backfill; an
interval skips while its previous turn is going; an error that may pass keeps a one-shot due.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from agents.models import Schedule, ScheduleRun, ToolCall, Turn
from agents.schedules import occurrence_client_id, occurrence_fire, schedule_create, schedules_fire
from rooms.client import RoomClient
from rooms.models import Message
from rooms.services import message_post, room_create
from tests.conftest import on_own_connection, run_async
from tests.stack import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"no {what} in {timeout}s")


def hourly(room: Any, user: Any, prompt: str = "!say=on schedule") -> Schedule:
    """An interval schedule whose next slot is an hour away (a test moves it)."""
    return schedule_create(room=room, user=user, prompt=prompt, kind="interval", interval_seconds=3600)


def turns_done(turn_ids: list[int]) -> bool:
    return Turn.objects.filter(pk__in=turn_ids, status__in=Turn.TERMINAL).count() == len(turn_ids)


RACING_SCHEDULER = """
import json, sys
import django
django.setup()
from agents.schedules import schedules_fire
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(vars(schedules_fire(owner="test-racer"))), flush=True)
"""


def test_schedulers_racing_for_the_same_occurrences_run_each_once(stack, fake, alice, capsys):
    racers, processes, rooms, per_room = 4, 2, 8, 2  # threads of this process, other processes
    schedules = []
    for i in range(rooms):
        room = room_create(owner=alice[0], title=f"race {i}")
        schedules += [hourly(room, alice[0], f"!say=race {i}.{j}") for j in range(per_room)]
    ids = [s.pk for s in schedules]
    outcomes: Counter[str] = Counter()
    barrier = threading.Barrier(racers + 1)

    def racer() -> None:
        def fire() -> None:
            barrier.wait()
            report = schedules_fire(owner="test-racer")
            for name, count in vars(report).items():
                outcomes[name] += count

        on_own_connection(fire)

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACING_SCHEDULER],
            cwd=ROOT,
            env=stack.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(processes)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    threads = [threading.Thread(target=racer) for _ in range(racers)]
    for t in threads:
        t.start()
    # every occurrence falls due at once, for the racers and for the stack's own sweeper
    Schedule.objects.filter(pk__in=ids).update(next_run_at=timezone.now() - timedelta(seconds=1))
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    barrier.wait()
    for t in threads:
        t.join()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        for name, count in json.loads(out.strip().splitlines()[-1]).items():
            outcomes[name] += count
    wait_for(lambda: ScheduleRun.objects.filter(schedule_id__in=ids).count() >= len(ids), what="runs")

    runs = list(ScheduleRun.objects.filter(schedule_id__in=ids))
    assert sorted(r.schedule_id for r in runs) == sorted(ids)  # one run per occurrence
    assert {r.status for r in runs} == {"posted"}
    slots = {r.schedule_id: r.slot for r in runs}
    for schedule_id in ids:  # one message per occurrence, one turn per message
        client_id = occurrence_client_id(schedule_id=schedule_id, slot=slots[schedule_id])
        assert Message.objects.filter(client_id=client_id).count() == 1
    turn_ids = [r.turn_id for r in runs]
    assert None not in turn_ids and len(set(turn_ids)) == len(ids)
    wait_for(lambda: turns_done(turn_ids), what="finished turns")
    assert set(Turn.objects.filter(pk__in=turn_ids).values_list("status", flat=True)) == {"done"}
    for schedule in Schedule.objects.filter(pk__in=ids):  # each moved on to its next slot
        assert schedule.next_run_at > timezone.now() + timedelta(minutes=59)
    won_by_racers = sum(1 for r in runs if r.claimed_by == "test-racer")
    assert outcomes["posted"] == won_by_racers
    assert outcomes["error"] == 0
    with capsys.disabled():
        print(
            f"\nschedule race: {len(ids)} occurrences, {racers} racing threads + {processes} racing "
            f"processes + the stack's sweeper; attempts by the racers {sum(outcomes.values())}: "
            f"won {outcomes['posted']}, "
            f"lost {outcomes['lost']}; won by the sweeper {len(ids) - won_by_racers}; runs "
            f"{len(runs)}, messages {len(ids)}, turns {len(set(turn_ids))}, all done"
        )


CRASHING_SCHEDULER = """
import sys, time
from datetime import datetime
import django
django.setup()
from django.db import connection
from agents.schedules import occurrence_fire

with connection.cursor() as cursor:  # held open on purpose: Postgres must not end it first
    cursor.execute("SET idle_in_transaction_session_timeout = 0")

def crash_point(run_id):
    print("claimed", run_id, flush=True)
    time.sleep(60)  # killed here: the claim is in an open transaction

occurrence_fire(schedule_id=int(sys.argv[1]), slot=datetime.fromisoformat(sys.argv[2]),
                owner="doomed", after_claim=crash_point)
"""


def test_a_scheduler_killed_between_claim_and_post_leaves_the_occurrence_to_run_once(
    stack, fake, room, alice, capsys
):
    schedule = hourly(room, alice[0], "!say=after the crash")
    slot = timezone.now() - timedelta(seconds=1)
    # due, but kept from the stack's sweeper (retry_at) until the doomed scheduler holds it
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=slot, retry_at=slot + timedelta(days=1))
    doomed = subprocess.Popen(
        [sys.executable, "-c", CRASHING_SCHEDULER, str(schedule.pk), slot.isoformat()],
        cwd=ROOT, env=stack.env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = doomed.stdout.readline() if doomed.stdout else ""
        assert line.startswith("claimed"), line
        Schedule.objects.filter(pk=schedule.pk).update(retry_at=None)

        def sweeper_waits_on_the_claim() -> bool:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO agents_schedulerun%%'"
                )
                return bool(cursor.fetchone()[0])

        # the stack's sweeper tries the same occurrence and waits on the uncommitted claim
        wait_for(sweeper_waits_on_the_claim, what="sweeper waiting on the claim")
        assert ScheduleRun.objects.filter(schedule=schedule).count() == 0  # nothing committed
    finally:
        doomed.kill()
        doomed.wait()
    run = wait_for(lambda: ScheduleRun.objects.filter(schedule=schedule).first(), what="run")
    assert run.status == "posted" and run.slot == slot
    assert run.claimed_by != "doomed"  # the killed claim was undone; the sweeper's won
    wait_for(lambda: turns_done([run.turn_id]), what="the turn")
    turn = Turn.objects.get(pk=run.turn_id)
    assert turn.status == "done"
    assert Message.objects.get(pk=turn.assistant_message_id).content == "after the crash"
    assert ScheduleRun.objects.filter(schedule=schedule).count() == 1
    client_id = occurrence_client_id(schedule_id=schedule.pk, slot=slot)
    assert Message.objects.filter(client_id=client_id).count() == 1
    with capsys.disabled():
        print(
            f"\nschedule crash: scheduler pid {doomed.pid} killed holding the claim; the sweeper "
            f"({run.claimed_by}) waited on it, then ran the occurrence: runs 1, messages 1, turn "
            f"{turn.pk} {turn.status}"
        )


def test_a_schedule_late_by_many_slots_runs_once_then_at_its_next_slot(stack, fake, room, alice):
    schedule = schedule_create(room=room, user=alice[0], prompt="!say=late", kind="cron", cron="* * * * *")
    missed = timezone.now() - timedelta(hours=3)  # 180 minutes of slots missed while "down"
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=missed)
    run = wait_for(lambda: ScheduleRun.objects.filter(schedule=schedule).first(), what="the late run")
    assert run.slot == missed and run.status == "posted"
    schedule.refresh_from_db()
    assert timezone.now() < schedule.next_run_at <= timezone.now() + timedelta(minutes=1)
    assert schedule.next_run_at.second == 0  # back on the cron's own slots
    assert ScheduleRun.objects.filter(schedule=schedule).count() == 1


def test_an_interval_skips_its_slot_while_the_previous_turn_is_going(stack, fake, room, alice):
    schedule = hourly(room, alice[0], "!tokens=60 !delay=100")  # a 6-second answer
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=timezone.now())
    first = wait_for(lambda: ScheduleRun.objects.filter(schedule=schedule).first(), what="first run")
    wait_for(lambda: Turn.objects.filter(pk=first.turn_id, status="running").exists(), what="running")
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=timezone.now())  # the next slot, now
    skipped = wait_for(
        lambda: ScheduleRun.objects.filter(schedule=schedule, status="skipped").first(), what="skip"
    )
    assert skipped.turn_id is None
    assert Turn.objects.get(pk=first.turn_id).status == "running"
    wait_for(lambda: turns_done([first.turn_id]), what="first turn")
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=timezone.now())
    wait_for(lambda: ScheduleRun.objects.filter(schedule=schedule, status="posted").count() == 2, what="run")
    assert ScheduleRun.objects.filter(schedule=schedule).count() == 3


def test_an_error_that_may_pass_never_consumes_a_one_shot(stack, fake, room, alice, settings):
    at = timezone.now() + timedelta(hours=1)
    schedule = schedule_create(room=room, user=alice[0], prompt="!say=remind", kind="once", run_at=at)
    # a long answer running and one queued behind it: with room for one queued turn, it is full
    message_post(room=room, author=alice[0], client_id=uuid.uuid4(), content="!tokens=40 !delay=100")
    wait_for(lambda: Turn.objects.filter(room=room, status="running").exists(), what="running turn")
    message_post(room=room, author=alice[0], client_id=uuid.uuid4(), content="!say=next")
    settings.RATE_QUEUED_TURNS_PER_ROOM = 1
    slot = timezone.now() - timedelta(seconds=1)
    # due for this test's scheduler only (the stack's sweeper waits for retry_at)
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=slot, retry_at=slot + timedelta(days=1))

    assert occurrence_fire(schedule_id=schedule.pk, slot=slot, owner="test") == "error"
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.next_run_at == slot  # still due: not consumed
    assert "RoomBusy" in schedule.last_error and schedule.failures == 1
    assert not ScheduleRun.objects.filter(schedule=schedule).exists()

    wait_for(
        lambda: not Turn.objects.filter(room=room, status__in=("queued", "running")).exists(), what="idle"
    )
    assert occurrence_fire(schedule_id=schedule.pk, slot=slot, owner="test") == "posted"
    schedule.refresh_from_db()
    assert not schedule.enabled and schedule.next_run_at is None  # a one-shot runs once
    assert schedule.failures == 0 and schedule.last_error == ""
    run = ScheduleRun.objects.get(schedule=schedule)
    wait_for(lambda: turns_done([run.turn_id]), what="the reminder's turn")
    assert Message.objects.get(pk=Turn.objects.get(pk=run.turn_id).assistant_message_id).content == "remind"


def test_the_assistant_schedules_a_turn_with_the_ask_first_schedule_tool(stack, fake, room, alice):
    args = '{"prompt": "!say=time to stretch", "in_minutes": 0.02}'

    async def scenario() -> int:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        client_id = str(uuid.uuid4())
        content = f"remind us in a second !tool=schedule:{args} !say=Scheduled."
        await a.send_raw(json.dumps({"type": "send", "client_id": client_id, "content": content}))
        await a.wait_ack(client_id)
        await a.wait_for(
            lambda c: any(f["type"] == "turn" and f["turn"]["status"] == "parked" for f in c.frames),
            timeout=30,
        )
        assert not Schedule.objects.filter(room=room).exists()  # nothing until a person approves
        call = ToolCall.objects.get(room=room, name="schedule", state="awaiting_approval")
        await a.approve(str(call.pk))
        await a.close()
        return call.pk

    call_id = run_async(scenario())
    schedule = wait_for(lambda: Schedule.objects.filter(room=room).first(), what="the schedule")
    assert schedule.created_via == "tool" and schedule.created_by_call_id == call_id
    assert schedule.created_by_id == alice[0].pk and schedule.kind == "once"
    run = wait_for(
        lambda: ScheduleRun.objects.filter(schedule=schedule, turn__status="done").first(),
        what="the scheduled turn",
    )
    answer = Message.objects.get(pk=Turn.objects.get(pk=run.turn_id).assistant_message_id)
    assert answer.content == "time to stretch"
    assert ToolCall.objects.get(pk=call_id).output["schedule_id"] == schedule.pk
    schedule.refresh_from_db()
    assert not schedule.enabled and schedule.next_run_at is None
