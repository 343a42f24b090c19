"""A socket's replay: the database fills what the broadcasts cannot.

A connect, a `sync` or a lost broadcast (a seq gap, a Redis reconnect) sends the room's events
after the socket's last seq from the database; broadcasts that arrive meanwhile wait in a
backlog and are applied after it, in order, each room event once. The consumer mixes this in.

A replay is read and sent in batches (CHAT_REPLAY_BATCH events), so a socket far behind holds
one batch, not the room's history; one that is more than CHAT_REPLAY_MAX_EVENTS behind, or
whose replay passes CHAT_REPLAY_MAX_BYTES, is closed with 4413 (ReplayTooLong): the client
reloads the page, which starts from a fresh transcript.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from django.conf import settings

from rooms import metrics, selectors
from rooms.protocol import ready_frame, snapshot_frame
from rooms.shutdown import CLOSE_RESTART
from rooms.sockets import AccessLost, ReplayTooLong, replay_on_db

log = logging.getLogger(__name__)
_BACKLOG_MAX = 10_000  # broadcasts held for one socket during a replay; beyond, replay again
_CONTROL = ("room.kick", "user.revoked")  # not in the database: never dropped from a backlog
_BROADCAST_HANDLERS = {
    "room.event": "room_event",
    "room.delta": "room_delta",
    "room.ephemeral": "room_ephemeral",
    "room.kick": "room_kick",
    "user.revoked": "user_revoked",
}


class ReplayMixin:
    """Seq order, gaps and the backlog of one socket (needs `send`, `close` and `room_id`)."""

    room_id: int = 0
    last_seq: int = 0
    delta_floor: dict[int, int]
    # Broadcasts held while a replay is under way (None: live); `_stale`: replay again first.
    _backlog: deque[dict[str, Any]] | None = None
    _stale = False
    _catch_up_task: asyncio.Task[None] | None = None
    _replaying: asyncio.Lock | None = None  # one replay at a time (`sync`, catch-up)

    if TYPE_CHECKING:  # the consumer's: declared only, at run time they must not shadow it

        async def send(
            self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
        ) -> None: ...

        async def close(self, code: int | bool | None = None, reason: str | None = None) -> None: ...

    async def _send_replay(self, replay: selectors.Replay, since: int) -> None:
        """Send the replay after `since`, starting with its first batch, reading the next batch
        only once this one is out; then the snapshots and `ready`. ReplayTooLong past a cap."""
        sent_bytes = sent_events = 0
        while True:
            if replay.too_far:
                raise ReplayTooLong()
            for _seq, text in replay.events:
                await self.send(text_data=text)
                sent_bytes += len(text)
            sent_events += len(replay.events)
            if not replay.more:
                break
            if sent_bytes > settings.CHAT_REPLAY_MAX_BYTES:
                raise ReplayTooLong()
            replay = await self._replay_read(since, replay.last)
        metrics.REPLAY_EVENTS.observe(sent_events)
        for snap in replay.snapshots:
            self.delta_floor[snap.message_id] = snap.next_index
            await self.send(text_data=snapshot_frame(snap.message_id, snap.content, snap.next_index))
        self.last_seq = max(replay.last, since)
        await self.send(text_data=ready_frame(self.last_seq))

    async def _replay_read(self, since: int, start: int | None = None) -> selectors.Replay:
        """A batch of the replay after `since` from the database, from `start` on (the consumer
        also checks its standing)."""
        return await replay_on_db(room_id=self.room_id, since=since, start=start)

    async def _replay_then_live(self, since: int | None) -> None:
        """Replay after `since` (a `sync`; None: catch up after last_seq), then go live."""
        if self._replaying is None:  # made on first use: most sockets never sync
            self._replaying = asyncio.Lock()
        async with self._replaying:
            if self._backlog is None:
                self._backlog = deque()
            if since is not None:
                self._stale = False
                await self._send_replay(await self._replay_read(since), since)
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
            await self._send_replay(await self._replay_read(self.last_seq), self.last_seq)
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
        except AccessLost as exc:  # the broadcast that should have closed it was lost
            await self.close(code=exc.code)
        except Exception:  # e.g. the database is away: the client reconnects with `since`
            log.exception("catch-up of a socket in room %s failed; closing it", self.room_id)
            await self.close(code=CLOSE_RESTART)

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
