"""Writes: rooms, members, messages, tokens, and the room event log. Broadcast on commit."""

from __future__ import annotations

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
from rooms.models import ApiToken, Membership, Message, Room, RoomEvent
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


def event_record(*, room_id: int, seq: int, type: str, body: dict[str, Any]) -> str:
    """Persist one room event and broadcast it once the transaction commits."""
    text = dumps({"type": type, "seq": seq, **body})
    RoomEvent.objects.create(room_id=room_id, seq=seq, type=type, frame=text)
    broadcast.send_to_room_on_commit(room_id, [broadcast.event_message(seq, text)])
    return text


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


def message_post(*, room: Room, author: Any, client_id: uuid.UUID, content: str) -> PostResult:
    """Store a user's message once per client_id, queue the AI turn it triggers, emit events."""
    from agents.queue import turn_enqueue_locked, turn_queue_full, turn_wanted  # not the runner

    existing = _existing_post(room=room, author=author, client_id=client_id, content=content)
    if existing is not None:
        return existing
    wants_turn = turn_wanted(room=room, content=content)
    if wants_turn and turn_queue_full(room=room):
        raise RoomBusy("the assistant has too many questions waiting in this room; try again soon")
    try:
        with transaction.atomic():
            seq = seq_reserve_locked(room_id=room.pk, count=2 if wants_turn else 1)
            message = Message.objects.create(
                room=room,
                seq=seq,
                role=Message.Role.USER,
                author=author,
                content=content,
                client_id=client_id,
            )
            event_record(room_id=room.pk, seq=seq, type="message", body={"message": message_data(message)})
            if wants_turn:
                turn_enqueue_locked(room=room, trigger=message, event_seq=seq + 1)
    except IntegrityError:
        # A concurrent send with the same client_id won the race: answer with its ack.
        existing = _existing_post(room=room, author=author, client_id=client_id, content=content)
        if existing is None:
            raise
        return existing
    return PostResult(message_id=message.pk, seq=seq, created=True)


def message_update_locked(*, message: Message, event_seq: int, turn_id: int | None = None) -> None:
    """Save a message's content/status and record a message_update event (room row locked)."""
    message.save(update_fields=["content", "status", "updated_at"])
    event_record(
        room_id=message.room_id,
        seq=event_seq,
        type="message_update",
        body={"message": message_data(message, turn_id=turn_id)},
    )


# --- people -----------------------------------------------------------------------------------


def guest_create(*, display_name: str) -> Any:
    """A guest account: a user with a display name and no password."""
    user = User(username=f"guest-{secrets.token_hex(5)}", first_name=display_name.strip()[:60])
    user.set_unusable_password()
    user.save()
    return user


def _token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_create(*, user: Any, name: str) -> tuple[ApiToken, str]:
    """Create an API token; the raw value is returned once and never stored."""
    raw = "rct_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name.strip()[:80] or "token", prefix=raw[:10], key_hash=_token_hash(raw)
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


def token_authenticate(*, raw: str) -> Any | None:
    """The active user a raw token belongs to, or None."""
    found = token_lookup(raw=raw)
    return found[0] if found else None


def token_lookup(*, raw: str) -> tuple[Any, int] | None:
    """(user, token id) of an active token, or None."""
    if not raw or len(raw) > 200:
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=_token_hash(raw), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.user, token.pk
