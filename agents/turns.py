"""The turn service: every transition of a turn, and the room's lease, in one place.

A room runs one turn at a time, in queue order. The worker that takes a room's next turn holds
the room's lease (the running turn's `lease_until`, renewed while it streams) and every write it
makes is fenced by the turn's `lease_generation`: a worker that lost its lease can write nothing.

    queued --take--> running --finish--> done | failed | cancelled
      ^                 |  \\--release (worker shutting down) / recover (lease expired)--> queued
      |                 \\--recover (policy interrupt, side effects, attempts used)--> interrupted
      +---- retry (interrupted | failed, no side effects) ----+

Transitions of one room serialise on an advisory lock (`agents.lease.room_turns_lock`), and each ends with the
change's events (`rooms.events.events_append_last`), so every member sees each step in order.
Public surface: TakenTurn, LeaseLost, LeaseState, turn_take_next, lease_renew, turn_finish,
turn_release, turn_cancel, turn_retry, turn_recover_if_expired, rooms_sweep, message_text_from_chunks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from agents import calls, subagents
from agents.kicks import kick_room_on_commit
from agents.lease import LeaseLost, LeaseState, TakenTurn, room_turns_lock
from agents.models import ToolCall, Turn
from rooms import metrics
from rooms.events import NEXT_SEQ, Fill, Row, events_append_last, sentinel
from rooms.models import Message, Room, StreamChunk
from rooms.protocol import MessageEvent, RoomEvent, TurnData, TurnEvent
from rooms.selectors import message_wire
from rooms.services import NEW_MESSAGE_ID, message_draft, message_row, message_update_saved
from rooms.standing import tool_answer_check, turn_action_check
from rooms.turns import TurnRefused

log = logging.getLogger(__name__)
T = TypeVar("T")

NEW_TURN_ID = sentinel(3)


def turn_wire(turn: Turn) -> TurnData:
    """A turn as it travels on the wire."""
    return TurnData(
        id=turn.pk,
        status=turn.status,
        trigger_message_id=turn.trigger_message_id,
        message_id=turn.assistant_message_id,
        attempt=turn.attempt,
        error=turn.error,
        # queued again after its worker was lost: the answer so far is kept and continued
        recovering=turn.status == Turn.Status.QUEUED and turn.assistant_message_id is not None,
    )


def turn_event(turn: Turn) -> TurnEvent:
    return TurnEvent(seq=NEXT_SEQ, turn=turn_wire(turn))


# --- a post queues a turn (in the post's own statement) --------------------------------------

_QUEUE_INSERT = """
    INSERT INTO agents_turn
        (room_id, queue_seq, trigger_message_id, status, attempt, cancel_requested,
         side_effects_started, lease_owner, lease_generation, error, client_tools, created_at)
    SELECT %(room)s, m.seq, m.id, 'queued', 0, false, false, '', 0, '', %(t_tools)s::jsonb, %(now)s
      FROM m
    RETURNING id
"""


def turn_queued_row(*, room: Room, now: Any, client_tools: list[dict[str, Any]]) -> tuple[Row, RoomEvent]:
    """The turn a new message queues, as a row after the message row `m`, and its event."""
    draft = Turn(pk=NEW_TURN_ID, room=room, trigger_message_id=NEW_MESSAGE_ID, created_at=now)
    row = Row(
        name="t",
        sql=_QUEUE_INSERT,
        params={"t_tools": json.dumps(client_tools)},
        fills=(Fill("id", NEW_TURN_ID, "t.id"), Fill("trigger_message_id", NEW_MESSAGE_ID, "m.id")),
        returns=("t.id",),
    )
    return row, turn_event(draft)


# --- take ------------------------------------------------------------------------------------

_LINK_ANSWER = """
    UPDATE agents_turn SET assistant_message_id = m.id FROM m WHERE agents_turn.id = %(t_turn)s
    RETURNING agents_turn.id
"""


def _answer_start_last(*, turn: Turn, now: Any) -> int:
    """Create the turn's (empty, streaming) assistant message and link it to the turn, with the
    `message` and `turn` events: the transaction's last statement."""
    draft = message_draft(
        room_id=turn.room_id, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING, created_at=now
    )
    turn.assistant_message_id = NEW_MESSAGE_ID
    rows = (
        message_row(role=draft.role, author_id=None, content="", status=draft.status, client_id=None),
        Row(name="t", sql=_LINK_ANSWER, params={"t_turn": turn.pk},
            fills=(Fill("message_id", NEW_MESSAGE_ID, "m.id"),)),
    )  # fmt: skip
    events: list[RoomEvent] = [
        MessageEvent(seq=NEXT_SEQ, message=message_wire(draft, turn_id=turn.pk)),
        turn_event(turn),
    ]
    stored = events_append_last(room_id=turn.room_id, events=events, rows=rows, now=now)
    turn.assistant_message_id = int(stored.values[0])
    return turn.assistant_message_id


