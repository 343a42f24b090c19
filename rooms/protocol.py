"""The wire frames as typed models: the only place their shapes are defined (docs/protocol.md)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from uuid import UUID

from django.conf import settings
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

# WebSocket close codes of a room socket (docs/protocol.md); 4012 is rooms.shutdown's.
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_KICKED = 4410  # a moderator disconnected you; you may come back (not automatically)
CLOSE_RELOAD = 4413  # the replay after `since` is too long: reload the page, then connect
CLOSE_TOO_MANY_SOCKETS = 4429  # this user holds SOCKETS_PER_USER sockets in this process

# --- client to server ---------------------------------------------------------------------


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class ClientToolSpec(_Frame):
    """A tool the sending client can run itself, offered to the model for this message's turn."""

    name: Annotated[str, Field(pattern=TOOL_NAME)]
    description: Annotated[str, Field(max_length=1000)] = ""
    parameters: dict[str, Any]  # a JSON Schema of the input (an object)

    @field_validator("parameters")
    @classmethod
    def _schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > settings.CLIENT_TOOL_SCHEMA_MAX_BYTES:
            raise ValueError(f"parameters is over {settings.CLIENT_TOOL_SCHEMA_MAX_BYTES} bytes")
        if value.get("type", "object") != "object":
            raise ValueError("parameters must be a JSON Schema of an object")
        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"parameters is not a valid JSON Schema: {exc.message[:200]}") from None
        return value


