"""Following one turn from an HTTP request: its answer's text as it streams, then how it ended.

A follower is a member of the room's group on the process's hub (rooms/hub.py), like a socket:
it joins before it reads the database, so nothing falls between the read and the broadcasts.
Broadcast deltas of the answer carry the text (no database work on that path); a `turn` event
of its turn, a gap in the delta indexes, a lost Redis connection or a quiet `API_FOLLOW_POLL`
make it read the database again (the truth: rule 1). It holds no thread: the request's
coroutine waits on an asyncio event between updates.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from rooms import broadcast
from rooms.api import actions
from rooms.hub import HubUnavailable, get_hub
from rooms.protocol import TurnData
from rooms.sockets import on_db_threads

log = logging.getLogger(__name__)
_progress_on_db = on_db_threads(actions.turn_progress)
_TURN_EVENT = '{"type":"turn",'  # how a stored `turn` event's text starts (rooms.protocol)


@dataclass(frozen=True)
class Update:
    """What changed since the last update: new text of the answer, and the turn as it is now."""

    text: str
    turn: TurnData | None
    settled: bool  # the turn ended (its text is complete), or no turn answers the message


class TurnFollower:
    """The turn a message triggered, followed (one per request; not shared)."""

    def __init__(self, *, room_id: int, trigger_message_id: int, text: bool = True) -> None:
        self.room_id = room_id
        self.trigger_message_id = trigger_message_id
        self.text = text  # follow the answer's text (else only the turn's status)
        self.turn: TurnData | None = None
        self.answer_id: int | None = None
        self.next_index = 0
        self._bell = asyncio.Event()
        self._stale = True  # read the database before trusting the broadcasts
        self._deltas: list[tuple[int, list[str]]] = []  # (first index, delta frames) of the answer

    # --- the hub's member protocol (must not wait) ------------------------------------------

    async def hub_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "room.delta" and self.text:
            if self.answer_id is None or message["message_id"] == self.answer_id:
                if self.answer_id is None:  # not known yet: the next database read says
                    self._stale = True
                else:
                    self._deltas.append((message["index"], message["texts"]))
                self._bell.set()
        elif kind == "room.event" and message["text"].startswith(_TURN_EVENT):
            turn = json.loads(message["text"])["turn"]
            if turn["trigger_message_id"] == self.trigger_message_id:
                self._stale = True
                self._bell.set()

    def hub_resync(self) -> None:
        self._stale = True
        self._bell.set()

    # --- following ----------------------------------------------------------------------------

    async def updates(self) -> AsyncGenerator[Update, None]:
        """Updates until the turn has settled (the last one says `settled`); while nothing
        happens, one after `API_FOLLOW_POLL` seconds, then less often, at least once per
        `API_STREAM_KEEPALIVE` (so callers can keep a stream alive)."""
        group = broadcast.room_group(self.room_id)
        joined = False
        try:
            try:
                await get_hub().join(self, group)
                joined = True
            except HubUnavailable:  # Redis is away: follow the database alone, by polling
                log.warning("following room %s without broadcasts (Redis unavailable)", self.room_id)
            poll = settings.API_FOLLOW_POLL
            while True:
                text, settled = await self._step()
                yield Update(text, self.turn, settled)
                if settled:
                    return
                if not joined:
                    self._stale = True
                try:
                    await asyncio.wait_for(self._bell.wait(), poll)
                    poll = settings.API_FOLLOW_POLL
                except TimeoutError:
                    self._stale = True
                    # a quiet turn (queued behind others, parked for a person) is read less
                    # and less often, down to once per keep-alive interval
                    poll = min(poll * 2, max(settings.API_FOLLOW_POLL, settings.API_STREAM_KEEPALIVE))
                self._bell.clear()
        finally:
            if joined:
                get_hub().leave(self, group)

    async def _step(self) -> tuple[str, bool]:
        """New text (from broadcasts, or the database when they may have missed some)."""
        pieces = self._from_deltas()
        if not self._stale:
            return "".join(pieces), False
        self._stale = False
        self._deltas.clear()
        progress = await _progress_on_db(
            room_id=self.room_id,
            trigger_message_id=self.trigger_message_id,
            from_index=self.next_index if self.text else None,
        )
        self.turn = progress.turn
        if progress.turn is not None and progress.turn.message_id is not None:
            self.answer_id = progress.turn.message_id
        pieces += progress.chunks
        self.next_index += len(progress.chunks)
        settled = progress.turn is None or progress.turn.status in actions.SETTLED
        return "".join(pieces), settled

    def _from_deltas(self) -> list[str]:
        pieces: list[str] = []
        batches, self._deltas = self._deltas, []
        for first, frames in batches:
            for offset, frame in enumerate(frames):
                index = first + offset
                if index < self.next_index:
                    continue  # already had it
                if index > self.next_index:  # a delta was lost: the database fills the gap
                    self._stale = True
                    return pieces
                pieces.append(json.loads(frame)["text"])
                self.next_index += 1
        return pieces