def turn_take_next(*, room_id: int, owner: str) -> TakenTurn | None:
    """Lease the room: start its oldest queued turn unless a turn is already running."""
    with transaction.atomic():
        room_turns_lock(room_id)  # kicks of one room serialise here
        running = Turn.objects.filter(room_id=room_id, status=Turn.Status.RUNNING).first()
        if running is not None:
            if running.lease_until is not None and running.lease_until > timezone.now():
                return None  # the room is leased; its holder kicks again when done
            _recover_locked(turn=running, reason="lease expired")
        if Turn.objects.filter(room_id=room_id, status=Turn.Status.PARKED).exists():
            return None  # the head of the queue waits on a person; the answer kicks the room
        turn = (
            Turn.objects.filter(room_id=room_id, status=Turn.Status.QUEUED)
            .order_by("queue_seq")
            .select_for_update()
            .first()
        )
        if turn is None:
            return None
        continuing = turn.assistant_message_id is not None
        next_index = 0
        if turn.assistant_message_id is not None:
            next_index = StreamChunk.objects.filter(message_id=turn.assistant_message_id).count()
        now = timezone.now()
        turn.status = Turn.Status.RUNNING
        turn.attempt += 1
        turn.lease_generation += 1
        turn.lease_owner = owner[:120]
        turn.lease_until = now + timedelta(seconds=settings.LEASE_TIMEOUT)
        turn.started_at = turn.started_at or now
        turn.save()
        if continuing:
            events_append_last(room_id=room_id, events=[turn_event(turn)])
        else:
            _answer_start_last(turn=turn, now=now)
    assert turn.assistant_message_id is not None  # set by _answer_start_last
    return TakenTurn(
        turn_id=turn.pk,
        room_id=room_id,
        generation=turn.lease_generation,
        message_id=turn.assistant_message_id,
        trigger_message_id=turn.trigger_message_id,
        attempt=turn.attempt,
        next_index=next_index,
    )


# --- the lease while it streams --------------------------------------------------------------

_RENEW_SQL = """
    UPDATE agents_turn
       SET lease_until = now() + make_interval(secs => %s)
     WHERE id = %s AND lease_generation = %s AND status = 'running'
    RETURNING cancel_requested
"""


def lease_renew(*, taken: TakenTurn) -> LeaseState:
    """Extend the lease (fenced by generation); raises LeaseLost if it was taken away."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_RENEW_SQL, [settings.LEASE_TIMEOUT, taken.turn_id, taken.generation])
        row = cursor.fetchone()
    if row is None:
        raise LeaseLost(f"turn {taken.turn_id} generation {taken.generation}")
    return LeaseState(cancel_requested=bool(row[0]))


_DB_ERRORS = (OperationalError, InterfaceError)


def db_retry(fn: Callable[[], T], *, what: str) -> T:
    """Run `fn` again across a brief database outage (a restart, dropped sessions), for at most
    half a lease; past that the error propagates and the lease is left to expire."""
    deadline = time.monotonic() + settings.LEASE_TIMEOUT / 2
    delay = 0.05
    while True:
        try:
            return fn()
        except _DB_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database error, retrying in %.2fs: %s", what, delay, exc)
            connection.close()  # a broken connection goes back to the pool, which drops it
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


# --- finish, release -------------------------------------------------------------------------

_MESSAGE_STATUS: dict[str, str] = {
    Turn.Status.DONE: Message.Status.COMPLETE,
    Turn.Status.CANCELLED: Message.Status.CANCELLED,
    Turn.Status.FAILED: Message.Status.FAILED,
    Turn.Status.INTERRUPTED: Message.Status.INTERRUPTED,
}


def message_text_from_chunks(message_id: int) -> str:
    """The persisted text of a message: its chunks joined in index order."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(string_agg(text, '' ORDER BY index), '') "
            "FROM rooms_streamchunk WHERE message_id = %s",
            [message_id],
        )
        row = cursor.fetchone()
    return str(row[0]) if row else ""


