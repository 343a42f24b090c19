"""The room socket: parse -> authorize -> service -> answer. Broadcast handlers only send.

Broadcasts reach the socket through the per-process hub (rooms/hub.py), which calls
`hub_message` directly. Database work runs on this module's own threads (`_on_db_threads`),
never on the hub's path: a connect is one database visit (who, which room, the replay), a
`send` is one (membership plus the post).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from rooms import broadcast, presence, ratelimit, selectors, services, shutdown
from rooms.auth import has_credentials, socket_user
from rooms.hub import JOIN_TIMEOUT, HubUnavailable, get_hub
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
    ready_frame,
    snapshot_frame,
    typing_frame,
)
from rooms.turns import TurnRefused, turn_queue

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_BAD_REQUEST = 4400
CLOSE_RECONNECT = shutdown.CLOSE_RESTART  # come back with `since` (docs/protocol.md)
_TYPING_EVERY = 2.0  # seconds: relay at most one typing frame per socket per interval
_BACKLOG_MAX = 10_000  # broadcasts held for one socket during a replay; beyond, replay again
_CONTROL = ("room.kick", "user.revoked")  # not in the database: never dropped from a backlog
_BROADCAST_HANDLERS = {
    "room.event": "room_event",
    "room.delta": "room_delta",
    "room.ephemeral": "room_ephemeral",
    "room.kick": "room_kick",
    "user.revoked": "user_revoked",
}
_T = TypeVar("_T")


# --- the database side: sync functions, each one visit, on the sockets' own threads ---------


def _db_threads() -> int:
    """One thread per pooled connection: a call holds one connection for its duration."""
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    if isinstance(pool, dict):
        return int(pool.get("max_size") or pool.get("min_size") or 4)
    return 4 if pool else 8


# Not asgiref's single thread (where every socket of the process would queue, docs/performance.md):
# a pool of threads, created on first use. Channels' wrapper closes the thread's connection
# before and after each call, which with the connection pool returns it to the pool.
_DB_EXECUTOR = ThreadPoolExecutor(max_workers=_db_threads(), thread_name_prefix="room-db")


def _on_db_threads(func: Callable[..., _T]) -> Callable[..., Any]:
    return database_sync_to_async(func, thread_sensitive=False, executor=_DB_EXECUTOR)


@dataclass(frozen=True)
class _Admission:
    """What a connect's database visit decided: a close code, or who joined and the replay."""

    close_code: int = 0
    user: Any = None
    token_id: int | None = None
    room_id: int = 0
    replay: selectors.Replay | None = None


def _admit(
    scope: dict[str, Any], slug: str, since: int, subscribe: Callable[[int, int, int | None], None]
) -> _Admission:
    """A connect's one database visit: the user, the room and their access (joining a public
    room), then, once `subscribe` returns (Redis confirmed), the replay after `since`."""
    user, token_id = socket_user(scope)
    if not user.is_authenticated:
        return _Admission(CLOSE_UNAUTHENTICATED)
    found = services.room_enter(slug=slug, user=user)
    if not found.room_id:
        return _Admission(CLOSE_NOT_FOUND)
    if found.access != "member":
        return _Admission(CLOSE_FORBIDDEN)
    subscribe(found.room_id, user.pk, token_id)  # before reading: nothing falls between replay and live
    replay = selectors.replay_after(room_id=found.room_id, since=since)
    return _Admission(0, user, token_id, found.room_id, replay)


def _as_member(room_id: int, user: Any, ref: Any, action: Callable[..., _T], /, **kwargs: Any) -> _T:
    """`action(room=..., **kwargs)` if the user is still a member (memberships can be removed
    mid-socket): one database visit for a frame that writes."""
    room = selectors.room_of_member(room_id=room_id, user=user)
    if room is None:
        raise FrameError("forbidden", "you are not a member of this room", ref)
    return action(room=room, **kwargs)


