"""One measured socket: rooms.client.RoomClient plus counters (gaps, syncs, pongs, deltas, acks)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from rooms.client import RoomClient, RoomState


@dataclass
class CountingState(RoomState):
    """RoomState that counts why it asked for a `sync` (the frames it found missing)."""

    gaps: Counter = field(default_factory=Counter)
    gap_log: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, frame: dict[str, Any]) -> bool:
        kind = frame.get("type")
        before_seq = self.last_seq
        expected = None
        if kind == "delta":
            expected = self.next_index.get(frame.get("message_id"), 0)
        need = super().apply(frame)
        if need:
            reason = {"message": "seq", "message_update": "seq", "turn": "seq"}.get(kind, kind)
            self.gaps[reason] += 1
            if len(self.gap_log) < 20:
                entry: dict[str, Any] = {"t": time.time(), "kind": reason, "last_seq": before_seq}
                if kind == "delta":
                    entry.update(message_id=frame["message_id"], index=frame["index"],
                                 expected=expected)  # fmt: skip
                elif kind == "pong":
                    entry["latest_seq"] = frame["latest_seq"]
                else:
                    entry["seq"] = frame.get("seq")
                self.gap_log.append(entry)
        return need


class ProbeClient(RoomClient):
    """A RoomClient (auto-sync on gaps) that also measures what the benchmark reports."""

    def __init__(self, base_url: str, slug: str, token: str, phase: list[str]) -> None:
        super().__init__(base_url, slug, token=token, state=CountingState())
        self.phase = phase  # shared one-element list: the current phase name
        self.syncs = 0
        self.pings: deque[float] = deque()
        self.pongs: list[tuple[str, float, float]] = []  # (phase, seconds, at)
        self.last_pong: float | None = None
        self.deltas = 0
        self.delta_keys: set[tuple[int, int]] = set()
        self.delta_dups = 0
        self.snapshot_floor: dict[int, int] = {}  # message id -> highest snapshot next_index
        self.presence = 0
        self.ack_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ready_at: float | None = None
        self.on_frame = self._observe

    async def _send(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "sync":
            self.syncs += 1
        await super()._send(frame)

    def _observe(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        now = time.monotonic()
        if kind == "pong":
            if self.pings:
                self.pongs.append((self.phase[0], now - self.pings.popleft(), now))
            self.last_pong = now
        elif kind == "delta":
            self.deltas += 1
            key = (frame["message_id"], frame["index"])
            if key in self.delta_keys:
                self.delta_dups += 1
            self.delta_keys.add(key)
        elif kind == "snapshot":
            mid = frame["message_id"]
            self.snapshot_floor[mid] = max(self.snapshot_floor.get(mid, 0), frame["next_index"])
        elif kind == "presence":
            self.presence += 1
        elif kind == "ready" and self.ready_at is None:
            self.ready_at = now
        elif kind in ("ack", "error"):
            ref = frame.get("client_id") if kind == "ack" else frame.get("ref")
            waiter = self.ack_waiters.pop(ref, None) if ref else None
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)

    def deltas_missing(self, keys: set[tuple[int, int]]) -> set[tuple[int, int]]:
        """Chunks (message id, index) that came neither as a delta nor inside a snapshot (the
        server drops deltas a snapshot already covered)."""
        return {(mid, i) for mid, i in keys - self.delta_keys if i >= self.snapshot_floor.get(mid, 0)}

    @property
    def is_open(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def heartbeat(self) -> None:
        self.pings.append(time.monotonic())
        await self.ping()

    async def post(self, content: str, timeout: float = 30.0) -> tuple[dict[str, Any] | None, float]:
        """Send a message; (the `ack` or `error` frame, or None on timeout; seconds waited)."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        t0 = time.monotonic()
        client_id = await self._send_with_waiter(content, waiter)
        try:
            frame = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            self.ack_waiters.pop(client_id, None)
            return None, time.monotonic() - t0
        return frame, time.monotonic() - t0

    async def _send_with_waiter(self, content: str, waiter: asyncio.Future[dict[str, Any]]) -> str:
        import uuid

        client_id = str(uuid.uuid4())
        self.ack_waiters[client_id] = waiter
        await self.send(content, client_id=client_id)
        return client_id
