"""What the API does on the database: each function one visit, composed of the services and
selectors the socket uses (the same authorization, validation, limits and events).

Sync and keyword-only; the endpoints run them on the sockets' database threads
(`rooms.sockets.on_db_threads`), so a request holds no thread while it waits on anything else.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import connection, transaction

from rooms import ratelimit, selectors, services
from rooms.api.errors import ApiFailure
from rooms.api.idempotency import Claim, key_answer, key_claim, key_client_id, key_release
from rooms.models import Membership, Message, Room
from rooms.protocol import ToolCallData, TurnData
from rooms.turns import TurnRefused, turn_queue

SETTLED = ("done", "failed", "cancelled", "interrupted")
WAITING = ("awaiting_approval", "waiting_client")


# --- rooms --------------------------------------------------------------------------------------


def room_member(*, slug: str, user: Any) -> Room:
    """The room, if the user may use it as a socket could: a public room is joined on first use."""
    found = services.room_enter(slug=slug, user=user)
    if not found.room_id:
        raise ApiFailure("not_found", f"no room {slug[:80]!r}", param="slug")
    if found.access != "member":
        raise ApiFailure("forbidden", "you are not a member of this room (or you were banned)")
    return Room.objects.select_related("owner").get(pk=found.room_id)


def room_data(*, room: Room, role: str | None) -> dict[str, Any]:
    return {
        "slug": room.slug, "title": room.title, "visibility": room.visibility,
        "ai_enabled": room.ai_enabled, "ai_trigger": room.ai_trigger, "ai_model": room.ai_model,
        "owner": selectors.user_data(room.owner), "role": role, "last_seq": room.last_seq,
        "created_at": room.created_at.isoformat(),
    }  # fmt: skip


def _role(*, room: Room, user: Any) -> str | None:
    return Membership.objects.filter(room=room, user=user).values_list("role", flat=True).first()


def rooms_list(*, user: Any, public: bool) -> list[dict[str, Any]]:
    """The user's rooms (and, with `public`, the public rooms they have not joined)."""
    roles = dict(Membership.objects.filter(user=user, banned_at__isnull=True).values_list("room_id", "role"))
    rooms = list(selectors.rooms_for_user(user=user).select_related("owner"))
    if public:
        rooms += list(selectors.rooms_public(exclude_user=user).select_related("owner"))
    return [room_data(room=r, role=roles.get(r.pk)) for r in rooms]


def room_read(*, slug: str, user: Any) -> dict[str, Any]:
    room = room_member(slug=slug, user=user)
    return room_data(room=room, role=_role(room=room, user=user))


def room_new(
    *, user: Any, fields: dict[str, Any], key: str | None, endpoint: str, fingerprint: str
) -> tuple[int, dict[str, Any]]:
    """Create a room (once per Idempotency-Key: key, room and answer in one transaction)."""
    with transaction.atomic():
        claim = key_claim(user=user, key=key, endpoint=endpoint, fingerprint=fingerprint) if key else None
        if claim is not None and claim.answer is not None:
            return claim.answer
        try:
            room = services.room_create(owner=user, **fields)
        except PermissionDenied as exc:  # a guest, where guests may not create rooms
            raise ApiFailure("forbidden", str(exc)) from None
        except ValueError as exc:  # a model the server does not offer (LLM_MODELS)
            raise ApiFailure("invalid", str(exc), param="ai_model") from None
        body = room_data(room=room, role=Membership.Role.OWNER)
        if claim is not None:
            return key_answer(claim=claim, status=201, body=body)
    return 201, body


# --- the transcript -----------------------------------------------------------------------------


def transcript_page(*, slug: str, user: Any, since: int, limit: int) -> dict[str, Any]:
    """Visible messages created after seq `since`, oldest first, read in one snapshot."""
    room = room_member(slug=slug, user=user)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        latest = selectors.room_latest_seq(room_id=room.pk)
        rows = list(
            Message.objects.filter(room=room, seq__gt=since, seq__lte=latest)
            .exclude(status=Message.Status.HIDDEN)
            .select_related("author")
            .order_by("seq")[: limit + 1]
        )
        has_more = len(rows) > limit
        rows = rows[:limit]
        snaps = {s.message_id: s for s in selectors.snapshots_streaming(room_id=room.pk)}
        turn_of, _ = turn_queue().transcript_turns(message_ids=[m.pk for m in rows])
    messages = []
    for m in rows:
        data = selectors.message_wire(m, turn_id=turn_of.get(m.pk)).model_dump()
        snap = snaps.get(m.pk)
        if snap is not None:
            data["content"], data["next_index"] = snap.content, snap.next_index
        messages.append(data)
    next_since = rows[-1].seq if has_more else max(since, latest)
    return {"messages": messages, "latest_seq": latest, "next_since": next_since, "has_more": has_more}


