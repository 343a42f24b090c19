"""The room socket: parse -> authorize -> service -> answer. Broadcast handlers only send.

Broadcasts reach the socket through the per-process hub (rooms/hub.py), which calls
`hub_message` (rooms/replay.py: seq order, gaps, the backlog during a replay) directly. Database
work runs on the sockets' own threads (rooms/sockets.py), never on the hub's path: a connect is
one database visit (who, which room, the replay), a `send` is one (membership plus the post).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

from rooms import broadcast, metrics, moderation, presence, ratelimit, selectors, services, shutdown, watch
from rooms.auth import has_credentials
from rooms.hub import JOIN_TIMEOUT, HubUnavailable, get_hub
from rooms.protocol import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    CancelFrame,
    FrameError,
    ModerateFrame,
    PingFrame,
    ReportFrame,
    RetryFrame,
    SendFrame,
    SyncFrame,
    ToolApprovalFrame,
    ToolResultFrame,
    TypingFrame,
    ack_frame,
    error_frame,
    parse_client_frame,
    pong_frame,
    typing_frame,
)
from rooms.replay import ReplayMixin
from rooms.selectors import Replay
from rooms.sockets import (
    AccessLost,
    admit_on_db,
    as_standing_member_on_db,
    latest_seq_standing_on_db,
    replay_standing_on_db,
    socket_release,
)
from rooms.standing import ModerationRefused, SocketId
from rooms.turns import TurnRefused, turn_queue

log = logging.getLogger(__name__)
_TYPING_EVERY = 2.0  # seconds: relay at most one typing frame per socket per interval


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Any WebSocket path that is not a room: refused with 4404."""

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)


