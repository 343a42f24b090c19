"""The per-room FIFO of turns: enqueue, take the next (the room's lease), finish, cancel."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from agents.kicks import kick_room_on_commit
from agents.models import Turn
from rooms import broadcast
from rooms.models import Message, Room, StreamChunk
from rooms.protocol import dumps
from rooms.selectors import message_data
from rooms.services import (
    PH_EVENT_SEQ,
    PH_MESSAGE_ID,
    PH_MESSAGE_SEQ,
    events_append_last,
    frame_filled,
    message_update_saved,
    placeholder,
)

log = logging.getLogger(__name__)

_MENTION = re.compile(r"(?<![\w@])@(ai|assistant|bot)\b", re.IGNORECASE)


def turn_data(turn: Turn) -> dict[str, Any]:
    """A turn as it travels on the wire."""
    return {
        "id": turn.pk,
        "status": turn.status,
        "trigger_message_id": turn.trigger_message_id,
        "message_id": turn.assistant_message_id,
        "attempt": turn.attempt,
        "error": turn.error,
        # queued again after its worker was lost: the answer so far is kept and continued
        "recovering": turn.status == Turn.Status.QUEUED and turn.assistant_message_id is not None,
    }


def turn_wanted(*, room: Room, content: str) -> bool:
    """Whether a message in this room should get an AI answer."""
    if not room.ai_enabled:
        return False
    return room.ai_trigger == Room.AiTrigger.EVERY or bool(_MENTION.search(content))


def turn_queue_full(*, room: Room) -> bool:
    """Whether the room's queue holds as many waiting turns as the rate limit allows."""
    limit = settings.RATE_QUEUED_TURNS_PER_ROOM
    if limit <= 0:
        return False
    return Turn.objects.filter(room=room, status=Turn.Status.QUEUED).count() >= limit


@dataclass(frozen=True)
class TakenTurn:
    """A turn this worker now runs: every write it makes is fenced by `generation`."""

    turn_id: int
    room_id: int
    generation: int
    message_id: int
    trigger_message_id: int
    attempt: int
    next_index: int = 0  # > 0 when continuing an answer that already has chunks


_TURN_LOCK_CLASS = 0x43484154  # "CHAT": the namespace of our advisory locks


def _lock_room(room_id: int) -> None:
    """Serialise the turn transitions of one room (take, finish, requeue, recover, cancel,
    retry) until the transaction ends. An advisory lock, not the room row: posts to the room,
    which need the row for their seq, are not held up by a transition, which takes the row only
    with its last statement (`events_append_last`), for one round trip and the COMMIT."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, (%s %% 2147483647)::int)", [_TURN_LOCK_CLASS, room_id]
        )


# The take of a turn that starts a new answer, as one last statement: reserve two seqs, insert
# the (empty, streaming) assistant message with the first, link the turn to it, and write the
# `message` and `turn` events, completing their placeholders (see rooms.services).
_START_SQL = """
    WITH s AS (
        UPDATE rooms_room SET last_seq = last_seq + 2 WHERE id = %(room)s
        RETURNING last_seq - 1 AS seq
    ), m AS (
        INSERT INTO rooms_message
            (room_id, seq, role, author_id, content, status, client_id, created_at, updated_at)
        SELECT %(room)s, s.seq, 'assistant', NULL, '', 'streaming', NULL, %(now)s, %(now)s FROM s
        RETURNING id, seq
    ), t AS (
        UPDATE agents_turn SET assistant_message_id = m.id FROM m WHERE agents_turn.id = %(turn)s
        RETURNING agents_turn.id
    ), e AS (
        INSERT INTO rooms_roomevent (room_id, seq, type, frame, created_at)
        SELECT %(room)s, m.seq + f.i - 1, f.type,
               replace(replace(replace(replace(f.frame,
                   %(ph_event_seq)s, '"seq":' || (m.seq + f.i - 1)),
                   %(ph_message_seq)s, '"seq":' || m.seq),
                   %(ph_id)s, '"id":' || m.id),
                   %(ph_message_id)s, '"message_id":' || m.id),
               %(now)s
          FROM m, t, unnest(%(types)s::text[], %(frames)s::text[]) WITH ORDINALITY AS f(type, frame, i)
    )
    SELECT m.id, m.seq FROM m, t
