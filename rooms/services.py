"""Writes: rooms, members, messages, tokens, and the room event log. Broadcast on commit."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.text import slugify

from rooms import broadcast, ratelimit
from rooms.events import NEXT_SEQ, Fill, Row, events_append_last, sentinel
from rooms.models import ApiToken, Membership, Message, Room, RoomNote
from rooms.protocol import MessageEvent, MessageUpdateEvent, NoteData, NoteEvent, RoomEvent
from rooms.selectors import SocketAccess, message_wire, socket_access, user_may_create
from rooms.standing import ModerationRefused, post_check
from rooms.turns import TurnQueue, turn_queue

User = get_user_model()


# --- rows written with their events (rooms.events) ----------------------------------------

NEW_MESSAGE_ID = sentinel(1)
NEW_MESSAGE_SEQ = sentinel(2)

_MESSAGE_INSERT = """
    INSERT INTO rooms_message
        (room_id, seq, role, author_id, content, status, client_id, created_at, updated_at)
    SELECT %(room)s, s.first, %(m_role)s, %(m_author)s, %(m_content)s, %(m_status)s,
           %(m_client_id)s, %(now)s, %(now)s
      FROM s
    RETURNING id, seq
"""


def message_row(*, role: str, author_id: int | None, content: str, status: str, client_id: Any) -> Row:
    """A new message as the first row of a change (its seq is the change's first), named `m`:
    frames carry it as NEW_MESSAGE_ID / NEW_MESSAGE_SEQ until the statement fills them in."""
    return Row(
        name="m",
        sql=_MESSAGE_INSERT,
        params={"m_role": role, "m_author": author_id, "m_content": content, "m_status": status,
                "m_client_id": client_id},
        fills=(Fill("id", NEW_MESSAGE_ID, "m.id"), Fill("seq", NEW_MESSAGE_SEQ, "m.seq")),
        returns=("m.id", "m.seq"),
    )  # fmt: skip


def message_draft(**fields: Any) -> Message:
    """An unsaved message standing for the one `message_row` writes (ids still sentinels)."""
    return Message(pk=NEW_MESSAGE_ID, seq=NEW_MESSAGE_SEQ, **fields)


# --- rooms and members ------------------------------------------------------------------------


def models_allowed() -> list[str]:
    """The models a room may name (besides "", the server's default LLM_MODEL)."""
    return [m for m in settings.LLM_MODELS if m and m != settings.LLM_MODEL]


def _checked_model(name: str) -> str:
    name = name.strip()
    if name and name != settings.LLM_MODEL and name not in models_allowed():
        raise ValueError(f"the model {name!r} is not offered on this server")
    return "" if name == settings.LLM_MODEL else name


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
    if not user_may_create(user=owner, what="rooms"):
        raise PermissionDenied("guests may not create rooms here; sign up first")
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
            ai_model=_checked_model(ai_model),
            ai_trigger=ai_trigger,
            **({"system_prompt": system_prompt} if system_prompt is not None else {}),
        )
        Membership.objects.create(room=room, user=owner, role=Membership.Role.OWNER)
    return room


def room_update(*, room: Room, **fields: Any) -> Room:
    """Change a room's settings (the owner's form); takes effect from the next turn."""
    if "ai_model" in fields:
        fields["ai_model"] = _checked_model(fields["ai_model"])
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


def room_enter(*, slug: str, user: Any) -> SocketAccess:
    """A connecting socket's room and access, joining a public room on the user's first visit."""
    found = socket_access(slug=slug, user_id=user.pk)
    if found.access == "can_join":  # once per user and room: the ORM's cost does not matter
        membership_join(room=Room.objects.get(pk=found.room_id), user=user)
        return SocketAccess(found.room_id, "member")
    return found


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


def message_post(
    *,
    room: Room,
    author: Any,
    client_id: uuid.UUID,
    content: str,
    client_tools: list[dict[str, Any]] | None = None,
) -> PostResult:
    """Store a user's message once per client_id, queue the turn it triggers, emit the events.
    Raises ratelimit.RateLimited past the author's message quota, RoomBusy past the room's queue,
    ModerationRefused in a locked room, for a viewer, a muted member or too soon in slow mode.

    The message and its events are one statement (the room row is locked from its UPDATE to
    the COMMIT right after), so concurrent posts to one room queue for one round trip each. A
    post that queues a turn first takes the room's turn lock and counts the queue in the same
    transaction, so the cap holds under concurrent posts. A resend (same client_id) is not
    looked up first: the insert's unique index refuses it, and the whole statement with it.
    """
    try:  # locked room, viewer, muted, slow mode (rooms.standing): nothing is stored
        post_check(room=room, user=author)
    except ModerationRefused:
        existing = _existing_post(room=room, author=author, client_id=client_id, content=content)
        if existing is not None:  # a resend of a message stored before still gets its ack
            return existing
        raise
    ratelimit.message_quota_spend(user_id=author.pk)
    queue = turn_queue()
    wants_turn = queue.wanted(room=room, content=content)
    # a post that queues a turn checks the room's queue and appends in one transaction
    with transaction.atomic() if wants_turn else contextlib.nullcontext():
        if wants_turn and queue.queue_full_locked(room=room):
            existing = _existing_post(room=room, author=author, client_id=client_id, content=content)
            if existing is not None:  # a resend of a stored message still gets its ack
                return existing
            raise RoomBusy("the assistant has too many questions waiting in this room; try again soon")
        return _post_append(
            room=room, author=author, client_id=client_id, content=content,
            client_tools=client_tools, wants_turn=wants_turn, queue=queue,
        )  # fmt: skip


def _post_append(
    *,
    room: Room,
    author: Any,
    client_id: uuid.UUID,
    content: str,
    client_tools: list[dict[str, Any]] | None,
    wants_turn: bool,
    queue: TurnQueue,
) -> PostResult:
    now = timezone.now()
    draft = message_draft(
        room=room, role=Message.Role.USER, author=author, content=content, client_id=client_id, created_at=now
    )
    rows: tuple[Row, ...] = (
        message_row(
            role=draft.role, author_id=author.pk, content=content, status=draft.status, client_id=client_id
        ),
    )
    events: list[RoomEvent] = [MessageEvent(seq=NEXT_SEQ, message=message_wire(draft))]
    if wants_turn:
        turn_row, turn_event = queue.queued_row(room=room, now=now, client_tools=client_tools or [])
        rows += (turn_row,)
        events.append(turn_event)
    try:
        # inside a caller's atomic block the statement gets a savepoint (and the broadcast and
        # the kick wait for the outer commit)
        savepoint = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
        with savepoint:
            stored = events_append_last(room_id=room.pk, events=events, rows=rows, now=now)
    except IntegrityError:
        # A resend, or a concurrent send with the same client_id that won: answer with its ack.
        existing = _existing_post(room=room, author=author, client_id=client_id, content=content)
        if existing is None:
            raise
        return existing
    if wants_turn:
        queue.posted_on_commit(room_id=room.pk)
    message_id, seq = stored.values[0], stored.values[1]
    return PostResult(message_id=int(message_id), seq=int(seq), created=True)


def message_update_saved(*, message: Message, turn_id: int | None = None) -> MessageUpdateEvent:
    """Save a message's content/status; its `message_update` event, for `events_append_last`."""
    message.save(update_fields=["content", "status", "updated_at"])
    return MessageUpdateEvent(seq=NEXT_SEQ, message=message_wire(message, turn_id=turn_id))


# --- notes ------------------------------------------------------------------------------------

NOTE_MAX_CHARS = 2000


def note_add(*, room_id: int, text: str, call_id: int | None = None) -> RoomNote:
    """Add a note to the room's notes panel (its own transaction) and emit its `note` event."""
    text = text.strip()[:NOTE_MAX_CHARS]
    if not text:
        raise ValueError("a note needs text")
    with transaction.atomic():
        note = RoomNote.objects.create(room_id=room_id, text=text, call_id=call_id)
        data = NoteData(id=note.pk, text=note.text, call_id=call_id, created_at=note.created_at.isoformat())
        events_append_last(room_id=room_id, events=[NoteEvent(seq=NEXT_SEQ, note=data)])
    return note


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
    if not user_may_create(user=user, what="tokens"):
        raise PermissionDenied("guests may not create API tokens here; sign up first")
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
                broadcast.user_group(user.pk), broadcast.revoked_message(token_id)
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
        broadcast.send_to_group_on_commit(broadcast.room_group(room.pk), broadcast.kick_message(user.pk))
    return membership


def member_unban(*, room: Room, user: Any) -> None:
    Membership.objects.filter(room=room, user=user).update(banned_at=None)