_admit_on_db = _on_db_threads(_admit)
_replay_on_db = _on_db_threads(selectors.replay_after)
_as_member_on_db = _on_db_threads(_as_member)
_latest_seq_on_db = _on_db_threads(selectors.room_latest_seq)


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Any WebSocket path that is not a room: refused with 4404."""

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)


class RoomConsumer(AsyncWebsocketConsumer):
    """One socket of one member in one room."""

    # No channel layer of its own (no layer has this alias): broadcasts come from rooms.hub,
    # so Channels makes no per-socket channel, subscription, queue or receive task.
    channel_layer_alias = "rooms.hub"
    room_id: int = 0
    last_seq: int = 0
    _groups: tuple[str, ...] = ()
    _ended = False
    # Broadcasts held while a replay is under way (None: live); `_stale`: replay again first.
    _backlog: deque[dict[str, Any]] | None = None
    _stale = False
    _catch_up_task: asyncio.Task[None] | None = None
    _replaying: asyncio.Lock | None = None  # one replay at a time (`sync`, catch-up)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.channel_name = f"socket.{uuid.uuid4().hex}"  # this socket in presence and typing
        try:
            await super().__call__(scope, receive, send)
        finally:  # however the socket ended
            self._leave_hub()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels first closes stale DB connections on asgiref's single DB thread, for every
        # frame; this consumer's calls run on _DB_EXECUTOR, which returns its connections around
        # each call, so that hop would only queue the process's sockets behind each other.
        await getattr(self, get_handler_name(message))(message)

    # --- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Authorize, subscribe, replay after `since`, then go live."""
        await self.accept()  # accept first so refusals carry a 4xxx code the client can read
        if not has_credentials(self.scope):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        since = self._since_param()
        if since is None:
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        self._backlog = deque()  # broadcasts wait here until the replay is out
        loop = asyncio.get_running_loop()

        def subscribe(room_id: int, user_id: int, token_id: int | None) -> None:
            # Token sockets also hear their user's group (revocation); sessions have no token.
            groups: tuple[str, ...] = (broadcast.room_group(room_id),)
            if token_id is not None:
                groups += (broadcast.user_group(user_id),)
            future = asyncio.run_coroutine_threadsafe(self._join_hub(groups), loop)
            future.result(JOIN_TIMEOUT + 1.0)

        slug = self.scope["url_route"]["kwargs"]["slug"]
        admission = await _admit_on_db(self.scope, slug, since, subscribe)
        if admission.close_code:
            await self.close(code=admission.close_code)
            return
        # in place: this scope is already the router's copy for this socket (a copy would be
        # one more dict held per idle socket)
        self.scope.update(user=admission.user, token_id=admission.token_id)
        self.room_id = admission.room_id
        user_data = selectors.user_data(admission.user)
        assert user_data is not None  # an admitted socket has a user
        self.user_data = user_data
        self.delta_floor: dict[int, int] = {}
        self.typing_at = 0.0
        self.bucket = ratelimit.frame_bucket()
        shutdown.track(self)
        assert admission.replay is not None
        await self._send_replay(admission.replay, since)
        await self._drain_backlog()
        await presence.presence_join(self.room_id, self.channel_name, self.user_data)

    async def disconnect(self, code: int) -> None:
        self._leave_hub()
        if not self.room_id:
            return
        shutdown.forget(self)
        try:
            await presence.presence_leave(self.room_id, self.channel_name)
        except Exception:  # Redis may be the reason we are closing
            log.debug("presence update on disconnect failed", exc_info=True)

    async def _join_hub(self, groups: tuple[str, ...]) -> None:
        if self._ended:  # the socket ended while its connect was reading the database
            raise HubUnavailable("the socket is gone")
        self._groups = groups
        await get_hub().join(self, *groups)

    def _leave_hub(self) -> None:
        self._ended = True
        if self._groups:
            get_hub().leave(self, *self._groups)
            self._groups = ()

    def _since_param(self) -> int | None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        raw = (query.get("since") or ["0"])[0]
        if not raw.isdigit() or len(raw) > 18:
            return None
        return int(raw)

    # --- replay: the database fills what the broadcasts cannot ---------------------------

    async def _send_replay(self, replay: selectors.Replay, since: int) -> None:
        for _seq, text in replay.events:
            await self.send(text_data=text)
        for snap in replay.snapshots:
            self.delta_floor[snap.message_id] = snap.next_index
            await self.send(text_data=snapshot_frame(snap.message_id, snap.content, snap.next_index))
        self.last_seq = max(replay.last, since)
        await self.send(text_data=ready_frame(self.last_seq))

    async def _replay_then_live(self, since: int | None) -> None:
        """Replay after `since` (a `sync`; None: catch up after last_seq), then go live."""
        if self._replaying is None:  # made on first use: most sockets never sync
            self._replaying = asyncio.Lock()
        async with self._replaying:
            if self._backlog is None:
                self._backlog = deque()
            if since is not None:
                self._stale = False
                await self._send_replay(await _replay_on_db(room_id=self.room_id, since=since), since)
            else:
                self._stale = True
            await self._drain_backlog()

    async def _drain_backlog(self) -> None:
        """Apply the broadcasts held during a replay, in order; replay again first if some were
        lost meanwhile (a gap, a Redis reconnect, an overflow). Then the socket is live."""
        assert self._backlog is not None
        while True:
            while self._backlog and not self._stale:
                await self._apply(self._backlog.popleft())
            if not self._stale:
                break
            self._stale = False
            await self._send_replay(
                await _replay_on_db(room_id=self.room_id, since=self.last_seq), self.last_seq
            )
        self._backlog = None

    def _catch_up(self) -> None:
        """Broadcasts were lost: replay after last_seq (after the replay under way, if any)."""
        if self._backlog is not None:
            self._stale = True
            return
        self._backlog = deque()
        self._catch_up_task = asyncio.get_running_loop().create_task(self._catch_up_or_close())

    async def _catch_up_or_close(self) -> None:
        try:
            await self._replay_then_live(None)
        except Exception:  # e.g. the database is away: the client reconnects with `since`
            log.exception("catch-up of a socket in room %s failed; closing it", self.room_id)
            await self.close(code=CLOSE_RECONNECT)

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
            await getattr(self, f"on_{frame.type}")(frame)  # one handler per client frame type
        except FrameError as exc:
            await self.send(text_data=error_frame(exc.code, exc.detail, exc.ref, exc.retry_after))

    async def on_send(self, frame: SendFrame) -> None:
        """Post a message (idempotent per client_id); answer with its `ack`."""
        user = self.scope["user"]
        wait = await ratelimit.message_quota_take(user.pk)
        if wait is not None:
            raise FrameError(
                "rate_limited", "too many messages this minute", frame.client_id, retry_after=wait
            )
        try:
            result = await _as_member_on_db(
                self.room_id,
                user,
                frame.client_id,
                services.message_post,
                author=user,
                client_id=frame.client_id,
                content=frame.content,
            )
        except services.ClientIdConflict:
            raise FrameError(
                "conflict", "client_id was already used for another message", frame.client_id
            ) from None
        except services.RoomBusy as exc:
            raise FrameError("rate_limited", str(exc), frame.client_id, retry_after=5.0) from None
        await self.send(text_data=ack_frame(frame.client_id, result.message_id, result.seq))

    async def on_cancel(self, frame: CancelFrame) -> None:
        """Stop a running turn or withdraw a queued one."""
        await self._turn_action(turn_queue().cancel, frame.turn_id)

    async def on_retry(self, frame: RetryFrame) -> None:
        """Continue an interrupted or failed turn."""
        await self._turn_action(turn_queue().retry, frame.turn_id)

    async def _turn_action(self, action: Callable[..., Any], turn_id: int) -> None:
        user = self.scope["user"]
        try:
            await _as_member_on_db(self.room_id, user, turn_id, action, user=user, turn_id=turn_id)
        except TurnRefused as exc:
            raise FrameError(exc.code, str(exc), turn_id) from None

    async def on_sync(self, frame: SyncFrame) -> None:
        """Replay after `since` on this socket, as a fresh connect would."""
        await self._replay_then_live(frame.since)

    async def on_typing(self, frame: TypingFrame) -> None:
        """Relay "typing" to the others, at most once per interval per socket."""
        now = time.monotonic()
        if now - self.typing_at < _TYPING_EVERY:
            return
        self.typing_at = now
        await broadcast.send_to_room(
            self.room_id, broadcast.ephemeral_message(typing_frame(self.user_data), self.channel_name)
        )

    async def on_ping(self, frame: PingFrame) -> None:
        """Answer with the room's latest seq; refresh this socket's presence."""
        latest = await _latest_seq_on_db(room_id=self.room_id)
        await self.send(text_data=pong_frame(latest))
        await presence.presence_touch(self.room_id, self.channel_name, self.user_data)

    async def on_tool_result(self, frame: ToolResultFrame) -> None:
        raise FrameError("unsupported", "this room has no client-side tools", frame.call_id)

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        """Send, unless the client is already gone (it left mid-answer: nothing to tell it)."""
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except Exception as exc:
            # autobahn's Disconnected under Daphne, uvicorn's ClientDisconnected under uvicorn
            if type(exc).__name__ not in ("Disconnected", "ClientDisconnected"):
                raise

    # --- broadcasts, from rooms.hub (no database work on this path) ------------------------

    async def hub_message(self, message: dict[str, Any]) -> None:
        """A broadcast: applied now, or held until the replay under way is out."""
        if self._backlog is None:
            await self._apply(message)
            return
        if len(self._backlog) >= _BACKLOG_MAX:  # too far behind: the next replay restores it
            self._backlog = deque(m for m in self._backlog if m["type"] in _CONTROL)
            self._stale = True
        self._backlog.append(message)

    def hub_resync(self) -> None:
        """The hub lost its Redis connection: broadcasts may be lost, catch up."""
        self._catch_up()

    async def _apply(self, message: dict[str, Any]) -> None:
        name = _BROADCAST_HANDLERS.get(message.get("type", ""))
        if name is None:
            log.debug("ignored a broadcast of type %r", message.get("type"))
            return
        await getattr(self, name)(message)

    async def room_event(self, message: dict[str, Any]) -> None:
        """A committed room event: send it once, in seq order; fill a gap from the database."""
        seq = message["seq"]
        if seq <= self.last_seq:
            return
        if seq > self.last_seq + 1:
            self._catch_up()  # a broadcast was lost; this one comes back with the replay
            return
        self.last_seq = seq
        await self.send(text_data=message["text"])

    async def room_delta(self, message: dict[str, Any]) -> None:
        """Streamed text, consecutive chunks from `index` on: drop what a snapshot already covered."""
        texts = message["texts"]
        skip = self.delta_floor.get(message["message_id"], 0) - message["index"]
        for text in texts[skip:] if skip > 0 else texts:  # no copy per socket on the usual path
            await self.send(text_data=text)

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
