"""Seed data, written straight into the tables but shaped exactly as the services write it.

A finished AI exchange in the services makes six room events in this order (rooms/services.py,
agents/turns.py): `message` (user), `turn` queued, `message` (assistant, empty, streaming),
`turn` running, `message_update` (assistant, complete), `turn` done. `history()` writes that log
(frames built with the project's own `message_wire`/`turn_wire` and frame models), plus the Message and
Turn rows, so replay and page renders see what a real room of that size holds.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.db import transaction
from django.utils import timezone

from agents.models import Turn
from agents.turns import turn_wire
from rooms.models import Membership, Message, Room, RoomEvent, StreamChunk
from rooms.protocol import MessageEvent, MessageUpdateEvent, TurnEvent
from rooms.selectors import message_wire
from rooms.services import room_create, token_create

User = get_user_model()

USER_TEXT = "Question {k}: how would you **batch** small writes to Postgres without losing any?"
ASSISTANT_TEXT = (
    "Answer {k}. Group the rows per flush and write them in one transaction:\n\n"
    "1. collect the tokens for about 30 ms,\n2. `INSERT` them as one chunk,\n"
    "3. `COMMIT`, then publish.\n\nThat keeps one round trip per flush instead of one per "
    "token, and a client that misses a frame asks for `sync` and gets it from the database. "
    "The *event log* is the source of truth; the channel layer is only a doorbell."
)


def users(n: int, prefix: str) -> list[tuple[Any, str]]:
    """n users with one API token each: [(user, raw token)]."""
    made = User.objects.bulk_create(
        [User(username=f"{prefix}-{i}", first_name=f"User {i}") for i in range(n)]
    )
    return [(u, token_create(user=u, name="bench")[1]) for u in made]


def room(owner: Any, title: str, members: list[Any] = (), **kw: Any) -> Room:
    r = room_create(owner=owner, title=title, **kw)
    Membership.objects.bulk_create(
        [Membership(room=r, user=u) for u in members if u.pk != owner.pk], ignore_conflicts=True
    )
    return r


_EVENTS: dict[str, Any] = {"message": MessageEvent, "message_update": MessageUpdateEvent, "turn": TurnEvent}


def _encode(kind: str, seq: int, body: dict[str, Any]) -> str:
    """A room event's frame, as the services store it."""
    return str(_EVENTS[kind](seq=seq, **body).encode())


def _turn_dict(turn: Turn, status: str, message_id: int | None, attempt: int) -> Any:
    shown = Turn(
        pk=turn.pk,
        status=status,
        trigger_message_id=turn.trigger_message_id,
        assistant_message_id=message_id,
        attempt=attempt,
        error="",
    )
    return turn_wire(shown)


def history(r: Room, author: Any, pairs: int) -> int:
    """`pairs` finished exchanges (2 messages, 6 events each) appended to room `r`; new last_seq."""
    base = r.last_seq
    now = timezone.now()
    msgs: list[Message] = []
    for k in range(pairs):
        s = base + 6 * k + 1
        msgs.append(
            Message(
                room=r,
                seq=s,
                role=Message.Role.USER,
                author=author,
                content=USER_TEXT.format(k=k),
                client_id=uuid.uuid4(),
            )
        )
        msgs.append(
            Message(room=r, seq=s + 2, role=Message.Role.ASSISTANT, content=ASSISTANT_TEXT.format(k=k))
        )
    with transaction.atomic():
        Message.objects.bulk_create(msgs, batch_size=1000)
        turns = [
            Turn(
                room=r,
                queue_seq=msgs[2 * k].seq,
                trigger_message=msgs[2 * k],
                assistant_message=msgs[2 * k + 1],
                status=Turn.Status.DONE,
                attempt=1,
                lease_generation=1,
                started_at=now,
                finished_at=now,
            )
            for k in range(pairs)
        ]
        Turn.objects.bulk_create(turns, batch_size=1000)
        events: list[RoomEvent] = []

        def ev(seq: int, kind: str, body: dict[str, Any]) -> None:
            events.append(RoomEvent(room=r, seq=seq, type=kind, frame=_encode(kind, seq, body)))

        for k in range(pairs):
            s = base + 6 * k + 1
            user_msg, ai_msg, turn = msgs[2 * k], msgs[2 * k + 1], turns[k]
            user_msg.author = author
            ev(s, "message", {"message": message_wire(user_msg)})
            ev(s + 1, "turn", {"turn": _turn_dict(turn, "queued", None, 0)})
            final = ai_msg.content
            ai_msg.content, ai_msg.status = "", Message.Status.STREAMING
            ev(s + 2, "message", {"message": message_wire(ai_msg, turn_id=turn.pk)})
            ev(s + 3, "turn", {"turn": _turn_dict(turn, "running", ai_msg.pk, 1)})
            ai_msg.content, ai_msg.status = final, Message.Status.COMPLETE
            ev(s + 4, "message_update", {"message": message_wire(ai_msg, turn_id=turn.pk)})
            ev(s + 5, "turn", {"turn": _turn_dict(turn, "done", ai_msg.pk, 1)})
        RoomEvent.objects.bulk_create(events, batch_size=2000)
        last = base + 6 * pairs
        Room.objects.filter(pk=r.pk).update(last_seq=last)
    r.last_seq = last
    return last


def streaming_message(r: Room, author: Any, chunks: int) -> int:
    """A room whose assistant answer is mid-stream with `chunks` persisted chunks (its turn is
    running under a lease nobody renews but that outlives the run, so no sweeper touches it).
    Returns the assistant message id."""
    base = r.last_seq
    now = timezone.now()
    with transaction.atomic():
        user_msg = Message.objects.create(
            room=r,
            seq=base + 1,
            role=Message.Role.USER,
            author=author,
            content="Write a very long answer",
            client_id=uuid.uuid4(),
        )
        ai_msg = Message.objects.create(
            room=r, seq=base + 3, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING
        )
        turn = Turn.objects.create(
            room=r,
            queue_seq=user_msg.seq,
            trigger_message=user_msg,
            assistant_message=ai_msg,
            status=Turn.Status.RUNNING,
            attempt=1,
            lease_generation=1,
            lease_owner="bench-seed",
            lease_until=now + timedelta(days=1),
            started_at=now,
        )
        frames = [
            ("message", {"message": message_wire(user_msg)}),
            ("turn", {"turn": _turn_dict(turn, "queued", None, 0)}),
            ("message", {"message": message_wire(ai_msg, turn_id=turn.pk)}),
            ("turn", {"turn": _turn_dict(turn, "running", ai_msg.pk, 1)}),
        ]
        RoomEvent.objects.bulk_create(
            [
                RoomEvent(
                    room=r,
                    seq=base + 1 + i,
                    type=kind,
                    frame=_encode(kind, base + 1 + i, body),
                )
                for i, (kind, body) in enumerate(frames)
            ]
        )
        StreamChunk.objects.bulk_create(
            [StreamChunk(message=ai_msg, index=i, text=f"tok{i:05d} ") for i in range(chunks)],
            batch_size=5000,
        )
        Room.objects.filter(pk=r.pk).update(last_seq=base + 4)
    r.last_seq = base + 4
    return ai_msg.pk


def session_cookie(user: Any) -> str:
    """A logged-in session for `user` (what the login view would create): the sessionid value."""
    s = SessionStore()
    s["_auth_user_id"] = str(user.pk)
    s["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    s["_auth_user_hash"] = user.get_session_auth_hash()
    s.create()
    return s.session_key
