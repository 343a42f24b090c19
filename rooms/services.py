"""Writes: rooms, members, messages, tokens, and the room event log. Broadcast on commit."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.text import slugify

from rooms import broadcast
from rooms.models import ApiToken, Membership, Message, Room
from rooms.protocol import dumps
from rooms.selectors import message_data

User = get_user_model()


# --- the room event log -----------------------------------------------------------------------


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


# Placeholders for what only the database knows (ids, seqs): frames are encoded before the room
# row is locked and completed by the same statement that writes them. Each is a key and a
# value, `"id":-7000000001`, which cannot occur inside a JSON string (its quote would be escaped).
PH_MESSAGE_ID = -7_000_000_001
PH_MESSAGE_SEQ = -7_000_000_002
PH_TURN_ID = -7_000_000_003
PH_EVENT_SEQ = -7_000_000_004


def placeholder(key: str, value: int) -> str:
    """The text of `"key":value` as `dumps` writes it inside a frame."""
    return dumps({key: value})[1:-1]


def frame_filled(frame: str, values: dict[str, str]) -> str:
    """The frame with its placeholders replaced, exactly as the SQL `replace()` does."""
    for ph, value in values.items():
        frame = frame.replace(ph, value)
    return frame


# Reserve n seqs and write n events in one statement. The UPDATE locks the room row until the
# commit (which keeps events committed in seq order), so this is the LAST statement of the
# transaction that calls it: the row is held for one round trip and the COMMIT.
_EVENTS_SQL = """
    WITH s AS (
        UPDATE rooms_room SET last_seq = last_seq + %(n)s WHERE id = %(room)s
        RETURNING last_seq - %(n)s + 1 AS first
    ), e AS (
        INSERT INTO rooms_roomevent (room_id, seq, type, frame, created_at)
        SELECT %(room)s, s.first + f.i - 1, f.type,
               replace(f.frame, %(ph)s, '"seq":' || (s.first + f.i - 1)), %(now)s
          FROM s, unnest(%(types)s::text[], %(frames)s::text[]) WITH ORDINALITY AS f(type, frame, i)
    )
    SELECT first FROM s
"""


def events_append_last(*, room_id: int, events: list[tuple[str, dict[str, Any]]]) -> int:
    """Append events (type, body) to the room's log and broadcast them on commit; returns the
    first seq. Call it last in the transaction: from it to the commit the room row is locked."""
    frames = [dumps({"type": type_, "seq": PH_EVENT_SEQ, **body}) for type_, body in events]
    ph = placeholder("seq", PH_EVENT_SEQ)
    params: dict[str, Any] = {
        "n": len(frames), "room": room_id, "ph": ph, "now": timezone.now(),
        "types": [type_ for type_, _ in events], "frames": frames,
    }  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(_EVENTS_SQL, params)
        row = cursor.fetchone()
    if row is None:
        raise Room.DoesNotExist(room_id)
    first = int(row[0])
    texts = [frame.replace(ph, f'"seq":{first + i}') for i, frame in enumerate(frames)]
    broadcast.send_to_room_on_commit(
        room_id, [broadcast.event_message(first + i, text) for i, text in enumerate(texts)]
    )
    return first


# --- rooms and members ------------------------------------------------------------------------


def room_create(
    *,
    owner: Any,
    title: str,
    visibility: str = Room.Visibility.PUBLIC,
    ai_enabled: bool = True,
    ai_model: str = "",
    system_prompt: str | None = None,
    ai_trigger: str = Room.AiTrigger.EVERY,
) -> Room:
    """Create a room owned by `owner`, who becomes its first member."""
    base = slugify(title)[:40] or "room"
    with transaction.atomic():
        for _ in range(5):
            slug = f"{base}-{secrets.token_hex(3)}"
            if not Room.objects.filter(slug=slug).exists():
                break
        room = Room.objects.create(
            slug=slug,
            title=title.strip()[:120],
            owner=owner,
            visibility=visibility,
            ai_enabled=ai_enabled,
            ai_model=ai_model.strip(),
            ai_trigger=ai_trigger,
            **({"system_prompt": system_prompt} if system_prompt is not None else {}),
        )
        Membership.objects.create(room=room, user=owner, role=Membership.Role.OWNER)
    return room


def room_update(*, room: Room, **fields: Any) -> Room:
    """Change a room's settings (the owner's form); takes effect from the next turn."""
    for name, value in fields.items():
        setattr(room, name, value)
    room.save(update_fields=list(fields))
    return room


def profile_update(*, user: Any, display_name: str) -> None:
    """Set the name other people see (new messages carry it)."""
    user.first_name = display_name.strip()[:60]
    user.save(update_fields=["first_name"])


def membership_join(*, room: Room, user: Any) -> Membership:
    """Add a user to a room (idempotent)."""
    membership, _ = Membership.objects.get_or_create(room=room, user=user)
    return membership


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PostResult:
    message_id: int
    seq: int
    created: bool


class ClientIdConflict(Exception):
    """The client_id was already used by this author for a different message."""


class RoomBusy(Exception):
    """Too many turns are queued in the room (a rate limit)."""


def _existing_post(*, room: Room, author: Any, client_id: uuid.UUID, content: str) -> PostResult | None:
    found = (
        Message.objects.filter(room=room, author=author, client_id=client_id)
        .values_list("pk", "seq", "content")
        .first()
    )
    if found is None:
        return None
    if found[2] != content:
        raise ClientIdConflict(str(client_id))
    return PostResult(message_id=found[0], seq=found[1], created=False)


# One statement (one round trip, its own transaction): the room row is locked by the UPDATE
# and released at the implicit COMMIT right after, so concurrent posts to one room queue for
# one round trip each, not for five plus the Python between them.
_POST_SQL = """
    WITH s AS (
        UPDATE rooms_room SET last_seq = last_seq + %(count)s WHERE id = %(room)s
        RETURNING last_seq - %(count)s + 1 AS seq
    ), m AS (
        INSERT INTO rooms_message
            (room_id, seq, role, author_id, content, status, client_id, created_at, updated_at)
        SELECT %(room)s, s.seq, 'user', %(author)s, %(content)s, 'complete', %(client_id)s,
               %(now)s, %(now)s
          FROM s
        RETURNING id, seq
    ), e AS (
        INSERT INTO rooms_roomevent (room_id, seq, type, frame, created_at)
        SELECT %(room)s, m.seq, 'message',
               replace(replace(%(frame)s, %(ph_id)s, '"id":' || m.id), %(ph_seq)s, '"seq":' || m.seq),
               %(now)s
          FROM m
    ){turn_ctes}
    SELECT m.id, m.seq{turn_cols} FROM m{turn_from}