"""


def _answer_start_last(*, turn: Turn, now: Any) -> int:
    """Create the turn's assistant message and its events (the transaction's last statement)."""
    draft = Message(
        pk=PH_MESSAGE_ID, room_id=turn.room_id, seq=PH_MESSAGE_SEQ, role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING, created_at=now,
    )  # fmt: skip
    turn.assistant_message_id = PH_MESSAGE_ID
    frames = [
        dumps({"type": "message", "seq": PH_EVENT_SEQ, "message": message_data(draft, turn_id=turn.pk)}),
        dumps({"type": "turn", "seq": PH_EVENT_SEQ, "turn": turn_data(turn)}),
    ]
    phs = {
        "ph_event_seq": placeholder("seq", PH_EVENT_SEQ),
        "ph_message_seq": placeholder("seq", PH_MESSAGE_SEQ),
        "ph_id": placeholder("id", PH_MESSAGE_ID),
        "ph_message_id": placeholder("message_id", PH_MESSAGE_ID),
    }
    params = {"room": turn.room_id, "turn": turn.pk, "now": now, "types": ["message", "turn"]}
    with connection.cursor() as cursor:
        cursor.execute(_START_SQL, params | phs | {"frames": frames})
        message_id, seq = cursor.fetchone()
    turn.assistant_message_id = message_id
    texts = []
    for i, frame in enumerate(frames):
        texts.append(frame_filled(frame, {
            phs["ph_event_seq"]: f'"seq":{seq + i}', phs["ph_message_seq"]: f'"seq":{seq}',
            phs["ph_id"]: f'"id":{message_id}', phs["ph_message_id"]: f'"message_id":{message_id}',
        }))  # fmt: skip
    broadcast.send_to_room_on_commit(
        turn.room_id, [broadcast.event_message(seq + i, text) for i, text in enumerate(texts)]
    )
    return int(message_id)


def turn_take_next(*, room_id: int, owner: str) -> TakenTurn | None:
    """Lease the room: start its oldest queued turn unless a turn is already running."""
    from agents.leases import turn_recover_locked

    with transaction.atomic():
        _lock_room(room_id)  # kicks of one room serialise here
        running = Turn.objects.filter(room_id=room_id, status=Turn.Status.RUNNING).first()
        if running is not None:
            if running.lease_until is not None and running.lease_until > timezone.now():
                return None  # the room is leased; its holder kicks again when done
            turn_recover_locked(turn=running, reason="lease expired")
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
        if turn.assistant_message_id is not None:  # continuing
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
            events_append_last(room_id=room_id, events=[("turn", {"turn": turn_data(turn)})])
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
        return str(cursor.fetchone()[0])


def turn_close_locked(*, turn: Turn, status: str, error: str = "") -> None:
    """Give a turn and its message a terminal status (the room's turns locked by the caller)."""
    turn.status = status
    turn.error = error[:2000]
    turn.lease_until = None
    turn.lease_owner = ""
    turn.finished_at = timezone.now()
    turn.save()
    events = []
    if turn.assistant_message_id:
        message = Message.objects.get(pk=turn.assistant_message_id)
        message.content = message_text_from_chunks(message.pk)
        message.status = _MESSAGE_STATUS[status]
        events.append(message_update_saved(message=message, turn_id=turn.pk))
    events.append(("turn", {"turn": turn_data(turn)}))
    events_append_last(room_id=turn.room_id, events=events)
    kick_room_on_commit(turn.room_id)


def turn_requeue_locked(*, turn: Turn, reason: str) -> None:
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
    events_append_last(room_id=turn.room_id, events=[("turn", {"turn": turn_data(turn)})])
    kick_room_on_commit(turn.room_id)


def _locked_own_turn(taken: TakenTurn) -> Turn | None:
    _lock_room(taken.room_id)
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
        turn_requeue_locked(turn=turn, reason=reason)
    return True


def turn_finish(*, taken: TakenTurn, status: str, error: str = "") -> bool:
    """End the turn this worker runs; False if it lost the lease (someone else finished it)."""
    with transaction.atomic():
        turn = _locked_own_turn(taken)
        if turn is None:
            log.warning("turn %s: lease lost before finish; not writing", taken.turn_id)
            return False
        turn_close_locked(turn=turn, status=status, error=error)
    return True


class CancelRefused(Exception):
    """The turn cannot be cancelled by this user; `code` is the wire error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def turn_cancel(*, room: Room, user: Any, turn_id: int) -> str:
    """Stop a running turn or withdraw a queued one; returns the turn's status after."""
    with transaction.atomic():
        _lock_room(room.pk)
        turn = (
            Turn.objects.select_for_update()
            .select_related("trigger_message")
            .filter(pk=turn_id, room=room)
            .first()
        )
        if turn is None:
            raise CancelRefused("not_found", f"no turn {turn_id} in this room")
        if turn.status == Turn.Status.QUEUED:
            if turn.trigger_message.author_id != user.pk and room.owner_id != user.pk:
                raise CancelRefused("forbidden", "only its author or the owner can withdraw it")
            # A turn queued again after its worker was lost already has a streaming message:
            # closing it keeps the text so far and ends the message as well.
            turn_close_locked(turn=turn, status=Turn.Status.CANCELLED)
        elif turn.status == Turn.Status.RUNNING and not turn.cancel_requested:
            # The runner sees the flag within one flush or heartbeat and closes the stream.
            turn.cancel_requested = True
            turn.save(update_fields=["cancel_requested"])
        return turn.status


def turn_retry(*, room: Room, user: Any, turn_id: int) -> str:
    """Continue an interrupted or failed answer (any member may ask; never after side effects)."""
    with transaction.atomic():
        _lock_room(room.pk)
        turn = Turn.objects.select_for_update().filter(pk=turn_id, room=room).first()
        if turn is None:
            raise CancelRefused("not_found", f"no turn {turn_id} in this room")
        if turn.status not in (Turn.Status.INTERRUPTED, Turn.Status.FAILED):
            raise CancelRefused(
                "conflict", f"turn {turn_id} is {turn.status}: only interrupted or failed turns retry"
            )
        if turn.side_effects_started:
            raise CancelRefused("forbidden", "this turn ran a tool with side effects: not re-run")
        events = []
        if turn.assistant_message_id:
            message = Message.objects.get(pk=turn.assistant_message_id)
            message.status = Message.Status.STREAMING
            events.append(message_update_saved(message=message, turn_id=turn.pk))
        turn.status = Turn.Status.QUEUED
        turn.attempt = 0
        turn.error = ""
        turn.finished_at = None
        turn.cancel_requested = False
        turn.save()
        events.append(("turn", {"turn": turn_data(turn)}))
        events_append_last(room_id=room.pk, events=events)
        kick_room_on_commit(room.pk)
        return turn.status
