"""The REST API under /api/: rooms, the transcript, posts (submissions), turns, tool calls.

Each operation is async and thin: check the input, make one database visit (rooms.api.actions,
on the sockets' threads), answer. Posting takes the same per-user message quota as the socket.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from django.conf import settings
from django.http import HttpRequest
from ninja import Header, Router
from pydantic import Field, ValidationError

from rooms.api import actions
from rooms.api.errors import ApiError, ApiFailure
from rooms.api.follow import TurnFollower
from rooms.api.idempotency import key_checked, request_fingerprint
from rooms.api.schemas import (
    ApprovalIn,
    CallOut,
    CallsOut,
    MessageIn,
    PostOut,
    RoomIn,
    RoomOut,
    RoomsOut,
    SubmissionOut,
    ToolResultIn,
    TranscriptOut,
    TurnOut,
    TurnsOut,
)
from rooms.protocol import SendFrame
from rooms.sockets import on_db_threads

router = Router(tags=["rooms"])
ERRORS: dict[int, Any] = {code: ApiError for code in (400, 401, 403, 404, 409, 413, 429, 500, 503)}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Make a retry safe: the same key again stores nothing new and gets the same "
        "answer; another request with the same key gets 409 `idempotency_conflict`.",
    ),
]
Limit = Annotated[int, Field(ge=1, le=500)]
Id = Annotated[int, Field(ge=1, le=2**62)]
CallId = Annotated[str, Field(min_length=1, max_length=100)]


def _user(request: HttpRequest) -> Any:
    return request.auth  # type: ignore[attr-defined]


def content_checked(content: str, tools: list[dict[str, Any]]) -> None:
    """The socket's own rules for a message (rooms.protocol.SendFrame): blank, too long, NUL,
    not Unicode, client tools."""
    try:
        SendFrame.model_validate(
            {"type": "send", "client_id": "00000000-0000-4000-8000-000000000000", "content": content,
             "tools": tools}
        )  # fmt: skip
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "content"
        message = first["msg"].removeprefix("Value error, ")
        raise ApiFailure("invalid", f"{where}: {message}", param=where) from None


# --- rooms --------------------------------------------------------------------------------------


@router.get("/rooms", response={200: RoomsOut, **ERRORS}, summary="List your rooms")
async def rooms_get(request: HttpRequest, public: bool = False) -> Any:
    """The rooms you are a member of, newest first; `public=true` adds the public rooms you
    could join (posting to one joins it)."""
    return {"rooms": await on_db_threads(actions.rooms_list)(user=_user(request), public=public)}


@router.post("/rooms", response={201: RoomOut, **ERRORS}, summary="Create a room")
async def rooms_post(request: HttpRequest, body: RoomIn, idempotency_key: IdempotencyKey = None) -> Any:
    """A new room that you own."""
    key = key_checked(idempotency_key)
    fields = body.model_dump()
    status, data = await on_db_threads(actions.room_new)(
        user=_user(request), fields=fields, key=key, endpoint="POST /api/rooms",
        fingerprint=request_fingerprint(endpoint="POST /api/rooms", body=fields),
    )  # fmt: skip
    return status, data


@router.get("/rooms/{slug}", response={200: RoomOut, **ERRORS}, summary="Read a room")
async def room_get(request: HttpRequest, slug: str) -> Any:
    return await on_db_threads(actions.room_read)(slug=slug, user=_user(request))


# --- the transcript and posts -------------------------------------------------------------------


@router.get("/rooms/{slug}/messages", response={200: TranscriptOut, **ERRORS}, summary="Read the transcript")
async def messages_get(
    request: HttpRequest, slug: str, since: Annotated[int, Field(ge=0, le=2**62)] = 0, limit: Limit = 100
) -> Any:
    """Messages created after seq `since`, oldest first (`limit` per page; next page:
    `since=next_since`). A streaming message carries its text so far. `latest_seq` is where a
    socket connected with `?since=` goes on live."""
    return await on_db_threads(actions.transcript_page)(
        slug=slug, user=_user(request), since=since, limit=limit
    )


@router.post("/rooms/{slug}/messages", response={201: PostOut, **ERRORS}, summary="Post a message")
async def messages_post(
    request: HttpRequest, slug: str, body: MessageIn, idempotency_key: IdempotencyKey = None
) -> Any:
    """Post as the token's user, through the same service as the socket's `send` (the same
    limits, moderation and events). The answer is a submission: follow its turn with
    `GET submission_url` (`?wait=` to long-poll)."""
    key = key_checked(idempotency_key)
    tools = [t.model_dump() for t in body.tools]
    content_checked(body.content, tools)
    user = _user(request)
    endpoint = f"POST /api/rooms/{slug}/messages"
    posted = await on_db_threads(actions.message_submit)(
        slug=slug, user=user, content=body.content, tools=tools, key=key, endpoint=endpoint,
        fingerprint=request_fingerprint(endpoint=endpoint, body={"content": body.content, "tools": tools}),
    )  # fmt: skip
    return posted.status, posted.body


@router.get(
    "/rooms/{slug}/submissions/{message_id}",
    response={200: SubmissionOut, **ERRORS},
    summary="Follow a submission",
)
async def submission_get(
    request: HttpRequest,
    slug: str,
    message_id: Id,
    wait: Annotated[float, Field(ge=0, description="seconds to long-poll (at most API_WAIT_MAX)")] = 0,
    after: Annotated[
        Literal["parked"] | None, Field(description="`parked`: you saw it parked; wait for it to move on")
    ] = None,
) -> Any:
    """A posted message's turn: its status (queued, running, parked, done, failed, cancelled,
    interrupted; `none` if no turn answers it), the answer's text so far, the calls waiting on a
    person. With `wait`, the answer comes as soon as the turn has settled or is parked (with
    `after=parked`: once it has moved on and settled or parked again), or after `wait` seconds
    with the status then."""
    room_id = await on_db_threads(actions.submission_message)(
        slug=slug, user=_user(request), message_id=message_id
    )
    if wait > 0:
        try:
            async with asyncio.timeout(min(wait, settings.API_WAIT_MAX)):
                await _until_settled_or_parked(room_id, message_id, skip_parked=after == "parked")
        except TimeoutError:
            pass  # the status as it is now
    return await on_db_threads(actions.submission_read)(room_id=room_id, message_id=message_id)


async def _until_settled_or_parked(room_id: int, message_id: int, *, skip_parked: bool) -> None:
    follower = TurnFollower(room_id=room_id, trigger_message_id=message_id, text=False)
    updates = follower.updates()
    try:
        async for update in updates:
            parked = update.turn is not None and update.turn.status == "parked"
            if update.settled or (parked and not skip_parked):
                return
            skip_parked = skip_parked and parked  # it moved on: parking again is news
    finally:
        await updates.aclose()


# --- turns and tool calls -----------------------------------------------------------------------


@router.get("/rooms/{slug}/turns", response={200: TurnsOut, **ERRORS}, summary="List turns")
async def turns_get(request: HttpRequest, slug: str, before: Id | None = None, limit: Limit = 50) -> Any:
    """The room's turns, newest first (`before`: a turn id, for the page after)."""
    found = await on_db_threads(actions.turns_list)(
        slug=slug, user=_user(request), before=before, limit=limit
    )
    return {"turns": found}