# --- posting ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Posted:
    """A stored post: the answer the client gets (and gets again for the same key)."""

    status: int
    body: dict[str, Any]
    room_id: int
    message_id: int


def _post_body(*, room: Room, message_id: int) -> dict[str, Any]:
    message = Message.objects.select_related("author").get(pk=message_id)
    turns = turn_queue().turns_read(room_id=room.pk, trigger_message_ids=[message_id], limit=1)
    return {
        "message": selectors.message_wire(message).model_dump(),
        "turn": turns[0].model_dump() if turns else None,
        "submission_url": f"/api/rooms/{room.slug}/submissions/{message_id}",
    }


def message_submit(
    *,
    slug: str,
    user: Any,
    content: str,
    tools: list[dict[str, Any]],
    key: str | None,
    endpoint: str,
    fingerprint: str,
    answer_required: bool = False,
) -> Posted:
    """Post a message through `services.message_post`, once per Idempotency-Key.

    `answer_required` (the OpenAI door): refuse, storing nothing, a message the room's assistant
    would not answer (it is off, or answers only when mentioned).
    """
    room = room_member(slug=slug, user=user)
    claim: Claim | None = None
    if key is not None:
        claim = key_claim(user=user, key=key, endpoint=endpoint, fingerprint=fingerprint)
        if claim.answer is not None:
            status, body = claim.answer
            return Posted(status, body, room.pk, int(body["message"]["id"]))
    if answer_required and not turn_queue().wanted(room=room, content=content):
        if claim is not None:
            key_release(claim=claim)
        raise ApiFailure(
            "no_answer",
            "this room's assistant would not answer (it is off, or answers only when mentioned with @ai)",
            param="model",
        )
    client_id = key_client_id(user_id=user.pk, key=key) if key is not None else uuid.uuid4()
    try:
        result = services.message_post(
            room=room, author=user, client_id=client_id, content=content, client_tools=tools
        )
    except services.ClientIdConflict:
        if claim is not None:
            key_release(claim=claim)
        raise ApiFailure("idempotency_conflict", "this Idempotency-Key was already used for another message",
                         param="Idempotency-Key") from None  # fmt: skip
    except ratelimit.RateLimited as exc:  # the author's message quota (every path that posts)
        if claim is not None:
            key_release(claim=claim)
        raise ApiFailure("rate_limited", str(exc), retry_after=exc.retry_after) from None
    except services.RoomBusy as exc:
        if claim is not None:
            key_release(claim=claim)
        raise ApiFailure("rate_limited", str(exc), retry_after=5.0) from None
    except TurnRefused as exc:  # the room's moderation (locked, muted, slow mode...): nothing stored
        if claim is not None:
            key_release(claim=claim)
        retry_after = getattr(exc, "retry_after", None)
        raise ApiFailure(exc.code, str(exc), retry_after=retry_after) from None
    except Exception:
        if claim is not None:  # refused some other way: nothing stored, the key is free
            key_release(claim=claim)
        raise
    status, body = 201, _post_body(room=room, message_id=result.message_id)
    if claim is not None:
        status, body = key_answer(claim=claim, status=status, body=body)
    return Posted(status, body, room.pk, result.message_id)


# --- submissions and turns ----------------------------------------------------------------------


def _chunks_from(*, message_id: int, index: int) -> list[str]:
    """The streamed chunks of a message from `index` on, as far as they run without a gap."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT index, text FROM rooms_streamchunk WHERE message_id = %s AND index >= %s ORDER BY index",
            [message_id, index],
        )
        texts: list[str] = []
        for n, text in cursor.fetchall():
            if n != index + len(texts):
                break
            texts.append(text)
    return texts


@dataclass(frozen=True)
class Progress:
    """A turn as the database has it now, and its answer's chunks from the index asked for."""

    turn: TurnData | None
    chunks: list[str]
    content: str | None  # the answer's stored content once it is no longer streaming


def turn_progress(*, room_id: int, trigger_message_id: int, from_index: int | None) -> Progress:
    """The turn a message triggered; with `from_index`, its answer's new chunks."""
    turns = turn_queue().turns_read(room_id=room_id, trigger_message_ids=[trigger_message_id], limit=1)
    turn = turns[0] if turns else None
    chunks: list[str] = []
    content = None
    if turn is not None and turn.message_id is not None and from_index is not None:
        chunks = _chunks_from(message_id=turn.message_id, index=from_index)
        if turn.status in SETTLED:
            content = Message.objects.filter(pk=turn.message_id).values_list("content", flat=True).first()
    return Progress(turn, chunks, content)