"""
_TURN_CTES = """, t AS (
        INSERT INTO agents_turn
            (room_id, queue_seq, trigger_message_id, status, attempt, cancel_requested,
             side_effects_started, lease_owner, lease_generation, error, created_at)
        SELECT %(room)s, m.seq, m.id, 'queued', 0, false, false, '', 0, '', %(now)s FROM m
        RETURNING id
    ), te AS (
        INSERT INTO rooms_roomevent (room_id, seq, type, frame, created_at)
        SELECT %(room)s, m.seq + 1, 'turn',
               replace(replace(replace(%(turn_frame)s,
                   %(ph_turn_id)s, '"id":' || t.id),
                   %(ph_trigger)s, '"trigger_message_id":' || m.id),
                   %(ph_turn_seq)s, '"seq":' || (m.seq + 1)),
               %(now)s
          FROM m, t
    )"""
_POST_MESSAGE_SQL = _POST_SQL.format(turn_ctes="", turn_cols="", turn_from="")
_POST_TURN_SQL = _POST_SQL.format(turn_ctes=_TURN_CTES, turn_cols=", t.id", turn_from=", t")


def message_post(*, room: Room, author: Any, client_id: uuid.UUID, content: str) -> PostResult:
    """Store a user's message once per client_id, queue the AI turn it triggers, emit events."""
    from agents.kicks import kick_room_on_commit  # not the runner
    from agents.models import Turn
    from agents.queue import turn_data, turn_queue_full, turn_wanted

    wants_turn = turn_wanted(room=room, content=content)
    if wants_turn and turn_queue_full(room=room):
        existing = _existing_post(room=room, author=author, client_id=client_id, content=content)
        if existing is not None:  # a resend of a stored message still gets its ack
            return existing
        raise RoomBusy("the assistant has too many questions waiting in this room; try again soon")
    # A resend (same client_id) is not looked up first: the insert's unique index refuses it,
    # and the whole statement with it, so the common case costs one round trip.
    now = timezone.now()
    draft = Message(
        pk=PH_MESSAGE_ID, room=room, seq=PH_MESSAGE_SEQ, role=Message.Role.USER, author=author,
        content=content, client_id=client_id, created_at=now,
    )  # fmt: skip
    frame = dumps({"type": "message", "seq": PH_MESSAGE_SEQ, "message": message_data(draft)})
    params: dict[str, Any] = {
        "count": 2 if wants_turn else 1, "room": room.pk, "author": author.pk, "content": content,
        "client_id": client_id, "now": now, "frame": frame,
        "ph_id": placeholder("id", PH_MESSAGE_ID), "ph_seq": placeholder("seq", PH_MESSAGE_SEQ),
    }  # fmt: skip
    if wants_turn:
        turn = Turn(pk=PH_TURN_ID, room=room, trigger_message_id=PH_MESSAGE_ID)
        params.update(
            turn_frame=dumps({"type": "turn", "seq": PH_EVENT_SEQ, "turn": turn_data(turn)}),
            ph_turn_id=placeholder("id", PH_TURN_ID),
            ph_trigger=placeholder("trigger_message_id", PH_MESSAGE_ID),
            ph_turn_seq=placeholder("seq", PH_EVENT_SEQ),
        )
    try:
        # autocommit: the statement is its own transaction (inside a caller's atomic block it
        # gets a savepoint, and the broadcast and kick wait for the outer commit)
        savepoint = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
        with savepoint, connection.cursor() as cursor:
            cursor.execute(_POST_TURN_SQL if wants_turn else _POST_MESSAGE_SQL, params)
            row = cursor.fetchone()
    except IntegrityError:
        # A resend, or a concurrent send with the same client_id that won: answer with its ack.
        existing = _existing_post(room=room, author=author, client_id=client_id, content=content)
        if existing is None:
            raise
        return existing
    if row is None:
        raise Room.DoesNotExist(room.pk)
    message_id, seq = row[0], row[1]
    done = {params["ph_id"]: f'"id":{message_id}', params["ph_seq"]: f'"seq":{seq}'}
    events = [broadcast.event_message(seq, frame_filled(frame, done))]
    if wants_turn:
        done = {
            params["ph_turn_id"]: f'"id":{row[2]}',
            params["ph_trigger"]: f'"trigger_message_id":{message_id}',
            params["ph_turn_seq"]: f'"seq":{seq + 1}',
        }
        events.append(broadcast.event_message(seq + 1, frame_filled(params["turn_frame"], done)))
        kick_room_on_commit(room.pk)
    broadcast.send_to_room_on_commit(room.pk, events)
    return PostResult(message_id=message_id, seq=seq, created=True)