class SendFrame(_Frame):
    type: Literal["send"]
    client_id: UUID
    content: str
    tools: list[ClientToolSpec] = []

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list[ClientToolSpec]) -> list[ClientToolSpec]:
        if len(value) > settings.CLIENT_TOOLS_MAX:
            raise ValueError(f"at most {settings.CLIENT_TOOLS_MAX} client tools per message")
        if len({t.name for t in value}) != len(value):
            raise ValueError("two client tools have the same name")
        return value

    @field_validator("client_id", mode="before")
    @classmethod
    def _uuid_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return UUID(value)  # strict mode would refuse text otherwise
        raise ValueError("client_id must be a UUID string")

    @field_validator("content")
    @classmethod
    def _content_size(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("content is blank")
        if len(value) > settings.CHAT_MAX_MESSAGE_CHARS:
            raise ValueError(f"content is over {settings.CHAT_MAX_MESSAGE_CHARS} characters")
        if "\x00" in value:
            raise ValueError("content contains a NUL character")
        if not _encodable(value):
            raise ValueError("content contains a lone surrogate (not valid Unicode text)")
        return value


class CancelFrame(_Frame):
    type: Literal["cancel"]
    turn_id: Annotated[int, Field(ge=1, le=2**62)]


class RetryFrame(_Frame):
    type: Literal["retry"]
    turn_id: Annotated[int, Field(ge=1, le=2**62)]


class SyncFrame(_Frame):
    type: Literal["sync"]
    since: Annotated[int, Field(ge=0, le=2**62)]


class TypingFrame(_Frame):
    type: Literal["typing"]


class PingFrame(_Frame):
    type: Literal["ping"]


class ToolResultFrame(_Frame):
    """A client tool's answer: `output` (any JSON), or `error` if it could not run."""

    type: Literal["tool_result"]
    call_id: Annotated[str, Field(min_length=1, max_length=100)]
    output: Any = None
    error: Annotated[str, Field(max_length=2000)] | None = None


class ToolApprovalFrame(_Frame):
    """A person's decision on a call that asks first."""

    type: Literal["tool_approval"]
    call_id: Annotated[str, Field(min_length=1, max_length=100)]
    approved: bool
    reason: Annotated[str, Field(max_length=500)] | None = None


class ReportFrame(_Frame):
    """Any member flags a message for the moderators."""

    type: Literal["report"]
    message_id: Annotated[int, Field(ge=1, le=2**62)]
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class ModerateFrame(_Frame):
    """An owner's or moderator's action from the room (rooms.moderation checks who may)."""

    type: Literal["moderate"]
    action: Literal[
        "hide", "unhide", "delete", "lock", "unlock", "stop", "clear_queue", "slow_mode",
        "mute", "unmute", "kick", "ban", "unban", "role",
    ]  # fmt: skip
    message_id: Annotated[int, Field(ge=1, le=2**62)] | None = None  # hide, unhide, delete
    user_id: Annotated[int, Field(ge=1, le=2**62)] | None = None  # mute ... role
    seconds: Annotated[int, Field(ge=0, le=86400)] | None = None  # slow_mode (0: off)
    role: Literal["moderator", "member", "viewer"] | None = None  # role
    reason: Annotated[str, Field(max_length=500)] = ""


ClientFrame = Annotated[
    SendFrame | CancelFrame | RetryFrame | SyncFrame | TypingFrame | PingFrame | ToolResultFrame
    | ToolApprovalFrame | ReportFrame | ModerateFrame,
    Field(discriminator="type"),
]  # fmt: skip
_client_adapter: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
CLIENT_TYPES = frozenset(
    {
        "send",
        "cancel",
        "retry",
        "sync",
        "typing",
        "ping",
        "tool_result",
        "tool_approval",
        "report",
        "moderate",
    }
)


class FrameError(Exception):
    """A rejected frame: `code` is the wire error code (docs/protocol.md)."""

    def __init__(self, code: str, detail: str, ref: Any = None, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.ref = ref
        self.retry_after = retry_after


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ref_of(data: dict[str, Any]) -> Any:
    """The frame's client_id or turn_id, echoed in an error only if it is safe to echo."""
    ref = data.get("client_id", data.get("turn_id", data.get("call_id")))
    if isinstance(ref, str):
        return ref if len(ref) <= 100 and _encodable(ref) else None
    return ref if isinstance(ref, int) and not isinstance(ref, bool) and abs(ref) < 2**63 else None


def parse_client_frame(text: str | None, binary: bytes | None = None) -> ClientFrame:
    """Parse and validate one client frame, or raise FrameError."""
    if text is None:
        raise FrameError("bad_json", "binary frames are not accepted; send JSON text")
    if len(text) > settings.CHAT_MAX_FRAME_BYTES or (
        len(text) * 4 > settings.CHAT_MAX_FRAME_BYTES
        and len(text.encode("utf-8", "surrogatepass")) > settings.CHAT_MAX_FRAME_BYTES
    ):
        raise FrameError("too_large", f"frame is over {settings.CHAT_MAX_FRAME_BYTES} bytes")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise FrameError("bad_json", "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise FrameError("bad_json", "frame must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise FrameError("unknown_type", f"unknown frame type: {str(kind)[:40]!r}", _ref_of(data))
    try:
        return _client_adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "frame"
        raise FrameError("invalid", f"{where}: {first['msg']}", _ref_of(data)) from None


# --- server to client ---------------------------------------------------------------------
# Built by the server, so not validated again on the hot path beyond pydantic's own checks;
# `encode()` is the frame's text, made once and sent as is to every socket.


class _ServerFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def encode(self) -> str:
        """The frame as JSON text (compact, UTF-8 unescaped), as stored and sent."""
        return self.model_dump_json()


class UserRef(_ServerFrame):
    id: int
    name: str


class MessageData(_ServerFrame):
    """A message as it travels on the wire."""

    id: int
    seq: int
    role: str
    author: UserRef | None
    content: str
    html: str
    status: str
    client_id: str | None
    turn_id: int | None
    created_at: str


class TurnData(_ServerFrame):
    """A turn as it travels on the wire."""

    id: int
    status: str
    trigger_message_id: int
    message_id: int | None
    attempt: int
    error: str
    recovering: bool


class MessageEvent(_ServerFrame):
    type: Literal["message"] = "message"
    seq: int
    message: MessageData


class MessageUpdateEvent(_ServerFrame):
    type: Literal["message_update"] = "message_update"
    seq: int
    message: MessageData


class TurnEvent(_ServerFrame):
    type: Literal["turn"] = "turn"
    seq: int
    turn: TurnData


class NoteData(_ServerFrame):
    id: int
    text: str
    call_id: int | None
    created_at: str


class NoteEvent(_ServerFrame):
    type: Literal["note"] = "note"
    seq: int
    note: NoteData


class ChildCallData(_ServerFrame):
    """One tool call of a sub-agent's run, as its parent's card lists it."""

    name: str
    state: str


class AgentProgressData(_ServerFrame):
    """An `agent` call's child run as far as it went: where it runs (a link for the members of
    that room), its status, the tail of its answer so far and its own tool calls."""

    room: str  # the agent room's slug
    title: str
    turn_id: int
    status: str  # the child turn's status
    text: str
    truncated: bool = False  # `text` is the answer's end only
    calls: list[ChildCallData] = []


class ToolCallData(_ServerFrame):
    """A tool call as it travels on the wire; `id` is what clients answer with."""

    id: str
    turn_id: int
    message_id: int
    step: int
    name: str
    kind: str
    input: Any
    state: str
    output: Any = None
    error: str | None = None
    requires_approval: bool
    decided_by: UserRef | None = None
    initiator_id: int | None  # who may answer it / decide it (with the room's owner, moderators)
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    progress: AgentProgressData | None = None  # `agent` calls: the child run


class ToolCallEvent(_ServerFrame):
    type: Literal["tool_call"] = "tool_call"
    seq: int
    call: ToolCallData


class ToolUpdateEvent(_ServerFrame):
    type: Literal["tool_update"] = "tool_update"
    seq: int
    call: ToolCallData


class RoomStateData(_ServerFrame):
    """A room's moderation state: locked (read-only), slow mode (seconds between posts, 0: off)."""

    locked: bool
    slow_mode_seconds: int


class RoomUpdateEvent(_ServerFrame):
    type: Literal["room_update"] = "room_update"
    seq: int
    room: RoomStateData


class MemberData(_ServerFrame):
    """A member's standing in the room."""

    user: UserRef
    role: str  # owner, moderator, member, viewer
    muted: bool
    banned: bool


class MemberUpdateEvent(_ServerFrame):
    type: Literal["member_update"] = "member_update"
    seq: int
    member: MemberData


RoomEvent = (
    MessageEvent | MessageUpdateEvent | TurnEvent | NoteEvent | ToolCallEvent | ToolUpdateEvent
    | RoomUpdateEvent | MemberUpdateEvent
)  # fmt: skip
"""A change to a room, stored in its log with the next `seq` (rooms.events) before it is sent."""


class AckFrame(_ServerFrame):
    type: Literal["ack"] = "ack"
    client_id: str
    message_id: int
    seq: int


class ErrorFrame(_ServerFrame):
    type: Literal["error"] = "error"
    code: str
    detail: str
    ref: str | int | None = None
    retry_after: float | None = None

    def encode(self) -> str:
        return self.model_dump_json(exclude_none=True)  # `ref` and `retry_after` only when set


class DeltaFrame(_ServerFrame):
    type: Literal["delta"] = "delta"
    message_id: int
    index: int
    text: str


class SnapshotFrame(_ServerFrame):
    type: Literal["snapshot"] = "snapshot"
    message_id: int
    content: str
    next_index: int


class ReadyFrame(_ServerFrame):
    type: Literal["ready"] = "ready"
    seq: int


class PongFrame(_ServerFrame):
    type: Literal["pong"] = "pong"
    latest_seq: int


class PresenceFrame(_ServerFrame):
    type: Literal["presence"] = "presence"
    users: list[UserRef]


class TypingEventFrame(_ServerFrame):
    type: Literal["typing"] = "typing"
    user: UserRef


ServerFrame = Annotated[
    MessageEvent | MessageUpdateEvent | TurnEvent | NoteEvent | ToolCallEvent | ToolUpdateEvent
    | RoomUpdateEvent | MemberUpdateEvent | AckFrame | ErrorFrame | DeltaFrame | SnapshotFrame
    | ReadyFrame | PongFrame | PresenceFrame | TypingEventFrame,
    Field(discriminator="type"),
]  # fmt: skip
_server_adapter: TypeAdapter[ServerFrame] = TypeAdapter(ServerFrame)
ROOM_EVENT_TYPES = (
    "message", "message_update", "turn", "note", "tool_call", "tool_update", "room_update", "member_update",
)  # fmt: skip


def parse_server_frame(text: str) -> ServerFrame:
    """Validate a frame the server sent (clients, tests): raises ValidationError on any drift."""
    return _server_adapter.validate_json(text)


def error_frame(code: str, detail: str, ref: Any = None, retry_after: float | None = None) -> str:
    if isinstance(ref, UUID):
        ref = str(ref)
    wait = round(max(retry_after, 0.01), 2) if retry_after is not None else None
    return ErrorFrame(code=code, detail=detail, ref=ref, retry_after=wait).encode()


def ack_frame(client_id: UUID | str, message_id: int, seq: int) -> str:
    return AckFrame(client_id=str(client_id), message_id=message_id, seq=seq).encode()


def delta_frame(message_id: int, index: int, text: str) -> str:
    return DeltaFrame(message_id=message_id, index=index, text=text).encode()


def snapshot_frame(message_id: int, content: str, next_index: int) -> str:
    return SnapshotFrame(message_id=message_id, content=content, next_index=next_index).encode()


def ready_frame(seq: int) -> str:
    return ReadyFrame(seq=seq).encode()


def pong_frame(latest_seq: int) -> str:
    return PongFrame(latest_seq=latest_seq).encode()


def presence_frame(users: list[dict[str, Any]]) -> str:
    return PresenceFrame(users=[UserRef(**u) for u in users]).encode()


def typing_frame(user: dict[str, Any]) -> str:
    return TypingEventFrame(user=UserRef(**user)).encode()