def submission_message(*, slug: str, user: Any, message_id: int) -> int:
    """The room of a member's submission (a user's message in it), or a refusal."""
    room = room_member(slug=slug, user=user)
    if not Message.objects.filter(pk=message_id, room=room, role=Message.Role.USER).exists():
        raise ApiFailure("not_found", f"no message {message_id} in this room", param="message_id")
    return room.pk


def submission_read(*, room_id: int, message_id: int) -> dict[str, Any]:
    """A submission's status, its turn, the answer so far and the calls waiting on a person."""
    turns = turn_queue().turns_read(room_id=room_id, trigger_message_ids=[message_id], limit=1)
    turn = turns[0] if turns else None
    answer = None
    if turn is not None and turn.message_id is not None:
        message = Message.objects.get(pk=turn.message_id)
        answer = selectors.message_wire(message, turn_id=turn.id).model_dump()
        if message.status == Message.Status.STREAMING:
            answer["content"] = "".join(_chunks_from(message_id=message.pk, index=0))
    waiting: list[dict[str, Any]] = []
    if turn is not None and turn.status == "parked":
        calls = turn_queue().calls_read(room_id=room_id, turn_id=turn.id)
        waiting = [c.model_dump() for c in calls if c.state in WAITING]
    status = turn.status if turn is not None else "none"
    return {
        "message_id": message_id, "status": status, "settled": status in SETTLED or status == "none",
        "turn": turn.model_dump() if turn else None, "answer": answer,
        "text": answer["content"] if answer else None, "waiting_calls": waiting,
    }  # fmt: skip


def turns_list(*, slug: str, user: Any, before: int | None, limit: int) -> list[TurnData]:
    room = room_member(slug=slug, user=user)
    return turn_queue().turns_read(room_id=room.pk, before=before, limit=limit)


def turn_read(*, slug: str, user: Any, turn_id: int) -> dict[str, Any]:
    room = room_member(slug=slug, user=user)
    found = turn_queue().turns_read(room_id=room.pk, turn_ids=[turn_id], limit=1)
    if not found:
        raise ApiFailure("not_found", f"no turn {turn_id} in this room", param="turn_id")
    return {"turn": found[0], "calls": turn_queue().calls_read(room_id=room.pk, turn_id=turn_id)}


def turn_act(*, slug: str, user: Any, turn_id: int, action: str) -> dict[str, Any]:
    """Cancel or retry a turn through the turn queue, as the socket's `cancel` / `retry` do."""
    room = room_member(slug=slug, user=user)
    queue = turn_queue()
    act = queue.cancel if action == "cancel" else queue.retry
    try:
        act(room=room, user=user, turn_id=turn_id)
    except TurnRefused as exc:
        raise ApiFailure(exc.code, str(exc), param="turn_id") from None
    return turn_read(slug=slug, user=user, turn_id=turn_id)


def calls_list(*, slug: str, user: Any, turn_id: int | None, limit: int) -> list[ToolCallData]:
    room = room_member(slug=slug, user=user)
    return turn_queue().calls_read(room_id=room.pk, turn_id=turn_id, limit=limit)


def call_read(*, slug: str, user: Any, call_id: str) -> ToolCallData:
    room = room_member(slug=slug, user=user)
    return _call_of(room=room, call_id=call_id)


def _call_of(*, room: Room, call_id: str) -> ToolCallData:
    found = turn_queue().calls_read(room_id=room.pk, call_id=call_id, limit=1)
    if not found:
        raise ApiFailure("not_found", f"no tool call {call_id[:40]!r} in this room", param="call_id")
    return found[0]


def call_decide(*, slug: str, user: Any, call_id: str, approved: bool, reason: str | None) -> ToolCallData:
    """Approve or deny a call that asks first, as the socket's `tool_approval` does."""
    room = room_member(slug=slug, user=user)
    try:
        turn_queue().tool_decide(room=room, user=user, call_id=call_id, approved=approved, reason=reason)
    except TurnRefused as exc:
        raise ApiFailure(exc.code, str(exc), param="call_id") from None
    return _call_of(room=room, call_id=call_id)


def call_answer(*, slug: str, user: Any, call_id: str, output: Any, error: str | None) -> ToolCallData:
    """A client tool's result, as the socket's `tool_result` does."""
    room = room_member(slug=slug, user=user)
    try:
        turn_queue().tool_result(room=room, user=user, call_id=call_id, output=output, error=error)
    except TurnRefused as exc:
        raise ApiFailure(exc.code, str(exc), param="call_id") from None
    return _call_of(room=room, call_id=call_id)
