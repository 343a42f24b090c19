"""The room's lease (its running turn): fenced renewals and chunk writes, and the sweeper."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from agents.kicks import kick_room_on_commit
from agents.models import Turn
from agents.queue import TakenTurn, _lock_room, turn_close_locked, turn_requeue_locked
from rooms import broadcast
from rooms.models import Room
from rooms.protocol import delta_frame

log = logging.getLogger(__name__)
T = TypeVar("T")


class LeaseLost(Exception):
    """This worker no longer owns the turn: it must not write anything more for it."""


@dataclass(frozen=True)
class LeaseState:
    cancel_requested: bool


_RENEW_SQL = """
    UPDATE agents_turn
       SET lease_until = now() + make_interval(secs => %s)
     WHERE id = %s AND lease_generation = %s AND status = 'running'
    RETURNING cancel_requested
"""


def _renew_locked(cursor: object, taken: TakenTurn) -> LeaseState:
    cursor.execute(_RENEW_SQL, [settings.LEASE_TIMEOUT, taken.turn_id, taken.generation])  # type: ignore[attr-defined]
    row = cursor.fetchone()  # type: ignore[attr-defined]
    if row is None:
        raise LeaseLost(f"turn {taken.turn_id} generation {taken.generation}")
    return LeaseState(cancel_requested=bool(row[0]))


def lease_renew(*, taken: TakenTurn) -> LeaseState:
    """Extend the lease (fenced by generation); raises LeaseLost if it was taken away."""
    with transaction.atomic(), connection.cursor() as cursor:
        return _renew_locked(cursor, taken)


@dataclass(frozen=True)
class ChunkRow:
    """One chunk to persist for a leased turn."""

    taken: TakenTurn
    index: int
    text: str


# One statement, so one round trip and its own transaction, for any number of chunks of any
# number of turns (group commit): the fenced renewals and the inserts commit together or not
# at all, and the UPDATE holds each turn row's lock until then, so a worker that lost its lease
# (paused, partitioned) can never add a chunk afterwards: rows of a turn whose (id, generation)
# is no longer running are not inserted. The insert is idempotent, so a write retried after a
# lost COMMIT reply cannot fail or duplicate.
_CHUNKS_SQL = """
    WITH input AS (
        SELECT (e->>0)::bigint AS turn_id, (e->>1)::bigint AS generation,
               (e->>2)::bigint AS message_id, (e->>3)::int AS index, e->>4 AS text
          FROM jsonb_array_elements(%s::jsonb) AS e
    ), lease AS (
        UPDATE agents_turn
           SET lease_until = now() + make_interval(secs => %s)
         WHERE status = 'running'
           AND (id, lease_generation) IN (SELECT DISTINCT turn_id, generation FROM input)
        RETURNING id, cancel_requested
    ), chunk AS (
        INSERT INTO rooms_streamchunk (message_id, index, text)
        SELECT input.message_id, input.index, input.text FROM input JOIN lease ON lease.id = input.turn_id
        ORDER BY input.message_id, input.index
        ON CONFLICT (message_id, index) DO NOTHING
    )
    SELECT id, cancel_requested FROM lease
"""


def chunks_write_unsent(rows: list[ChunkRow]) -> dict[int, LeaseState]:
    """Persist chunks of any turns in one fenced statement; the turns that still hold their lease,
    with their state. Nothing is broadcast: the caller sends the deltas of those turns."""
    # The rows travel as one JSON text: json.dumps is C; psycopg's array literals cost ~17 us of
    # Python per row (quoting every element), a third of the writer's time at 256 rows.
    data = json.dumps(
        [[r.taken.turn_id, r.taken.generation, r.taken.message_id, r.index, r.text] for r in rows],
        ensure_ascii=False,
    )
    params = [data, settings.LEASE_TIMEOUT]
    with connection.cursor() as cursor:  # autocommit: the statement is its transaction
        cursor.execute(_CHUNKS_SQL, params)
        held = cursor.fetchall()
    return {int(turn_id): LeaseState(cancel_requested=bool(cancel)) for turn_id, cancel in held}


def chunk_deltas(rows: list[ChunkRow]) -> list[tuple[int, dict[str, object]]]:
    """The `delta` broadcasts of written chunks, (room id, channel-layer message): one message
    per run of consecutive chunks of a message, each message's runs in order."""
    runs: dict[int, dict[str, Any]] = {}
    out: list[tuple[int, dict[str, object]]] = []
    for r in rows:
        mid = r.taken.message_id
        run = runs.get(mid)
        if run is None or run["index"] + len(run["texts"]) != r.index:
            run = runs[mid] = broadcast.delta_message(mid, r.index, [])
            out.append((r.taken.room_id, run))
        run["texts"].append(delta_frame(mid, r.index, r.text))
    return out


def chunk_write(*, taken: TakenTurn, index: int, text: str) -> LeaseState:
    """Persist one chunk and renew the lease in one fenced statement, then broadcast the delta."""
    rows = [ChunkRow(taken, index, text)]
    state = chunks_write_unsent(rows).get(taken.turn_id)
    if state is None:
        raise LeaseLost(f"turn {taken.turn_id} generation {taken.generation}")
    broadcast.send_many_sync(chunk_deltas(rows))
    return state


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


def turn_recover_locked(*, turn: Turn, reason: str) -> None:
    """A turn whose worker vanished: keep its persisted text, then continue it or end it.

    Per the room's policy the answer is continued in the same message (a new attempt) or
    marked `interrupted`; a turn whose tool had side effects is never re-run, and one that
    keeps failing ends `failed` once it used its attempts.
    """
    recovery = Room.objects.values_list("recovery", flat=True).get(pk=turn.room_id)
    turn.lease_generation += 1  # fence off the old holder for good
    if turn.side_effects_started or recovery == Room.Recovery.INTERRUPT:
        log.warning("turn %s of room %s interrupted: %s", turn.pk, turn.room_id, reason)
        turn_close_locked(turn=turn, status=Turn.Status.INTERRUPTED, error=reason)
    elif turn.attempt >= settings.MAX_TURN_ATTEMPTS:
        log.warning("turn %s of room %s failed after %s attempts", turn.pk, turn.room_id, turn.attempt)
        turn_close_locked(
            turn=turn, status=Turn.Status.FAILED, error=f"gave up after {turn.attempt} attempts: {reason}"
        )
    else:
        log.warning("turn %s of room %s will be continued: %s", turn.pk, turn.room_id, reason)
        turn_requeue_locked(turn=turn, reason=reason)


def turn_recover_if_expired(*, turn_id: int) -> bool:
    """Recover one turn if its lease has expired; True if it did."""
    with transaction.atomic():
        room_id = Turn.objects.filter(pk=turn_id).values_list("room_id", flat=True).first()
        if room_id is None:
            return False
        _lock_room(room_id)
        turn = (
            Turn.objects.select_for_update()
            .filter(pk=turn_id, status=Turn.Status.RUNNING, lease_until__lt=timezone.now())
            .first()
        )
        if turn is None:
            return False
        turn_recover_locked(turn=turn, reason="worker lost (lease expired)")
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
    idle = list(
        Turn.objects.filter(status=Turn.Status.QUEUED)
        .exclude(room__turns__status=Turn.Status.RUNNING)
        .order_by()  # Turn.Meta.ordering would add a column to the DISTINCT
        .values_list("room_id", flat=True)
        .distinct()[:1000]
    )
    with transaction.atomic():
        for room_id in idle:
            kick_room_on_commit(room_id)
    return SweepReport(recovered=recovered, kicked=len(idle))
