"""The room event log: one function appends a change's events, and the rows it writes with them.

Every write that other members must see (a post, a turn's transition, moderation) ends with
`events_append_last`: ONE statement reserves the room's next seqs, inserts the change's rows (a
message, a turn), inserts the events and returns them as stored. Values only the database
knows (a new row's id, a seq) are written into the frames by that statement: a frame is
encoded once, with a sentinel in their place (`"id":-7000000001`, which cannot occur inside a
JSON string, whose quote would be escaped), and the statement's `replace()` puts the value in.
The returned text is what is broadcast on commit, so what is sent is what is stored.

The statement takes the room row's lock (the seq counter) and holds it until the commit, which
keeps events committed in seq order: it is the LAST statement of its transaction, so the row is
held for one round trip and the COMMIT (the post is one statement in all: docs/performance.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.utils import timezone

from rooms import broadcast
from rooms.models import Room
from rooms.protocol import RoomEvent
from rooms.webhooks.outbound import events_appended_on_commit

NEXT_SEQ = -7_000_000_000
"""An event's `seq` before it is appended: the statement gives each event the next seq."""


def sentinel(n: int) -> int:
    """The n-th stand-in for a value the statement fills in (n >= 1; each kind of value its own)."""
    return NEXT_SEQ - n


@dataclass(frozen=True)
class Fill:
    """In every frame, `"key":value` becomes `"key":` followed by the SQL expression `expr`."""

    key: str
    value: int
    expr: str


@dataclass(frozen=True)
class Row:
    """A row written by the same statement as the events, as a data-modifying CTE named `name`.

    `sql` may read the first reserved seq as `s.first` and the columns of earlier rows; its
    parameters (`params`, named `%(...)s`) must not clash with another row's. `fills` complete
    the frames from its RETURNING columns; `returns` are handed back to the caller.
    """

    name: str
    sql: str
    params: dict[str, Any] = field(default_factory=dict)
    fills: tuple[Fill, ...] = ()
    returns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Appended:
    """What a change stored: its events as (seq, frame text), and its rows' `returns`."""

    frames: list[tuple[int, str]]
    values: tuple[Any, ...]


def _seq_fill() -> Fill:
    return Fill("seq", NEXT_SEQ, "s.first + f.i - 1")


@functools.lru_cache(maxsize=64)
def _statement(rows: tuple[tuple[str, str, tuple[Fill, ...], tuple[str, ...]], ...]) -> str:
    ctes = "".join(f", {name} AS ({sql})" for name, sql, _, _ in rows)
    fills = (_seq_fill(),) + tuple(f for _, _, row_fills, _ in rows for f in row_fills)
    frame = "f.frame"
    for i, _fill in enumerate(fills):
        frame = f"replace({frame}, %(ph{i})s, %(key{i})s || ({fills[i].expr}))"
    sources = "".join(f", {name}" for name, _, _, _ in rows)
    returns = "".join(f", {expr}" for _, _, _, row_returns in rows for expr in row_returns)
    return f"""
        WITH s AS (
            UPDATE rooms_room SET last_seq = last_seq + %(n)s WHERE id = %(room)s
            RETURNING last_seq - %(n)s + 1 AS first
        ){ctes}, e AS (
            INSERT INTO rooms_roomevent (room_id, seq, type, frame, created_at)
            SELECT %(room)s, s.first + f.i - 1, f.type, {frame}, %(now)s
              FROM s{sources}, unnest(%(types)s::text[], %(frames)s::text[])
                   WITH ORDINALITY AS f(type, frame, i)
            RETURNING seq, frame
        )
        SELECT e.seq, e.frame{returns} FROM e{sources} ORDER BY e.seq
    """


def _placeholder(key: str, value: int) -> str:
    return f'"{key}":{value}'  # as pydantic writes the pair inside a frame


def events_append_last(
    *, room_id: int, events: list[RoomEvent], rows: tuple[Row, ...] = (), now: Any = None
) -> Appended:
    """Append `events` (their `seq` set to NEXT_SEQ) with `rows`, and broadcast them on commit.

    One statement; call it last in the transaction (the room row stays locked until the
    commit). Raises Room.DoesNotExist for a room that is gone, IntegrityError if a row is refused.
    """
    fills = (_seq_fill(),) + tuple(f for row in rows for f in row.fills)
    params: dict[str, Any] = {
        "n": len(events), "room": room_id, "now": now or timezone.now(),
        "types": [event.type for event in events], "frames": [event.encode() for event in events],
    }  # fmt: skip
    for i, fill in enumerate(fills):
        params[f"ph{i}"] = _placeholder(fill.key, fill.value)
        params[f"key{i}"] = f'"{fill.key}":'
    for row in rows:
        params.update(row.params)
    sql = _statement(tuple((r.name, r.sql, r.fills, r.returns) for r in rows))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        stored = cursor.fetchall()
    if not stored:
        raise Room.DoesNotExist(room_id)
    frames = [(int(r[0]), str(r[1])) for r in stored]
    broadcast.send_to_room_on_commit(room_id, [broadcast.event_message(seq, text) for seq, text in frames])
    events_appended_on_commit(room_id)  # webhooks out
    return Appended(frames=frames, values=tuple(stored[0][2:]))


def seq_reserve_locked(*, room_id: int, count: int) -> int:
    """Take `count` seqs for a room and return the first; the room row stays locked until commit."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE rooms_room SET last_seq = last_seq + %s WHERE id = %s RETURNING last_seq",
            [count, room_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise Room.DoesNotExist(room_id)
    return int(row[0]) - count + 1
