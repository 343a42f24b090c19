"""The room socket: parse -> authorize -> service -> answer. Broadcast handlers only send."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from agents.queue import CancelRefused, turn_cancel, turn_retry
from rooms import broadcast, presence, ratelimit, selectors, shutdown
from rooms.models import Room
from rooms.protocol import (
    CancelFrame,
    FrameError,
    PingFrame,
    RetryFrame,
    SendFrame,
    SyncFrame,
    ToolResultFrame,
    TypingFrame,
    ack_frame,
    error_frame,
    parse_client_frame,
    pong_frame,
    presence_frame,
    ready_frame,
    snapshot_frame,
    typing_frame,
)
from rooms.services import ClientIdConflict, RoomBusy, membership_join, message_post

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_BAD_REQUEST = 4400
_TYPING_EVERY = 2.0  # seconds: relay at most one typing frame per socket per interval


def _room_for(slug: str, user: Any) -> tuple[Any, str]:
    room = selectors.room_by_slug(slug=slug)
    if room is None:
        return None, "not_found"
    access = selectors.room_access(room=room, user=user)
    if access == "can_join":
        membership_join(room=room, user=user)
        access = "member"
    return room, access


def _member_room(room_id: int, user: Any) -> Any:
    room = Room.objects.filter(pk=room_id).first()
    if room is None or selectors.membership_of(room=room, user=user) is None:
        return None
    return room


def _replay(room_id: int, since: int) -> tuple[list[tuple[int, str]], list[selectors.Snapshot], int]:
    """Every event after `since` (in batches, until none are left), then the snapshots."""
    events: list[tuple[int, str]] = []
    cursor = since
    while True:
        batch = selectors.events_after(room_id=room_id, since=cursor, limit=settings.CHAT_REPLAY_BATCH)
        events.extend(batch)
        if len(batch) < settings.CHAT_REPLAY_BATCH:
            break
        cursor = batch[-1][0]
    snapshots = selectors.snapshots_streaming(room_id=room_id)
    return events, snapshots, (events[-1][0] if events else since)


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Any WebSocket path that is not a room: refused with 4404."""

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)