def _close_locked(*, turn: Turn, status: str, error: str = "") -> None:
    """Give a turn, its message and its calls not settled yet a terminal status (the room's
    turns locked by the caller)."""
    turn.status = status
    turn.error = error[:2000]
    turn.lease_until = None
    turn.lease_owner = ""
    turn.finished_at = timezone.now()
    turn.save()
    ended = "the turn was cancelled" if status == Turn.Status.CANCELLED else f"the turn ended ({status})"
    events = calls.calls_end_open_locked(turn_id=turn.pk, error=ended)
    if turn.assistant_message_id:
        message = Message.objects.get(pk=turn.assistant_message_id)
        message.content = message_text_from_chunks(message.pk)
        message.status = _MESSAGE_STATUS[status]
        events.append(message_update_saved(message=message, turn_id=turn.pk))
    events.append(turn_event(turn))
    events_append_last(room_id=turn.room_id, events=events)
    kick_room_on_commit(turn.room_id)
    subagents.agent_links_closed_locked(turn=turn)
    transaction.on_commit(lambda: metrics.TURNS.labels(status=status).inc())


def _requeue_locked(*, turn: Turn, reason: str) -> None:
    """Put a running turn back at the head of its room's queue, to be continued by any worker.

    Its message stays `streaming` with the text so far; the `turn` event says `recovering`.
    """
    turn.status = Turn.Status.QUEUED
    turn.error = reason[:2000]
    turn.lease_until = None
    turn.lease_owner = ""
    turn.lease_generation += 1  # fence off the old holder for good
    turn.cancel_requested = False
    turn.save()
    events_append_last(room_id=turn.room_id, events=[turn_event(turn)])
    kick_room_on_commit(turn.room_id)


def _locked_own_turn(taken: TakenTurn) -> Turn | None:
    room_turns_lock(taken.room_id)
    return (
        Turn.objects.select_for_update()
        .filter(pk=taken.turn_id, status=Turn.Status.RUNNING, lease_generation=taken.generation)
        .first()
    )


def turn_release(*, taken: TakenTurn, reason: str) -> bool:
    """Hand a running turn back (graceful worker shutdown): another worker continues it."""
    with transaction.atomic():
        turn = _locked_own_turn(taken)
        if turn is None:
            return False
        turn.attempt = max(0, turn.attempt - 1)  # a clean hand-over is not a failed attempt
        _requeue_locked(turn=turn, reason=reason)
    return True


def turn_finish(*, taken: TakenTurn, status: str, error: str = "") -> bool:
    """End the turn this worker runs; False if it lost the lease (someone else finished it)."""
    with transaction.atomic():
        turn = _locked_own_turn(taken)
        if turn is None:
            log.warning("turn %s: lease lost before finish; not writing", taken.turn_id)
            return False
        _close_locked(turn=turn, status=status, error=error)
    return True


# --- parked: waiting on a person ----------------------------------------------------------------


def turn_park(*, taken: TakenTurn) -> bool:
    """Park the turn this worker runs while a call waits on a person: the lease is released
    (no worker waits), the room's later turns stay queued behind it. False if nothing waits any
    more (the answer came first): the runner then goes on."""
    with transaction.atomic():
        turn = _locked_own_turn(taken)
        if turn is None:
            raise LeaseLost(f"turn {taken.turn_id} generation {taken.generation}")
        if not calls.calls_waiting(turn.pk):
            return False
        turn.status = Turn.Status.PARKED
        transaction.on_commit(lambda: metrics.TURNS.labels(status="parked").inc())
        turn.lease_until = None
        turn.lease_owner = ""
        turn.lease_generation += 1
        turn.attempt = max(0, turn.attempt - 1)  # waiting on a person is not a failed attempt
        turn.save()
        events_append_last(room_id=turn.room_id, events=[turn_event(turn)])
    return True


def turn_unpark_events_locked(turn: Turn) -> list[RoomEvent]:
    """A parked turn whose calls no longer wait goes back to the head of the queue (its
    `queue_seq` is the oldest); the caller kicks the room after commit."""
    if turn.status != Turn.Status.PARKED or calls.calls_waiting(turn.pk):
        return []
    turn.status = Turn.Status.QUEUED
    turn.save(update_fields=["status"])
    kick_room_on_commit(turn.room_id)
    return [turn_event(turn)]


def _person_answers(room: Room, user: Any, answer: Callable[[], tuple[ToolCall, list[RoomEvent]]]) -> str:
    """A person's answer to a call, serialised with the turn's park by the room's turn lock;
    unparks the turn once nothing else waits. The call's state after."""
    tool_answer_check(room=room, user=user)  # locked rooms and viewers (rooms.standing)
    with transaction.atomic():
        room_turns_lock(room.pk)
        call, events = answer()
        turn = Turn.objects.select_for_update().get(pk=call.turn_id)
        events += turn_unpark_events_locked(turn)
        events_append_last(room_id=room.pk, events=events)
    return call.state