@router.get("/rooms/{slug}/turns/{turn_id}", response={200: TurnOut, **ERRORS}, summary="Read a turn")
async def turn_get(request: HttpRequest, slug: str, turn_id: Id) -> Any:
    return await on_db_threads(actions.turn_read)(slug=slug, user=_user(request), turn_id=turn_id)


@router.post(
    "/rooms/{slug}/turns/{turn_id}/cancel", response={200: TurnOut, **ERRORS}, summary="Cancel a turn"
)
async def turn_cancel(request: HttpRequest, slug: str, turn_id: Id) -> Any:
    """Stop a running turn (its partial answer is kept, `cancelled`), withdraw a queued one (its
    author or the owner), or end a parked one. Idempotent: cancelling an ended turn changes nothing."""
    return await on_db_threads(actions.turn_act)(
        slug=slug, user=_user(request), turn_id=turn_id, action="cancel"
    )


@router.post("/rooms/{slug}/turns/{turn_id}/retry", response={200: TurnOut, **ERRORS}, summary="Retry a turn")
async def turn_retry(request: HttpRequest, slug: str, turn_id: Id) -> Any:
    """Continue an interrupted or failed answer in the same message (never after side effects)."""
    return await on_db_threads(actions.turn_act)(
        slug=slug, user=_user(request), turn_id=turn_id, action="retry"
    )


@router.get("/rooms/{slug}/calls", response={200: CallsOut, **ERRORS}, summary="List tool calls")
async def calls_get(request: HttpRequest, slug: str, turn_id: Id | None = None, limit: Limit = 200) -> Any:
    """The room's tool calls (of one turn, or the newest `limit`), in the order they were made."""
    found = await on_db_threads(actions.calls_list)(
        slug=slug, user=_user(request), turn_id=turn_id, limit=limit
    )
    return {"calls": found}


@router.get("/rooms/{slug}/calls/{call_id}", response={200: CallOut, **ERRORS}, summary="Read a tool call")
async def call_get(request: HttpRequest, slug: str, call_id: CallId) -> Any:
    return {"call": await on_db_threads(actions.call_read)(slug=slug, user=_user(request), call_id=call_id)}


@router.post(
    "/rooms/{slug}/calls/{call_id}/approval",
    response={200: CallOut, **ERRORS},
    summary="Approve or deny a call",
)
async def call_approval(request: HttpRequest, slug: str, call_id: CallId, body: ApprovalIn) -> Any:
    """Decide a call `awaiting_approval` (the person whose message started the turn, or the
    room's owner or a moderator): the parked turn goes on. A second decision gets 409."""
    call = await on_db_threads(actions.call_decide)(
        slug=slug, user=_user(request), call_id=call_id, approved=body.approved, reason=body.reason
    )
    return {"call": call}


@router.post(
    "/rooms/{slug}/calls/{call_id}/result",
    response={200: CallOut, **ERRORS},
    summary="Answer a client tool call",
)
async def call_result(request: HttpRequest, slug: str, call_id: CallId, body: ToolResultIn) -> Any:
    """The result of a client tool call `waiting_client` (only its initiator): `output`, or `error`."""
    call = await on_db_threads(actions.call_answer)(
        slug=slug, user=_user(request), call_id=call_id, output=body.output, error=body.error
    )
    return {"call": call}