class RoomConsumer(ReplayMixin, AsyncWebsocketConsumer):
    """One socket of one member in one room."""

    # No channel layer of its own (no layer has this alias): broadcasts come from rooms.hub,
    # so Channels makes no per-socket channel, subscription, queue or receive task.
    channel_layer_alias = "rooms.hub"
    _groups: tuple[str, ...] = ()
    _ended = False
    socket_id: SocketId | None = None  # who this socket is, re-checked while it lives
    _claimed_by = 0  # the user whose SOCKETS_PER_USER count this socket holds (0: none)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.channel_name = f"socket.{uuid.uuid4().hex}"  # this socket in presence and typing
        try:
            await super().__call__(scope, receive, send)
        finally:  # however the socket ended
            self._leave_hub()
            self._release()

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
        admission = await admit_on_db(self.scope, slug, since, subscribe)
        if admission.close_code:
            await self.close(code=admission.close_code)
            return
        self._claimed_by = admission.user.pk  # released when the socket ends
        # in place: this scope is already the router's copy for this socket (a copy would be
        # one more dict held per idle socket)
        self.scope.update(user=admission.user, token_id=admission.token_id)
        self.room_id = admission.room_id
        self.socket_id = SocketId(
            admission.room_id, admission.user.pk, admission.token_id, admission.admitted_at
        )
        user_data = selectors.user_data(admission.user)
        assert user_data is not None  # an admitted socket has a user
        self.user_data = user_data
        self.delta_floor = {}
        self.typing_at = 0.0
        self.bucket = ratelimit.frame_bucket()
        self.sync_bucket = ratelimit.sync_bucket()
        shutdown.track(self)
        watch.watch(self)
        assert admission.replay is not None
        metrics.SOCKETS.inc()  # until disconnect (room_id is set from here on)
        try:
            await self._send_replay(admission.replay, since)
            await self._drain_backlog()
        except AccessLost as exc:  # too far behind (4413), or it lost access between batches
            await self.close(code=exc.code)
            return
        await presence.presence_join(self.room_id, self.channel_name, self.user_data)

    async def disconnect(self, code: int) -> None:
        self._leave_hub()
        self._release()
        if not self.room_id:
            return
        metrics.SOCKETS.dec()
        shutdown.forget(self)
        watch.unwatch(self)
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

    def _release(self) -> None:
        """Give back this socket's place in its user's SOCKETS_PER_USER (once)."""
        if self._claimed_by:
            socket_release(self._claimed_by)
            self._claimed_by = 0

    def _since_param(self) -> int | None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        raw = (query.get("since") or ["0"])[0]
        if not raw.isdigit() or len(raw) > 18:
            return None
        return int(raw)

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
        except AccessLost as exc:  # banned, kicked, removed, deactivated, revoked: even unannounced
            await self.close(code=exc.code)

    async def _as_member(self, action: Callable[..., Any], /, **kwargs: Any) -> Any:
        """Run a service for this socket's member if the socket still stands (AccessLost if not)."""
        assert self.socket_id is not None
        return await as_standing_member_on_db(self.socket_id, action, **kwargs)

    async def _replay_read(self, since: int, start: int | None = None) -> Replay:
        assert self.socket_id is not None
        return await replay_standing_on_db(self.socket_id, since, start)

    async def on_send(self, frame: SendFrame) -> None:
        """Post a message (idempotent per client_id); answer with its `ack`."""
        user = self.scope["user"]
        try:
            result = await self._as_member(
                services.message_post,
                author=user,
                client_id=frame.client_id,
                content=frame.content,
                client_tools=[t.model_dump() for t in frame.tools],
            )
        except services.ClientIdConflict:
            raise FrameError(
                "conflict", "client_id was already used for another message", frame.client_id
            ) from None
        except ratelimit.RateLimited as exc:
            raise FrameError("rate_limited", str(exc), frame.client_id, retry_after=exc.retry_after) from None
        except services.RoomBusy as exc:
            raise FrameError("rate_limited", str(exc), frame.client_id, retry_after=5.0) from None
        except ModerationRefused as exc:  # locked, muted, slow mode, read-only
            raise FrameError(exc.code, str(exc), frame.client_id, retry_after=exc.retry_after) from None
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
            await self._as_member(action, user=user, turn_id=turn_id)
        except TurnRefused as exc:
            raise FrameError(exc.code, str(exc), turn_id) from None

    async def on_sync(self, frame: SyncFrame) -> None:
        """Replay after `since` on this socket, as a fresh connect would (at its own rate: each
        one reads the database; the refusal's `ref` is "sync")."""
        wait = self.sync_bucket.take()
        if wait is not None:
            raise FrameError("rate_limited", "too many syncs; retry later", "sync", retry_after=wait)
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
        assert self.socket_id is not None
        latest = await latest_seq_standing_on_db(self.socket_id)  # the heartbeat re-checks access
        await self.send(text_data=pong_frame(latest))
        await presence.presence_touch(self.room_id, self.channel_name, self.user_data)

    async def on_tool_result(self, frame: ToolResultFrame) -> None:
        """A client tool's answer, from the person whose message started the turn."""
        await self._call_action(
            turn_queue().tool_result, frame.call_id, output=frame.output, error=frame.error
        )

    async def on_tool_approval(self, frame: ToolApprovalFrame) -> None:
        """Approve or deny a call that asks first (its asker, or the room's owner/moderators)."""
        await self._call_action(
            turn_queue().tool_decide, frame.call_id, approved=frame.approved, reason=frame.reason
        )

    async def _call_action(self, action: Callable[..., Any], call_id: str, **kwargs: Any) -> None:
        user = self.scope["user"]
        try:
            await self._as_member(action, user=user, call_id=call_id, **kwargs)
        except TurnRefused as exc:
            raise FrameError(exc.code, str(exc), call_id) from None

    async def on_report(self, frame: ReportFrame) -> None:
        """Flag a message for the moderators (any member)."""
        user = self.scope["user"]
        try:
            await self._as_member(
                moderation.report_create, user=user, message_id=frame.message_id, reason=frame.reason
            )
        except ModerationRefused as exc:
            raise FrameError(exc.code, str(exc), frame.message_id) from None

    async def on_moderate(self, frame: ModerateFrame) -> None:
        """An owner's or moderator's action (rooms.moderation checks who may)."""
        ref = frame.message_id or frame.user_id
        try:
            await self._as_member(
                _moderate, actor=self.scope["user"], action=frame.action, source="socket",
                reason=frame.reason, message_id=frame.message_id, user_id=frame.user_id,
                seconds=frame.seconds, role=frame.role, stop_turns=frame.action == "lock",
            )  # fmt: skip
        except ModerationRefused as exc:
            raise FrameError(exc.code, str(exc), ref) from None

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

    async def room_delta(self, message: dict[str, Any]) -> None:
        """Streamed text, consecutive chunks from `index` on: drop what a snapshot already covered."""
        texts = message["texts"]
        skip = self.delta_floor.get(message["message_id"], 0) - message["index"]
        for text in texts[skip:] if skip > 0 else texts:  # no copy per socket on the usual path
            await self.send(text_data=text)

    async def room_kick(self, message: dict[str, Any]) -> None:
        """A member was banned, kicked or deactivated: close their sockets with its code."""
        if message["user_id"] == self.scope["user"].pk:
            await self.close(code=message.get("code", CLOSE_FORBIDDEN))

    async def user_revoked(self, message: dict[str, Any]) -> None:
        """A token was revoked: close the sockets it opened."""
        if message["token_id"] == self.scope.get("token_id"):
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def room_ephemeral(self, message: dict[str, Any]) -> None:
        if message.get("sender") != self.channel_name:
            await self.send(text_data=message["text"])


def _moderate(*, room: Any, **kwargs: Any) -> Any:
    return moderation.moderation_apply(room=room, **kwargs)