class RoomConsumer(AsyncWebsocketConsumer):
    """One socket of one member in one room."""

    room_id: int = 0
    last_seq: int = 0

    # --- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Authorize, subscribe, replay after `since`, then go live."""
        await self.accept()  # accept first so refusals carry a 4xxx code the client can read
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        since = self._since_param()
        if since is None:
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        slug = self.scope["url_route"]["kwargs"]["slug"]
        room, access = await database_sync_to_async(_room_for)(slug, user)
        if room is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        if access != "member":
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.room_id = room.pk
        self.user_data = selectors.user_data(user)
        self.delta_floor: dict[int, int] = {}
        self.typing_at = 0.0
        self.bucket = ratelimit.frame_bucket()
        shutdown.track(self)
        # Subscribe before reading the database: nothing falls between replay and live.
        await self.channel_layer.group_add(broadcast.room_group(self.room_id), self.channel_name)
        await self.channel_layer.group_add(broadcast.user_group(user.pk), self.channel_name)
        await self._send_replay(since)
        await presence.presence_touch(self.room_id, self.channel_name, self.user_data)
        await self._announce_presence()

    async def disconnect(self, code: int) -> None:
        if not self.room_id:
            return
        shutdown.forget(self)
        await self.channel_layer.group_discard(broadcast.room_group(self.room_id), self.channel_name)
        await self.channel_layer.group_discard(broadcast.user_group(self.scope["user"].pk), self.channel_name)
        try:
            await presence.presence_leave(self.room_id, self.channel_name)
            await self._announce_presence()
        except Exception:  # Redis may be the reason we are closing
            log.debug("presence update on disconnect failed", exc_info=True)

    def _since_param(self) -> int | None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        raw = (query.get("since") or ["0"])[0]
        if not raw.isdigit() or len(raw) > 18:
            return None
        return int(raw)

    async def _send_replay(self, since: int) -> None:
        events, snapshots, last = await database_sync_to_async(_replay)(self.room_id, since)
        for _seq, text in events:
            await self.send(text_data=text)
        for snap in snapshots:
            self.delta_floor[snap.message_id] = snap.next_index
            await self.send(text_data=snapshot_frame(snap.message_id, snap.content, snap.next_index))
        self.last_seq = max(last, since)
        await self.send(text_data=ready_frame(self.last_seq))

    async def _announce_presence(self) -> None:
        users = await presence.presence_list(self.room_id)
        await broadcast.send_to_room(self.room_id, broadcast.ephemeral_message(presence_frame(users)))

    # --- client frames --------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Parse one frame and route it by type; a bad frame gets an `error`, nothing else."""
        if not self.room_id:
            return
        try:
            wait = self.bucket.take()
            if wait is not None:
                raise FrameError("rate_limited", "too many frames; slow down", retry_after=wait)
            frame = parse_client_frame(text_data, bytes_data)
            if isinstance(frame, SendFrame):
                await self._on_send(frame)
            elif isinstance(frame, CancelFrame):
                await self._on_cancel(frame)
            elif isinstance(frame, RetryFrame):
                await self._on_retry(frame)
            elif isinstance(frame, SyncFrame):
                await self._send_replay(frame.since)
            elif isinstance(frame, TypingFrame):
                await self._on_typing()
            elif isinstance(frame, PingFrame):
                await self._on_ping()
            elif isinstance(frame, ToolResultFrame):
                raise FrameError("unsupported", "this room has no client-side tools", frame.call_id)
        except FrameError as exc:
            await self.send(text_data=error_frame(exc.code, exc.detail, exc.ref, exc.retry_after))

    async def _room_for_write(self, ref: Any) -> Any:
        """The room, if this user is still a member (memberships can be removed mid-socket)."""
        room = await database_sync_to_async(_member_room)(self.room_id, self.scope["user"])
        if room is None:
            raise FrameError("forbidden", "you are not a member of this room", ref)
        return room

    async def _on_send(self, frame: SendFrame) -> None:
        room = await self._room_for_write(frame.client_id)
        wait = await ratelimit.message_quota_take(self.scope["user"].pk)
        if wait is not None:
            raise FrameError(
                "rate_limited", "too many messages this minute", frame.client_id, retry_after=wait
            )
        try:
            result = await database_sync_to_async(message_post)(
                room=room, author=self.scope["user"], client_id=frame.client_id, content=frame.content
            )
        except ClientIdConflict:
            raise FrameError(
                "conflict", "client_id was already used for another message", frame.client_id
            ) from None
        except RoomBusy as exc:
            raise FrameError("rate_limited", str(exc), frame.client_id, retry_after=5.0) from None
        await self.send(text_data=ack_frame(frame.client_id, result.message_id, result.seq))

    async def _on_cancel(self, frame: CancelFrame) -> None:
        room = await self._room_for_write(frame.turn_id)
        try:
            await database_sync_to_async(turn_cancel)(
                room=room, user=self.scope["user"], turn_id=frame.turn_id
            )
        except CancelRefused as exc:
            raise FrameError(exc.code, str(exc), frame.turn_id) from None

    async def _on_retry(self, frame: RetryFrame) -> None:
        room = await self._room_for_write(frame.turn_id)
        try:
            await database_sync_to_async(turn_retry)(
                room=room, user=self.scope["user"], turn_id=frame.turn_id
            )
        except CancelRefused as exc:
            raise FrameError(exc.code, str(exc), frame.turn_id) from None

    async def _on_typing(self) -> None:
        now = time.monotonic()
        if now - self.typing_at < _TYPING_EVERY:
            return
        self.typing_at = now
        await broadcast.send_to_room(
            self.room_id, broadcast.ephemeral_message(typing_frame(self.user_data), self.channel_name)
        )

    async def _on_ping(self) -> None:
        latest = await database_sync_to_async(selectors.room_latest_seq)(room_id=self.room_id)
        await self.send(text_data=pong_frame(latest))
        await presence.presence_touch(self.room_id, self.channel_name, self.user_data)

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        """Send, unless the client is already gone (it left mid-answer: nothing to tell it)."""
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except Exception as exc:
            if type(exc).__name__ != "Disconnected":  # autobahn's, under Daphne
                raise

    # --- broadcasts (no database work on the fast path) -----------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale DB connections in the thread pool before *every* handler;
        # broadcast handlers touch no database, so they skip that hop (research/perf-floors.md).
        if message["type"] in ("room.event", "room.delta", "room.ephemeral"):
            handler = getattr(self, message["type"].replace(".", "_"))
            await handler(message)
            return
        await super().dispatch(message)

    async def room_event(self, message: dict[str, Any]) -> None:
        """A committed room event: send it once, in seq order; fill a gap from the database."""
        seq = message["seq"]
        if seq <= self.last_seq:
            return
        if seq > self.last_seq + 1:
            await self._send_replay(self.last_seq)  # a broadcast was lost: catch up
            return
        self.last_seq = seq
        await self.send(text_data=message["text"])

    async def room_delta(self, message: dict[str, Any]) -> None:
        """Streamed text: drop what a snapshot already covered."""
        floor = self.delta_floor.get(message["message_id"])
        if floor is not None and message["index"] < floor:
            return
        await self.send(text_data=message["text"])

    async def room_kick(self, message: dict[str, Any]) -> None:
        """A member was banned: close their sockets."""
        if message["user_id"] == self.scope["user"].pk:
            await self.close(code=CLOSE_FORBIDDEN)

    async def user_revoked(self, message: dict[str, Any]) -> None:
        """A token was revoked: close the sockets it opened."""
        if message["token_id"] == self.scope.get("token_id"):
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def room_ephemeral(self, message: dict[str, Any]) -> None:
        if message.get("sender") != self.channel_name:
            await self.send(text_data=message["text"])