def turn_tool_result(*, room: Room, user: Any, call_id: str, output: Any, error: str | None) -> str:
    """A client tool's answer (from the person whose message started the turn)."""
    return _person_answers(
        room,
        user,
        lambda: calls.call_answer_locked(room=room, user=user, call_id=call_id, output=output, error=error),
    )


def turn_tool_decision(*, room: Room, user: Any, call_id: str, approved: bool, reason: str | None) -> str:
    """Approve or deny a call that asks first (an approved call runs on the worker that takes
    the turn next)."""
    return _person_answers(
        room,
        user,
        lambda: calls.call_decide_locked(
            room=room, user=user, call_id=call_id, approved=approved, reason=reason
        ),
    )


def turns_expire_waits() -> int:
    """Sweeper: calls that waited on a person past TOOL_WAIT_TIMEOUT end `error` and their
    turns continue (the model hears it). Returns how many turns were woken."""
    woken = 0
    for turn_id in calls.calls_wait_expired():
        with transaction.atomic():
            turn = Turn.objects.filter(pk=turn_id).first()
            if turn is None:
                continue
            room_turns_lock(turn.room_id)
            turn = Turn.objects.select_for_update().get(pk=turn_id)
            events = calls.calls_expire_locked(turn_id=turn_id)
            events += turn_unpark_events_locked(turn)
            if events:
                events_append_last(room_id=turn.room_id, events=events)
                woken += 1
    return woken


# --- a member's cancel and retry -------------------------------------------------------------


def turn_cancel(*, room: Room, user: Any, turn_id: int) -> str:
    """Stop a running turn or withdraw a queued one; returns the turn's status after."""
    with transaction.atomic():
        room_turns_lock(room.pk)
        turn = (
            Turn.objects.select_for_update()
            .select_related("trigger_message")
            .filter(pk=turn_id, room=room)
            .first()
        )
        if turn is None:
            raise TurnRefused("not_found", f"no turn {turn_id} in this room")
        # a member stops their own turn; owners and moderators any (rooms.standing)
        turn_action_check(room=room, user=user, author_id=turn.trigger_message.author_id)
        return turn_stop_locked(turn=turn)


def turn_stop_locked(*, turn: Turn) -> str:
    """Cancel a queued or parked turn now, or ask its runner to stop (the room's turns locked
    by the caller); its status after."""
    if turn.status in (Turn.Status.QUEUED, Turn.Status.PARKED):
        # A turn queued again after its worker was lost already has a streaming message:
        # closing it keeps the text so far and ends the message as well.
        _close_locked(turn=turn, status=Turn.Status.CANCELLED)
    elif turn.status == Turn.Status.RUNNING and not turn.cancel_requested:
        # The runner sees the flag within one flush or heartbeat and closes the stream.
        turn.cancel_requested = True
        turn.save(update_fields=["cancel_requested"])
    return turn.status


def turn_retry(*, room: Room, user: Any, turn_id: int) -> str:
    """Continue an interrupted or failed answer (any member may ask; never after side effects)."""
    with transaction.atomic():
        room_turns_lock(room.pk)
        turn = (
            Turn.objects.select_for_update()
            .select_related("trigger_message")
            .filter(pk=turn_id, room=room)
            .first()
        )
        if turn is None:
            raise TurnRefused("not_found", f"no turn {turn_id} in this room")
        turn_action_check(room=room, user=user, author_id=turn.trigger_message.author_id, retry=True)
        if turn.status not in (Turn.Status.INTERRUPTED, Turn.Status.FAILED):
            raise TurnRefused(
                "conflict", f"turn {turn_id} is {turn.status}: only interrupted or failed turns retry"
            )
        if turn.side_effects_started:
            raise TurnRefused("forbidden", "this turn ran a tool with side effects: not re-run")
        events: list[RoomEvent] = []
        if turn.assistant_message_id:
            message = Message.objects.get(pk=turn.assistant_message_id)
            if message.status in (Message.Status.HIDDEN, Message.Status.DELETED):
                raise TurnRefused("conflict", f"this answer was {message.status} by a moderator")
            message.status = Message.Status.STREAMING
            events.append(message_update_saved(message=message, turn_id=turn.pk))
        turn.status = Turn.Status.QUEUED
        turn.attempt = 0
        turn.error = ""
        turn.finished_at = None
        turn.cancel_requested = False
        turn.save()
        events.append(turn_event(turn))
        events_append_last(room_id=room.pk, events=events)
        kick_room_on_commit(room.pk)
        return turn.status


