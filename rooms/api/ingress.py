"""The OpenAI-compatible door under /v1/: any OpenAI client talks to a room.

`POST /v1/chat/completions` with `model` = a room's slug and an API token as the key posts the
request's last user message into the room as the token's user (through the socket's service:
the same limits, moderation and events), and answers with the room's turn in OpenAI's format:
streamed as `chat.completion.chunk` server-sent events ending in `[DONE]`, or as one
`chat.completion` once the turn ends. Everyone in the room watches the same turn stream. The
rest of the request (earlier messages, temperature, ...) is not used: the room keeps its own
transcript, model and prompt. `GET /v1/models` lists the rooms the token may post to.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Header, Router, Schema
from pydantic import ConfigDict, Field

from rooms.api import actions
from rooms.api.endpoints import ERRORS, content_checked
from rooms.api.errors import ApiError, ApiFailure
from rooms.api.follow import TurnFollower
from rooms.api.idempotency import key_checked, request_fingerprint
from rooms.protocol import TurnData
from rooms.sockets import on_db_threads

router = Router(tags=["openai"])
ENDPOINT = "POST /v1/chat/completions"


class ChatMessageIn(Schema):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionIn(Schema):
    """OpenAI's request; fields not named here are accepted and not used."""

    model_config = ConfigDict(extra="allow")
    model: Annotated[str, Field(min_length=1, max_length=64, description="the room's slug")]
    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=1000)]
    stream: bool = False
    n: int | None = None
    tools: list[Any] | None = None


class AssistantMessage(Schema):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(Schema):
    index: int
    message: AssistantMessage
    finish_reason: str


class ChatCompletionOut(Schema):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]


class ModelOut(Schema):
    id: str  # the room's slug
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    title: str


class ModelsOut(Schema):
    object: Literal["list"] = "list"
    data: list[ModelOut]


def _user(request: HttpRequest) -> Any:
    return request.auth  # type: ignore[attr-defined]


def last_user_text(messages: list[ChatMessageIn]) -> str:
    """The text of the request's last user message (a string, or text content parts)."""
    for message in reversed(messages):
        if message.role != "user":
            continue
        content = message.content
        if isinstance(content, str):
            return content
        parts = content or []
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in parts):
            raise ApiFailure(
                "unsupported", "only text content parts can be posted to a room", param="messages"
            )
        return "".join(str(p.get("text", "")) for p in parts)
    raise ApiFailure("invalid", "messages: there is no user message to post", param="messages")


def _model(room: dict[str, Any]) -> dict[str, Any]:
    created = int(datetime.fromisoformat(room["created_at"]).timestamp())
    return {"id": room["slug"], "created": created, "owned_by": room["owner"]["name"], "title": room["title"]}


@router.get("/models", response={200: ModelsOut, **ERRORS}, summary="List rooms as models")
async def models_get(request: HttpRequest) -> Any:
    """The rooms the token may post to (yours, and public ones), each a `model` named by slug."""
    rooms = await on_db_threads(actions.rooms_list)(user=_user(request), public=True)
    return {"data": [_model(r) for r in rooms]}


@router.get("/models/{model}", response={200: ModelOut, **ERRORS}, summary="Read a room as a model")
async def model_get(request: HttpRequest, model: str) -> Any:
    return _model(await on_db_threads(actions.room_read)(slug=model, user=_user(request)))


@router.post(
    "/chat/completions",
    response={200: ChatCompletionOut, **ERRORS, 502: ApiError},
    summary="Post to a room, get its answer (OpenAI's format)",
    openapi_extra={"responses": {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}}},
)
async def chat_completions(
    request: HttpRequest,
    body: ChatCompletionIn,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Any:
    """With `stream`, `chat.completion.chunk` events as the room's turn streams, then `[DONE]`
    (a turn that fails, is interrupted or cancelled ends the stream with an `error` event);
    without, one `chat.completion` when the turn ends (those outcomes are errors: 502, 409).
    Send an `Idempotency-Key` to make a retry safe: it posts nothing new and follows the same turn."""
    if body.n not in (None, 1):
        raise ApiFailure("unsupported", "a room gives one answer: n must be 1", param="n")
    if body.tools:
        raise ApiFailure("unsupported", "tools run in the room, not in the request: send none", param="tools")
    key = key_checked(idempotency_key)
    content = last_user_text(body.messages)
    content_checked(content, [])
    user = _user(request)
    try:
        posted = await on_db_threads(actions.message_submit)(
            slug=body.model, user=user, content=content, tools=[], key=key, endpoint=ENDPOINT,
            fingerprint=request_fingerprint(endpoint=ENDPOINT, body=body.model_dump()),
            answer_required=True,
        )  # fmt: skip
    except ApiFailure as exc:
        if exc.param == "slug":  # the room is this door's `model`
            exc.param = "model"
        raise
    turn = posted.body["turn"]
    if turn is None:  # a keyed retry of a post the assistant did not answer
        raise ApiFailure("no_answer", "no turn answers this message", param="model")
    head = {
        "id": f"chatcmpl-{turn['id']}",
        "created": int(datetime.fromisoformat(posted.body["message"]["created_at"]).timestamp()),
        "model": body.model,
    }
    follower = TurnFollower(room_id=posted.room_id, trigger_message_id=posted.message_id)
    if body.stream:
        response = StreamingHttpResponse(_sse(follower, head), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
    text, last = await _answer(follower)
    _raise_unless_done(last)
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return {**head, "object": "chat.completion", "choices": [choice]}


async def _answer(follower: TurnFollower) -> tuple[str, TurnData | None]:
    pieces: list[str] = []
    updates = follower.updates()
    try:
        async for update in updates:
            pieces.append(update.text)
            if update.settled:
                return "".join(pieces), update.turn
    finally:
        await updates.aclose()
    return "".join(pieces), follower.turn


def _outcome(turn: TurnData | None) -> ApiFailure | None:
    """How a settled turn that is not `done` is told: as an error with the turn's reason."""
    if turn is None:
        return ApiFailure("no_answer", "no turn answers this message")
    if turn.status == "done":
        return None
    code = {"cancelled": "turn_cancelled", "interrupted": "turn_interrupted"}.get(turn.status, "turn_failed")
    reason = f": {turn.error}" if turn.error else ""
    return ApiFailure(code, f"the room's turn {turn.id} ended {turn.status}{reason}"[:2000])


def _raise_unless_done(turn: TurnData | None) -> None:
    failure = _outcome(turn)
    if failure is not None:
        raise failure


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _chunk(head: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return _event({**head, "object": "chat.completion.chunk", "choices": [choice]})


async def _sse(follower: TurnFollower, head: dict[str, Any]) -> AsyncIterator[str]:
    """The turn as OpenAI's stream. A client that goes away stops only its stream: the turn
    goes on in the room (Django cancels this generator; the follower leaves the hub)."""
    updates = follower.updates()
    quiet_since = time.monotonic()
    try:
        yield _chunk(head, {"role": "assistant", "content": ""})
        async for update in updates:
            if update.text:
                yield _chunk(head, {"content": update.text})
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settings.API_STREAM_KEEPALIVE:
                yield ": keep-alive\n\n"  # a comment: proxies and clients keep a waiting stream open
                quiet_since = time.monotonic()
            if update.settled:
                failure = _outcome(update.turn)
                if failure is None:
                    yield _chunk(head, {}, "stop")
                    yield "data: [DONE]\n\n"
                else:
                    yield _event(failure.body())
                return
    finally:
        await updates.aclose()