def message_update_saved(*, message: Message, turn_id: int | None = None) -> tuple[str, dict[str, Any]]:
    """Save a message's content/status; its `message_update` event, for `events_append_last`."""
    message.save(update_fields=["content", "status", "updated_at"])
    return "message_update", {"message": message_data(message, turn_id=turn_id)}


# --- people -----------------------------------------------------------------------------------


def guest_create(*, display_name: str) -> Any:
    """A guest account: a user with a display name and no password."""
    user = User(username=f"guest-{secrets.token_hex(5)}", first_name=display_name.strip()[:60])
    user.set_unusable_password()
    user.save()
    return user


def token_hash(raw: str) -> str:
    """What is stored of a token (and looked up by): its SHA-256."""
    return hashlib.sha256(raw.encode()).hexdigest()


def token_create(*, user: Any, name: str) -> tuple[ApiToken, str]:
    """Create an API token; the raw value is returned once and never stored."""
    raw = "rct_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name.strip()[:80] or "token", prefix=raw[:10], key_hash=token_hash(raw)
    )
    return token, raw


def token_revoke(*, user: Any, token_id: int) -> bool:
    """Revoke one of the user's tokens and close the sockets it opened; True if it was active."""
    with transaction.atomic():
        revoked = bool(
            ApiToken.objects.filter(pk=token_id, user=user, revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            )
        )
        if revoked:
            broadcast.send_to_group_on_commit(
                broadcast.user_group(user.pk), {"type": "user.revoked", "token_id": token_id}
            )
    return revoked


def member_ban(*, room: Room, user: Any) -> Membership:
    """Ban a user from a room: no more access, and their open sockets are closed."""
    with transaction.atomic():
        membership, _ = Membership.objects.get_or_create(room=room, user=user)
        if membership.role == Membership.Role.OWNER:
            raise ValueError("the owner cannot be banned from their room")
        membership.banned_at = timezone.now()
        membership.save(update_fields=["banned_at"])
        broadcast.send_to_group_on_commit(
            broadcast.room_group(room.pk), {"type": "room.kick", "user_id": user.pk}
        )
    return membership


def member_unban(*, room: Room, user: Any) -> None:
    Membership.objects.filter(room=room, user=user).update(banned_at=None)
