"""Who may do what in a room now: the rules every write path checks, and a socket's standing.

The services call these (rooms.services.message_post, agents.turns' cancel, retry and tool
answers), never the consumer alone, so the socket, the page's forms and any other ingress get the
same refusals. A socket's standing (banned, kicked, removed, deactivated, token revoked) is read
again on every write frame, `sync`, catch-up and heartbeat (rooms/consumers.py), so it holds even
when the broadcast that should have closed the socket was lost.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from rooms.models import Membership, Message, Room
from rooms.protocol import CLOSE_FORBIDDEN, CLOSE_KICKED, CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from rooms.turns import TurnRefused

MODERATING_ROLES = (Membership.Role.OWNER, Membership.Role.MODERATOR)


class ModerationRefused(TurnRefused):
    """A write the room's moderation refuses: `code` is the wire error code (docs/protocol.md)."""

    def __init__(self, code: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(code, detail)
        self.retry_after = retry_after


def membership_active(*, room_id: int, user_id: int) -> Membership | None:
    """The user's membership of the room, unless banned."""
    return Membership.objects.filter(room_id=room_id, user_id=user_id, banned_at__isnull=True).first()


def is_moderator(membership: Membership | None) -> bool:
    return membership is not None and membership.role in MODERATING_ROLES


def post_check(*, room: Room, user: Any) -> None:
    """Refuse a post in a locked room, by a viewer, a muted member, or too soon in slow mode."""
    membership = membership_active(room_id=room.pk, user_id=user.pk)
    if membership is None:
        raise ModerationRefused("forbidden", "you are not a member of this room")
    if is_moderator(membership):
        return  # owners and moderators may speak in a locked or slow room
    if room.locked_at is not None:
        raise ModerationRefused("locked", "this room is locked by a moderator: it is read-only")
    if membership.role == Membership.Role.VIEWER:
        raise ModerationRefused("read_only", "you can read this room but not post in it")
    if membership.muted_at is not None:
        raise ModerationRefused("muted", "a moderator muted you in this room")
    if room.slow_mode_seconds:
        last = (
            Message.objects.filter(room=room, author_id=user.pk)
            .order_by("-seq")
            .values_list("created_at", flat=True)
            .first()
        )
        if last is not None:
            wait = (last + timedelta(seconds=room.slow_mode_seconds) - timezone.now()).total_seconds()
            if wait > 0:
                raise ModerationRefused(
                    "slow_mode", f"slow mode: one message per {room.slow_mode_seconds} s", retry_after=wait
                )


def turn_action_check(*, room: Room, user: Any, author_id: int | None, retry: bool = False) -> None:
    """A member stops or retries their own turn; owners and moderators any turn. A locked room
    refuses retries (stopping stays allowed)."""
    membership = membership_active(room_id=room.pk, user_id=user.pk)
    if membership is None:
        raise ModerationRefused("forbidden", "you are not a member of this room")
    moderator = is_moderator(membership)
    if retry and room.locked_at is not None and not moderator:
        raise ModerationRefused("locked", "this room is locked by a moderator: it is read-only")
    if not moderator and (author_id != user.pk or membership.role == Membership.Role.VIEWER):
        raise ModerationRefused("forbidden", "only its author or the room's owner or moderators may do that")


def tool_answer_check(*, room: Room, user: Any) -> None:
    """Tool approvals and client tool answers: refused in a locked room and to viewers."""
    membership = membership_active(room_id=room.pk, user_id=user.pk)
    if membership is None:
        raise ModerationRefused("forbidden", "you are not a member of this room")
    if is_moderator(membership):
        return
    if Room.objects.filter(pk=room.pk, locked_at__isnull=False).exists():
        raise ModerationRefused("locked", "this room is locked by a moderator: it is read-only")
    if membership.role == Membership.Role.VIEWER:
        raise ModerationRefused("read_only", "you can read this room but not act in it")


# --- a socket's standing --------------------------------------------------------------------


@dataclass(frozen=True)
class SocketId:
    """Who a live socket is: checked again against the database while it lives."""

    room_id: int
    user_id: int
    token_id: int | None
    admitted_at: datetime


@functools.cache
def _standing_sql() -> str:
    users = connection.ops.quote_name(get_user_model()._meta.db_table)
    # one row per socket: its close code (0: it may stay) and the room's newest seq
    return f"""
        SELECT s.i, CASE
                 WHEN u.id IS NULL OR NOT u.is_active THEN {CLOSE_UNAUTHENTICATED}
                 WHEN s.token_id IS NOT NULL AND (t.id IS NULL OR t.revoked_at IS NOT NULL)
                      THEN {CLOSE_UNAUTHENTICATED}
                 WHEN r.id IS NULL THEN {CLOSE_NOT_FOUND}
                 WHEN m.id IS NULL OR m.banned_at IS NOT NULL THEN {CLOSE_FORBIDDEN}
                 WHEN m.kicked_at IS NOT NULL AND m.kicked_at > s.admitted_at THEN {CLOSE_KICKED}
                 ELSE 0 END,
               COALESCE(r.last_seq, 0)
          FROM unnest(%(rooms)s::bigint[], %(users)s::bigint[], %(tokens)s::bigint[],
                      %(admitted)s::timestamptz[]) WITH ORDINALITY
               AS s(room_id, user_id, token_id, admitted_at, i)
          LEFT JOIN {users} u ON u.id = s.user_id
          LEFT JOIN rooms_apitoken t ON t.id = s.token_id
          LEFT JOIN rooms_room r ON r.id = s.room_id
          LEFT JOIN rooms_membership m ON m.room_id = s.room_id AND m.user_id = s.user_id
         ORDER BY s.i
    """


def sockets_standing(*, sockets: list[SocketId]) -> list[tuple[int, int]]:
    """(close code or 0, the room's latest seq) for each socket: one statement for them all."""
    if not sockets:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            _standing_sql(),
            {
                "rooms": [s.room_id for s in sockets],
                "users": [s.user_id for s in sockets],
                "tokens": [s.token_id for s in sockets],
                "admitted": [s.admitted_at for s in sockets],
            },
        )
        return [(int(code), int(seq)) for _i, code, seq in cursor.fetchall()]


def socket_standing(*, socket: SocketId) -> tuple[int, int]:
    """(close code or 0, the room's latest seq) for one socket."""
    return sockets_standing(sockets=[socket])[0]
