"""Moderation: the one service every moderation action goes through, and its audit log.

The admin (its actions and forms), the room page and the room socket (`moderate` frames) and
commands all call `moderation_apply`. It checks who may act, changes the rows, writes one
`ModerationAction` (who, what, target, before/after, reason, when, from where) and, where the
room must see it, the room events, all in one transaction: the events are broadcast on commit
and closing frames (kick, ban, deactivation, revocation) ring the sockets' doorbell; the sockets
also re-read their standing (rooms.standing), so a lost broadcast does not leave one open.

Hiding or deleting a message redacts its text everywhere it is stored for clients: the stored
event frames of its `message` / `message_update` events (what replay sends) lose `content` and
`html`; a delete also drops its stream chunks and its content column, and blanks the input and
output in the stored events of the answer's tool calls (the agents' own ToolCall rows are left to
their retention). Unhide restores the
content from the row (a hidden message keeps it; a deleted one does not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from rooms import broadcast
from rooms.events import NEXT_SEQ, events_append_last
from rooms.models import (
    ApiToken,
    Membership,
    Message,
    MessageReport,
    ModerationAction,
    Room,
    StreamChunk,
    _invite_token,
)
from rooms.protocol import (
    CLOSE_FORBIDDEN,
    CLOSE_KICKED,
    CLOSE_UNAUTHENTICATED,
    MemberData,
    MemberUpdateEvent,
    MessageUpdateEvent,
    RoomEvent,
    RoomStateData,
    RoomUpdateEvent,
    UserRef,
)
from rooms.redaction import call_frames_redact, message_frames_redact
from rooms.selectors import display_name, message_wire
from rooms.standing import ModerationRefused, is_moderator, membership_active
from rooms.turns import turn_queue

User = get_user_model()

SOURCES = ("admin", "room", "socket", "command")
MESSAGE_ACTIONS = ("hide", "unhide", "delete")
ROOM_ACTIONS = ("lock", "unlock", "stop", "clear_queue", "slow_mode", "rotate_invite")
MEMBER_ACTIONS = ("mute", "unmute", "kick", "ban", "unban", "role", "remove")
SITE_ACTIONS = ("deactivate", "reactivate", "revoke_token")
REPORT_ACTIONS = ("resolve",)
ACTIONS = MESSAGE_ACTIONS + ROOM_ACTIONS + MEMBER_ACTIONS + SITE_ACTIONS + REPORT_ACTIONS


@dataclass
class _Change:
    """What one action did, for its audit row and the room."""

    room_id: int | None
    target_type: str
    target_id: int
    target_repr: str
    before: dict[str, Any]
    after: dict[str, Any]
    events: list[RoomEvent] = field(default_factory=list)


@dataclass(frozen=True)
class _Request:
    actor: Any
    room: Room | None
    message_id: int | None
    user_id: int | None
    token_id: int | None
    report_id: int | None
    seconds: int | None
    role: str | None
    stop_turns: bool


def moderation_apply(
    *,
    actor: Any,
    action: str,
    source: str,
    reason: str = "",
    room: Room | None = None,
    message_id: int | None = None,
    user_id: int | None = None,
    token_id: int | None = None,
    report_id: int | None = None,
    seconds: int | None = None,
    role: str | None = None,
    stop_turns: bool = False,
) -> ModerationAction:
    """Apply one moderation action and audit it; raises ModerationRefused (nothing changes)."""
    if action not in ACTIONS:
        raise ModerationRefused("invalid", f"unknown moderation action {action!r}")
    if source not in SOURCES:
        raise ModerationRefused("invalid", f"unknown source {source!r}")
    request = _Request(actor, room, message_id, user_id, token_id, report_id, seconds, role, stop_turns)
    with transaction.atomic():
        change = _HANDLERS[action](request)
        record = ModerationAction.objects.create(
            actor=actor if getattr(actor, "pk", None) else None,
            action=action,
            room_id=change.room_id,
            target_type=change.target_type,
            target_id=change.target_id,
            target_repr=change.target_repr[:200],
            before=change.before,
            after=change.after,
            reason=reason.strip()[:500],
            source=source,
        )
        if change.events:
            assert change.room_id is not None
            events_append_last(room_id=change.room_id, events=change.events)
    return record


# --- who may act ------------------------------------------------------------------------------


def _is_staff(actor: Any) -> bool:
    return bool(getattr(actor, "is_active", False) and getattr(actor, "is_staff", False))


def _require_room_moderator(actor: Any, room: Room) -> Membership | None:
    """Staff anywhere; otherwise the room's owner or a moderator. The actor's membership."""
    membership = membership_active(room_id=room.pk, user_id=actor.pk) if actor.pk else None
    if _is_staff(actor) or is_moderator(membership):
        return membership
    raise ModerationRefused("forbidden", "only the room's owner or moderators (or staff) may do that")


def _require_over(actor: Any, room: Room, target: Membership) -> None:
    """Moderators act on members and viewers; the owner and staff on moderators; no one on the
    owner."""
    if target.role == Membership.Role.OWNER:
        raise ModerationRefused("forbidden", "the room's owner cannot be moderated in their room")
    if target.role == Membership.Role.MODERATOR and not (_is_staff(actor) or room.owner_id == actor.pk):
        raise ModerationRefused("forbidden", "only the owner (or staff) moderates a moderator")


def _needed(value: int | None, what: str) -> int:
    if value is None:
        raise ModerationRefused("invalid", f"this action needs {what}")
    return value


def _room_of(request: _Request) -> Room:
    if request.room is None:
        raise ModerationRefused("invalid", "this action needs a room")
    return Room.objects.select_for_update().get(pk=request.room.pk)


# --- messages ---------------------------------------------------------------------------------


def _message_of(request: _Request) -> Message:
    if request.message_id is None:
        raise ModerationRefused("invalid", "this action needs a message")
    message = (
        Message.objects.select_for_update(of=("self",))
        .select_related("author")
        .filter(pk=request.message_id)
        .first()
    )
    if message is None or (request.room is not None and message.room_id != request.room.pk):
        raise ModerationRefused("not_found", f"no message {request.message_id} in this room")
    _require_room_moderator(request.actor, message.room)
    if message.status == Message.Status.STREAMING:
        raise ModerationRefused("conflict", "this answer is still being written: stop the turn first")
    return message


def _message_repr(message: Message) -> str:
    return f"message {message.pk} (#{message.seq} in room {message.room_id})"


def _update_event(message: Message) -> MessageUpdateEvent:
    answers, _ = turn_queue().transcript_turns(message_ids=[message.pk])
    return MessageUpdateEvent(seq=NEXT_SEQ, message=message_wire(message, turn_id=answers.get(message.pk)))


def _hide(request: _Request) -> _Change:
    message = _message_of(request)
    if message.status in (Message.Status.HIDDEN, Message.Status.DELETED):
        raise ModerationRefused("conflict", f"message {message.pk} is already {message.status}")
    before = {"status": message.status}
    message.status_before_hidden, message.status = message.status, Message.Status.HIDDEN
    message.save(update_fields=["status", "status_before_hidden", "updated_at"])
    message_frames_redact(room_id=message.room_id, message_id=message.pk)
    reports_resolve_for(actor=request.actor, message_id=message.pk, resolution="hidden")
    return _Change(message.room_id, "message", message.pk, _message_repr(message), before,
                   {"status": message.status}, [_update_event(message)])  # fmt: skip


def _unhide(request: _Request) -> _Change:
    message = _message_of(request)
    if message.status != Message.Status.HIDDEN:
        raise ModerationRefused("conflict", f"message {message.pk} is not hidden")
    message.status = message.status_before_hidden or Message.Status.COMPLETE
    message.status_before_hidden = ""
    message.save(update_fields=["status", "status_before_hidden", "updated_at"])
    return _Change(message.room_id, "message", message.pk, _message_repr(message), {"status": "hidden"},
                   {"status": message.status}, [_update_event(message)])  # fmt: skip


def _delete(request: _Request) -> _Change:
    message = _message_of(request)
    if message.status == Message.Status.DELETED:
        raise ModerationRefused("conflict", f"message {message.pk} is already deleted")
    before = {"status": message.status, "chars": len(message.content)}
    message.content = ""
    message.status = Message.Status.DELETED
    message.status_before_hidden = ""
    message.save(update_fields=["content", "status", "status_before_hidden", "updated_at"])
    chunks, _ = StreamChunk.objects.filter(message=message).delete()
    message_frames_redact(room_id=message.room_id, message_id=message.pk)
    call_frames_redact(room_id=message.room_id, message_id=message.pk)
    reports_resolve_for(actor=request.actor, message_id=message.pk, resolution="deleted")
    after = {"status": message.status, "chunks_deleted": chunks}
    return _Change(message.room_id, "message", message.pk, _message_repr(message), before, after,
                   [_update_event(message)])  # fmt: skip


# --- rooms ------------------------------------------------------------------------------------


def room_state(room: Room) -> dict[str, Any]:
    return {"locked": room.locked_at is not None, "slow_mode_seconds": room.slow_mode_seconds}


def _room_event(room: Room) -> RoomUpdateEvent:
    return RoomUpdateEvent(seq=NEXT_SEQ, room=RoomStateData(**room_state(room)))


def _set_lock(request: _Request, locked: bool) -> _Change:
    room = _room_of(request)
    _require_room_moderator(request.actor, room)
    before = room_state(room)
    if (room.locked_at is not None) == locked:
        raise ModerationRefused("conflict", f"the room is already {'locked' if locked else 'unlocked'}")
    room.locked_at = timezone.now() if locked else None
    room.save(update_fields=["locked_at"])
    after = room_state(room)
    if locked and request.stop_turns:
        after["turns_stopped"] = turn_queue().moderator_stop(room=room)
        after["turns_withdrawn"] = turn_queue().moderator_clear(room=room)
    return _Change(room.pk, "room", room.pk, str(room), before, after, [_room_event(room)])


def _stop(request: _Request) -> _Change:
    room = _room_of(request)
    _require_room_moderator(request.actor, room)
    stopped = turn_queue().moderator_stop(room=room)
    return _Change(room.pk, "room", room.pk, str(room), {}, {"turns_stopped": stopped})


def _clear_queue(request: _Request) -> _Change:
    room = _room_of(request)
    _require_room_moderator(request.actor, room)
    withdrawn = turn_queue().moderator_clear(room=room)
    return _Change(room.pk, "room", room.pk, str(room), {}, {"turns_withdrawn": withdrawn})


def _slow_mode(request: _Request) -> _Change:
    room = _room_of(request)
    _require_room_moderator(request.actor, room)
    seconds = request.seconds
    if seconds is None or not 0 <= seconds <= 86400:
        raise ModerationRefused("invalid", "slow mode needs seconds between 0 (off) and 86400")
    before = room_state(room)
    room.slow_mode_seconds = seconds
    room.save(update_fields=["slow_mode_seconds"])
    return _Change(room.pk, "room", room.pk, str(room), before, room_state(room), [_room_event(room)])


def _rotate_invite(request: _Request) -> _Change:
    room = _room_of(request)
    _require_room_moderator(request.actor, room)
    room.invite_token = _invite_token()
    room.save(update_fields=["invite_token"])
    # the tokens themselves are secrets: the audit says only that the link changed
    return _Change(room.pk, "room", room.pk, str(room), {}, {"invite": "rotated"})


# --- members ----------------------------------------------------------------------------------


def member_state(membership: Membership) -> dict[str, Any]:
    return {"role": membership.role, "muted": membership.muted_at is not None,
            "banned": membership.banned_at is not None}  # fmt: skip


def _member_event(membership: Membership) -> MemberUpdateEvent:
    user = membership.user
    return MemberUpdateEvent(
        seq=NEXT_SEQ,
        member=MemberData(user=UserRef(id=user.pk, name=display_name(user)), **member_state(membership)),
    )


def _member_change(request: _Request, apply: Callable[[Membership, Room], bool]) -> _Change:
    """Load the target's membership (made for a ban of a non-member), check, apply, describe.
    `apply` returns whether the room should see a `member_update`."""
    room = _room_of(request)
    _require_room_moderator(request.actor, room)
    if request.user_id is None:
        raise ModerationRefused("invalid", "this action needs a person")
    target_user = User.objects.filter(pk=request.user_id).first()
    if target_user is None:
        raise ModerationRefused("not_found", f"no user {request.user_id}")
    membership = Membership.objects.select_for_update().filter(room=room, user=target_user).first()
    if membership is None:
        membership = Membership(room=room, user=target_user)
    _require_over(request.actor, room, membership)
    before = member_state(membership)
    visible = apply(membership, room)
    membership.save()
    repr_ = f"{display_name(target_user)} in {room.slug}"
    events: list[RoomEvent] = [_member_event(membership)] if visible else []
    return _Change(room.pk, "member", target_user.pk, repr_, before, member_state(membership), events)


def _close_member_sockets_on_commit(room_id: int, user_id: int, code: int) -> None:
    broadcast.send_to_group_on_commit(broadcast.room_group(room_id), broadcast.kick_message(user_id, code))


def _require_member(m: Membership) -> None:
    if m.pk is None or m.banned_at is not None:
        raise ModerationRefused("not_found", "that person is not a member of this room")


def _mute(request: _Request, muted: bool) -> _Change:
    def apply(m: Membership, room: Room) -> bool:
        _require_member(m)  # a mute never makes someone a member
        m.muted_at = timezone.now() if muted else None
        return True

    return _member_change(request, apply)


def _kick(request: _Request) -> _Change:
    def apply(m: Membership, room: Room) -> bool:
        _require_member(m)
        m.kicked_at = timezone.now()
        _close_member_sockets_on_commit(room.pk, m.user_id, CLOSE_KICKED)
        return False

    return _member_change(request, apply)


def _ban(request: _Request, banned: bool) -> _Change:
    def apply(m: Membership, room: Room) -> bool:
        if not banned and m.pk is None:
            raise ModerationRefused("not_found", "that person is not banned from this room")
        # a ban of a non-member keeps a row, so a public room cannot be joined again
        m.banned_at = timezone.now() if banned else None
        if banned:
            _close_member_sockets_on_commit(room.pk, m.user_id, CLOSE_FORBIDDEN)
        return True

    return _member_change(request, apply)


def _role(request: _Request) -> _Change:
    if request.role not in (Membership.Role.MODERATOR, Membership.Role.MEMBER, Membership.Role.VIEWER):
        raise ModerationRefused("invalid", "role must be moderator, member or viewer")

    def apply(m: Membership, room: Room) -> bool:
        _require_member(m)
        if request.role == Membership.Role.MODERATOR and not (
            _is_staff(request.actor) or room.owner_id == request.actor.pk
        ):
            raise ModerationRefused("forbidden", "only the owner (or staff) makes moderators")
        m.role = str(request.role)
        return True

    return _member_change(request, apply)


def _remove(request: _Request) -> _Change:
    """Take a person out of the room (they may join a public room again): their sockets close."""
    room = _room_of(request)
    _require_room_moderator(request.actor, room)
    membership = (
        Membership.objects.select_for_update()
        .select_related("user")
        .filter(room=room, user_id=_needed(request.user_id, "a person"))
        .first()
    )
    if membership is None:
        raise ModerationRefused("not_found", "that person is not a member of this room")
    _require_over(request.actor, room, membership)
    before = member_state(membership)
    repr_ = f"{display_name(membership.user)} in {room.slug}"
    membership.delete()
    _close_member_sockets_on_commit(room.pk, membership.user_id, CLOSE_FORBIDDEN)
    return _Change(room.pk, "member", membership.user_id, repr_, before, {"member": False})


# --- site wide (staff only) -------------------------------------------------------------------


def _require_staff(actor: Any) -> None:
    if not _is_staff(actor):
        raise ModerationRefused("forbidden", "only staff may do that")


def _set_active(request: _Request, active: bool) -> _Change:
    _require_staff(request.actor)
    user = User.objects.select_for_update().filter(pk=_needed(request.user_id, "a person")).first()
    if user is None:
        raise ModerationRefused("not_found", f"no user {request.user_id}")
    if user.pk == request.actor.pk:
        raise ModerationRefused("forbidden", "you cannot deactivate yourself")
    before = {"is_active": user.is_active}
    user.is_active = active
    user.save(update_fields=["is_active"])
    if not active:  # every socket of theirs, in every room (sessions have no user group)
        for room_id in Membership.objects.filter(user=user).values_list("room_id", flat=True):
            _close_member_sockets_on_commit(room_id, user.pk, CLOSE_UNAUTHENTICATED)
    return _Change(None, "user", user.pk, display_name(user), before, {"is_active": active})


def _revoke_token(request: _Request) -> _Change:
    _require_staff(request.actor)
    token = (
        ApiToken.objects.select_for_update()
        .select_related("user")
        .filter(pk=_needed(request.token_id, "a token"))
        .first()
    )
    if token is None:
        raise ModerationRefused("not_found", f"no token {request.token_id}")
    if token.revoked_at is not None:
        raise ModerationRefused("conflict", "that token is already revoked")
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    broadcast.send_to_group_on_commit(
        broadcast.user_group(token.user_id), broadcast.revoked_message(token.pk)
    )
    return _Change(None, "token", token.pk, f"{token} of {display_name(token.user)}", {"revoked": False},
                   {"revoked": True})  # fmt: skip


# --- reports ----------------------------------------------------------------------------------

REPORT_REASON_MAX = 500


def report_create(*, room: Room, user: Any, message_id: int, reason: str) -> MessageReport:
    """Any member flags a message of the room for the moderators (it queues in the admin)."""
    reason = reason.strip()[:REPORT_REASON_MAX]
    if not reason:
        raise ModerationRefused("invalid", "a report needs a reason")
    if membership_active(room_id=room.pk, user_id=user.pk) is None:
        raise ModerationRefused("forbidden", "you are not a member of this room")
    message = Message.objects.filter(pk=message_id, room=room).first()
    if message is None:
        raise ModerationRefused("not_found", f"no message {message_id} in this room")
    return MessageReport.objects.create(message=message, reporter=user, reason=reason)


def _resolve(request: _Request) -> _Change:
    report = (
        MessageReport.objects.select_for_update()
        .select_related("message")
        .filter(pk=_needed(request.report_id, "a report"))
        .first()
    )
    if report is None:
        raise ModerationRefused("not_found", f"no report {request.report_id}")
    room = report.message.room
    _require_room_moderator(request.actor, room)
    if report.resolved_at is not None:
        raise ModerationRefused("conflict", "that report is already resolved")
    report.resolved_at = timezone.now()
    report.resolved_by = request.actor
    report.resolution = "dismissed"
    report.save(update_fields=["resolved_at", "resolved_by", "resolution"])
    return _Change(room.pk, "report", report.pk, str(report), {"open": True}, {"open": False})


def reports_resolve_for(*, actor: Any, message_id: int, resolution: str) -> int:
    """Close the open reports of a message a moderator acted on (hid, deleted)."""
    return MessageReport.objects.filter(message_id=message_id, resolved_at__isnull=True).update(
        resolved_at=timezone.now(),
        resolved_by=actor if getattr(actor, "pk", None) else None,
        resolution=resolution,
    )


_HANDLERS: dict[str, Callable[[_Request], _Change]] = {
    "hide": _hide,
    "unhide": _unhide,
    "delete": _delete,
    "lock": lambda r: _set_lock(r, True),
    "unlock": lambda r: _set_lock(r, False),
    "stop": _stop,
    "clear_queue": _clear_queue,
    "slow_mode": _slow_mode,
    "rotate_invite": _rotate_invite,
    "mute": lambda r: _mute(r, True),
    "unmute": lambda r: _mute(r, False),
    "kick": _kick,
    "ban": lambda r: _ban(r, True),
    "unban": lambda r: _ban(r, False),
    "role": _role,
    "remove": _remove,
    "deactivate": lambda r: _set_active(r, False),
    "reactivate": lambda r: _set_active(r, True),
    "revoke_token": _revoke_token,
    "resolve": _resolve,
}