def turns_stop_all(*, room_id: int) -> int:
    """A moderator stops the room's running turn (as a cancel) and ends a parked one; the
    caller checked who may. How many."""
    with transaction.atomic():
        room_turns_lock(room_id)
        stopped = 0
        for turn in Turn.objects.select_for_update().filter(
            room_id=room_id, status__in=(Turn.Status.RUNNING, Turn.Status.PARKED)
        ):
            if turn.status == Turn.Status.PARKED:
                _close_locked(turn=turn, status=Turn.Status.CANCELLED, error="stopped by a moderator")
            elif not turn.cancel_requested:
                turn.cancel_requested = True
                turn.save(update_fields=["cancel_requested"])
            stopped += 1
    return stopped


def turns_withdraw_queued(*, room_id: int) -> int:
    """A moderator clears the room's queue: every queued turn ends cancelled. How many."""
    with transaction.atomic():
        room_turns_lock(room_id)
        queued = list(Turn.objects.select_for_update().filter(room_id=room_id, status=Turn.Status.QUEUED))
        for turn in queued:
            _close_locked(turn=turn, status=Turn.Status.CANCELLED, error="withdrawn by a moderator")
    return len(queued)


# --- recovery: a worker that vanished --------------------------------------------------------


def _recover_locked(*, turn: Turn, reason: str) -> None:
    """A turn whose worker vanished: keep its persisted text, then continue it or end it.

    Per the room's policy the answer is continued in the same message (a new attempt) or
    marked `interrupted`; a turn whose tool had side effects is never re-run, and one that
    keeps failing ends `failed` once it used its attempts.
    """
    recovery = Room.objects.values_list("recovery", flat=True).get(pk=turn.room_id)
    turn.lease_generation += 1  # fence off the old holder for good
    if turn.side_effects_started or recovery == Room.Recovery.INTERRUPT:
        log.warning("turn %s of room %s interrupted: %s", turn.pk, turn.room_id, reason)
        _close_locked(turn=turn, status=Turn.Status.INTERRUPTED, error=reason)
    elif turn.attempt >= settings.MAX_TURN_ATTEMPTS:
        log.warning("turn %s of room %s failed after %s attempts", turn.pk, turn.room_id, turn.attempt)
        _close_locked(
            turn=turn, status=Turn.Status.FAILED, error=f"gave up after {turn.attempt} attempts: {reason}"
        )
    else:
        log.warning("turn %s of room %s will be continued: %s", turn.pk, turn.room_id, reason)
        _requeue_locked(turn=turn, reason=reason)


def turn_recover_if_expired(*, turn_id: int) -> bool:
    """Recover one turn if its lease has expired; True if it did."""
    with transaction.atomic():
        room_id = Turn.objects.filter(pk=turn_id).values_list("room_id", flat=True).first()
        if room_id is None:
            return False
        room_turns_lock(room_id)
        turn = (
            Turn.objects.select_for_update()
            .filter(pk=turn_id, status=Turn.Status.RUNNING, lease_until__lt=timezone.now())
            .first()
        )
        if turn is None:
            return False
        _recover_locked(turn=turn, reason="worker lost (lease expired)")
    return True


@dataclass(frozen=True)
class SweepReport:
    recovered: int
    kicked: int


def rooms_sweep() -> SweepReport:
    """Recover expired leases, and re-kick rooms with queued turns and nothing running."""
    expired = list(
        Turn.objects.filter(status=Turn.Status.RUNNING, lease_until__lt=timezone.now()).values_list(
            "pk", flat=True
        )[:500]
    )
    recovered = sum(1 for turn_id in expired if turn_recover_if_expired(turn_id=turn_id))
    turns_expire_waits()
    subagents.agent_calls_reconcile()
    idle = list(
        Turn.objects.filter(status=Turn.Status.QUEUED)
        .exclude(room__turns__status__in=(Turn.Status.RUNNING, Turn.Status.PARKED))  # leased, or waiting
        .order_by()  # Turn.Meta.ordering would add a column to the DISTINCT
        .values_list("room_id", flat=True)
        .distinct()[:1000]
    )
    with transaction.atomic():
        for room_id in idle:
            kick_room_on_commit(room_id)
    return SweepReport(recovered=recovered, kicked=len(idle))
