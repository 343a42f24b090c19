"""A Python client for the room protocol (docs/protocol.md): tests, benchmarks and `manage.py chat`.

`RoomState` applies frames by the client rules (seq order, delta indexes, snapshots) and says
when the client must `sync`; `RoomClient` owns the socket, records every frame it receives,
resends unacked messages after a reconnect and syncs on gaps by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from pydantic import ValidationError

from rooms.protocol import ROOM_EVENT_TYPES, parse_server_frame

log = logging.getLogger(__name__)


@dataclass
class MessageView:
    id: int
    seq: int
    role: str
    status: str
    content: str
    author: dict[str, Any] | None = None
    turn_id: int | None = None


@dataclass
class RoomState:
    """What a client knows of a room, built only from frames."""

    last_seq: int = 0
    messages: dict[int, MessageView] = field(default_factory=dict)
    next_index: dict[int, int] = field(default_factory=dict)
    turns: dict[int, dict[str, Any]] = field(default_factory=dict)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # call id -> the last ToolCallData
    notes: dict[int, dict[str, Any]] = field(default_factory=dict)  # note id -> note
    applied_seqs: list[int] = field(default_factory=list)
    pending_snapshots: dict[int, dict[str, Any]] = field(default_factory=dict)
    duplicate_deltas: int = 0

    def apply(self, frame: dict[str, Any]) -> bool:
        """Apply one frame; True if the client must `sync` (it saw a gap)."""
        kind = frame.get("type")
        if kind in ROOM_EVENT_TYPES:  # every room event takes the next seq, known to us or not
            seq = frame["seq"]
            if seq <= self.last_seq:
                return False
            if seq > self.last_seq + 1:
                return True
            self.last_seq = seq
            self.applied_seqs.append(seq)
            if kind == "turn":
                self.turns[frame["turn"]["id"]] = frame["turn"]
            elif kind in ("tool_call", "tool_update"):
                self.calls[frame["call"]["id"]] = frame["call"]
            elif kind == "note":
                self.notes[frame["note"]["id"]] = frame["note"]
            elif kind in ("message", "message_update"):
                m = frame["message"]
                self.messages[m["id"]] = MessageView(
                    m["id"], m["seq"], m["role"], m["status"], m["content"], m["author"], m["turn_id"]
                )
                if m["status"] == "streaming" and kind == "message":
                    self.next_index.setdefault(m["id"], 0)
                    early = self.pending_snapshots.pop(m["id"], None)
                    if early is not None:  # the snapshot overtook the message event
                        self.apply(early)
                elif m["status"] != "streaming":
                    self.next_index.pop(m["id"], None)
            return False
        if kind == "delta":
            mid, index = frame["message_id"], frame["index"]
            msg = self.messages.get(mid)
            if msg is None or msg.status != "streaming":
                return False  # finished already (its final content came in message_update)
            expected = self.next_index.get(mid, 0)
            if index < expected:
                self.duplicate_deltas += 1
                return False
            if index > expected:
                return True
            msg.content += frame["text"]
            self.next_index[mid] = expected + 1
            return False
        if kind == "snapshot":
            mid = frame["message_id"]
            msg = self.messages.get(mid)
            if msg is None:
                self.pending_snapshots[mid] = frame
            elif msg.status == "streaming" and frame["next_index"] >= self.next_index.get(mid, 0):
                msg.content = frame["content"]
                self.next_index[mid] = frame["next_index"]
            return False
        if kind == "ready":
            self.last_seq = max(self.last_seq, frame["seq"])
        if kind == "pong":
            return frame["latest_seq"] > self.last_seq
        return False

    def transcript(self) -> list[tuple[int, str, str, str]]:
        """(seq, role, status, content) of every message, in seq order."""
        return [
            (m.seq, m.role, m.status, m.content) for m in sorted(self.messages.values(), key=lambda m: m.seq)
        ]


class RoomClient:
    """One socket to one room, with resume: `await client.connect()` returns after `ready`."""

    def __init__(
        self,
        base_url: str,
        slug: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        since: int = 0,
        state: RoomState | None = None,
    ) -> None:
        self.ws_url = base_url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
        self.slug = slug
        self.headers = dict(headers or {})
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.state = state or RoomState(last_seq=since)
        self.frames: list[dict[str, Any]] = []  # every frame received, in order
        self.acks: dict[str, dict[str, Any]] = {}
        self.errors: list[dict[str, Any]] = []
        self.malformed: list[str] = []  # frames that are not one of the server frames as typed
        self.unacked: dict[str, str] = {}
        self.unacked_tools: dict[str, list[dict[str, Any]]] = {}  # the client tools of unacked sends
        self.ws: Any = None
        self.ready = asyncio.Event()
        self.close_code: int | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._sync_later = False  # a refused `sync` will be sent again (once) after its retry_after
        self._reader: asyncio.Task[None] | None = None
        self.on_frame: Callable[[dict[str, Any]], None] | None = None

    async def connect(self, timeout: float = 10.0) -> None:
        """Open the socket with `since = last_seq`, wait for `ready`, resend unacked sends."""
        self.ready.clear()
        url = f"{self.ws_url}/ws/rooms/{self.slug}/?since={self.state.last_seq}"
        self.ws = await websockets.connect(
            url, additional_headers=self.headers, max_size=None, open_timeout=timeout
        )
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self._wait_ready_or_close(), timeout)
        for client_id, content in list(self.unacked.items()):
            await self._send(self._send_frame(client_id, content))

    async def _wait_ready_or_close(self) -> None:
        assert self._reader is not None
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait({ready, self._reader}, return_when=asyncio.FIRST_COMPLETED)
        if not self.ready.is_set():
            ready.cancel()
            raise ConnectionError(f"closed before ready (code {self.close_code})")

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                try:
                    parse_server_frame(raw)
                except ValidationError as exc:
                    log.warning("malformed server frame %.200s: %s", raw, exc)
                    self.malformed.append(raw)
                frame = json.loads(raw)
                self.frames.append(frame)
                kind = frame.get("type")
                if kind == "ack":
                    self.acks[frame["client_id"]] = frame
                    self.unacked.pop(frame["client_id"], None)
                    self.unacked_tools.pop(frame["client_id"], None)
                elif kind == "error":
                    self.errors.append(frame)
                    if frame.get("ref") == "sync" and not self._sync_later:
                        # syncs have their own rate: ask again once, later
                        self._sync_later = True
                        asyncio.get_running_loop().call_later(
                            float(frame.get("retry_after") or 1.0), self._sync_again
                        )
                if self.state.apply(frame):
                    await self._send({"type": "sync", "since": self.state.last_seq})
                if kind == "ready":
                    self.ready.set()
                if self.on_frame is not None:
                    try:
                        self.on_frame(frame)
                    except Exception:  # a display bug must not stop the socket reader
                        log.exception("on_frame failed for %s", kind)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code if self.ws is not None else None

    def _sync_again(self) -> None:
        self._sync_later = False
        if self.ws is not None and self.close_code is None:
            task = asyncio.get_running_loop().create_task(
                self._send({"type": "sync", "since": self.state.last_seq})
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _send(self, frame: dict[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps(frame))
        except websockets.ConnectionClosed:
            pass  # resent after reconnect if it was a `send`

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send(text)

    async def send(
        self, content: str, client_id: str | None = None, tools: list[dict[str, Any]] | None = None
    ) -> str:
        """Post a message, offering `tools` (client tools: {name, description, parameters}) for
        the turn it starts; returns its client_id (resent on reconnect until acked)."""
        client_id = client_id or str(uuid.uuid4())
        self.unacked[client_id] = content
        if tools:
            self.unacked_tools[client_id] = tools
        await self._send(self._send_frame(client_id, content))
        return client_id

    def _send_frame(self, client_id: str, content: str) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "send", "client_id": client_id, "content": content}
        if client_id in self.unacked_tools:
            frame["tools"] = self.unacked_tools[client_id]
        return frame

    async def approve(self, call_id: str, approved: bool = True, reason: str | None = None) -> None:
        """Decide a call that asks first (its asker, or the room's owner or a moderator)."""
        frame: dict[str, Any] = {"type": "tool_approval", "call_id": call_id, "approved": approved}
        if reason is not None:
            frame["reason"] = reason
        await self._send(frame)

    tool_approval = approve

    async def tool_result(self, call_id: str, output: Any = None, error: str | None = None) -> None:
        """Answer a client tool's call: its `output`, or `error` if it could not run."""
        frame: dict[str, Any] = {"type": "tool_result", "call_id": call_id}
        if error is not None:
            frame["error"] = error
        else:
            frame["output"] = output
        await self._send(frame)

    async def cancel(self, turn_id: int) -> None:
        await self._send({"type": "cancel", "turn_id": turn_id})

    async def ping(self) -> None:
        await self._send({"type": "ping"})

    async def sync(self) -> None:
        await self._send({"type": "sync", "since": self.state.last_seq})

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def drop(self) -> None:
        """Lose the connection abruptly (no close handshake), as a network failure would."""
        if self.ws is not None:
            self.ws.transport.abort()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def reconnect(self, timeout: float = 10.0) -> None:
        await self.close()
        await self.connect(timeout)

    async def wait_for(self, predicate: Callable[[RoomClient], bool], timeout: float = 20.0) -> None:
        """Wait until `predicate(self)` holds (checked after every frame)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met in {timeout}s; last frames: {self.frames[-5:]}")
            if self._reader is not None and self._reader.done() and not predicate(self):
                raise ConnectionError(f"socket closed (code {self.close_code})")
            await asyncio.sleep(0.01)

    async def wait_ack(self, client_id: str, timeout: float = 10.0) -> dict[str, Any]:
        await self.wait_for(lambda c: client_id in c.acks, timeout)
        return self.acks[client_id]

    def message_status(self, message_id: int) -> str | None:
        m = self.state.messages.get(message_id)
        return m.status if m else None
