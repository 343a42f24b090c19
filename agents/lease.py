"""The lease primitives every turn write uses: the taken turn, its fence, the room's turn lock."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection


class LeaseLost(Exception):
    """This worker no longer owns the turn: it must not write anything more for it."""


@dataclass(frozen=True)
class LeaseState:
    cancel_requested: bool


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


def room_turns_lock(room_id: int) -> None:
    """Serialise the turn transitions of one room until the transaction ends (take, finish,
    park, a person's answer to a call...). An advisory lock, not the room row: posts to the
    room, which need the row for their seq, are not held up by a transition, which takes the
    row only with its last statement, for one round trip and the COMMIT."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, (%s %% 2147483647)::int)", [_TURN_LOCK_CLASS, room_id]
        )


def lease_fence_locked(taken: TakenTurn) -> None:
    """Hold the turn as this worker's until the transaction ends (FOR SHARE: recovery, which
    bumps the generation, waits); raises LeaseLost if it is no longer."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM agents_turn WHERE id = %s AND lease_generation = %s AND status = 'running' "
            "FOR SHARE",
            [taken.turn_id, taken.generation],
        )
        if cursor.fetchone() is None:
            raise LeaseLost(f"turn {taken.turn_id} generation {taken.generation}")
