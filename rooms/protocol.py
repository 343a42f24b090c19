"""The wire frames as typed models: the only place their shapes are defined (docs/protocol.md)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from uuid import UUID

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

# --- client to server ---------------------------------------------------------------------


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SendFrame(_Frame):
    type: Literal["send"]
    client_id: UUID
    content: str

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
    type: Literal["tool_result"]
    call_id: Annotated[str, Field(min_length=1, max_length=100)]
    output: Any = None
    error: str | None = None


ClientFrame = Annotated[
    SendFrame | CancelFrame | RetryFrame | SyncFrame | TypingFrame | PingFrame | ToolResultFrame,
    Field(discriminator="type"),
]
_client_adapter: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
CLIENT_TYPES = frozenset({"send", "cancel", "retry", "sync", "typing", "ping", "tool_result"})


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
    ref = data.get("client_id", data.get("turn_id"))
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


def dumps(frame: dict[str, Any]) -> str:
    """Encode a server frame once; the same text goes to every socket."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def error_frame(code: str, detail: str, ref: Any = None, retry_after: float | None = None) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if ref is not None:
        frame["ref"] = str(ref) if isinstance(ref, UUID) else ref
    if retry_after is not None:
        frame["retry_after"] = round(max(retry_after, 0.01), 2)
    return dumps(frame)


def ack_frame(client_id: UUID | str, message_id: int, seq: int) -> str:
    return dumps({"type": "ack", "client_id": str(client_id), "message_id": message_id, "seq": seq})


def delta_frame(message_id: int, index: int, text: str) -> str:
    return dumps({"type": "delta", "message_id": message_id, "index": index, "text": text})


def snapshot_frame(message_id: int, content: str, next_index: int) -> str:
    return dumps({"type": "snapshot", "message_id": message_id, "content": content, "next_index": next_index})


def ready_frame(seq: int) -> str:
    return dumps({"type": "ready", "seq": seq})


def pong_frame(latest_seq: int) -> str:
    return dumps({"type": "pong", "latest_seq": latest_seq})


def presence_frame(users: list[dict[str, Any]]) -> str:
    return dumps({"type": "presence", "users": users})


def typing_frame(user: dict[str, Any]) -> str:
    return dumps({"type": "typing", "user": user})


ROOM_EVENT_TYPES = ("message", "message_update", "turn")
