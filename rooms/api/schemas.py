"""The REST API's request and answer bodies. Messages, turns and calls travel as they do on the
socket (rooms.protocol's MessageData, TurnData, ToolCallData), so a script sees one shape."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field

from rooms.protocol import ClientToolSpec, MessageData, ToolCallData, TurnData, UserRef


class _In(Schema):
    model_config = ConfigDict(extra="forbid")


class RoomIn(_In):
    title: Annotated[str, Field(min_length=1, max_length=120)]
    visibility: Literal["public", "private"] = "public"
    ai_enabled: bool = True
    ai_trigger: Literal["every", "mention"] = "every"
    ai_model: Annotated[str, Field(max_length=120)] = ""
    system_prompt: Annotated[str, Field(max_length=8000)] | None = None


class RoomOut(Schema):
    slug: str
    title: str
    visibility: str
    ai_enabled: bool
    ai_trigger: str
    ai_model: str
    owner: UserRef
    role: str | None  # yours: owner, moderator, member (None: a public room you have not joined)
    last_seq: int
    created_at: str


class RoomsOut(Schema):
    rooms: list[RoomOut]


class MessageIn(_In):
    """A message to post: as the socket's `send` (the same limits), without its client_id: send
    an `Idempotency-Key` header to make a retry safe."""

    content: str
    tools: list[ClientToolSpec] = []


class PostOut(Schema):
    message: MessageData
    turn: TurnData | None  # the turn this message queued (None: the assistant does not answer it)
    submission_url: str  # GET it (with ?wait=) to follow the answer


class TranscriptMessage(MessageData):
    next_index: int | None = None  # a streaming message: its text so far, the next delta's index


class TranscriptOut(Schema):
    messages: list[TranscriptMessage]
    latest_seq: int  # the room's newest seq: connect the socket with ?since= this
    next_since: int  # the `since` of the next page
    has_more: bool


class TurnsOut(Schema):
    turns: list[TurnData]


class TurnOut(Schema):
    turn: TurnData
    calls: list[ToolCallData]


class CallsOut(Schema):
    calls: list[ToolCallData]


class CallOut(Schema):
    call: ToolCallData


class ApprovalIn(_In):
    approved: bool
    reason: Annotated[str, Field(max_length=500)] | None = None


class ToolResultIn(_In):
    output: Any = None
    error: Annotated[str, Field(max_length=2000)] | None = None


SubmissionStatus = Literal[
    "queued", "running", "parked", "done", "failed", "cancelled", "interrupted", "none"
]


class SubmissionOut(Schema):
    """A posted message and the turn that answers it."""

    message_id: int
    status: SubmissionStatus  # the turn's; `none`: no turn answers this message
    settled: bool  # the status is final (done, failed, cancelled, interrupted, none)
    turn: TurnData | None
    answer: MessageData | None  # the assistant's message, with its text so far
    text: str | None  # the answer's text (so far, while it runs)
    waiting_calls: list[ToolCallData]  # calls waiting on a person (approve them to unpark)
