"""How rooms reaches the assistant's turn queue without importing it.

The queue is a backend named by a dotted path in `settings.ROOM_TURN_QUEUE` (the way
`django.contrib.messages` picks its storage): `rooms` calls this interface, `agents` implements
it (`agents.hook.RoomTurnQueue`), and data flows one way. A test checks that no module of
`rooms` imports `agents`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from rooms.events import Row
    from rooms.models import Room
    from rooms.protocol import RoomEvent, ToolCallData, TurnData


@dataclass(frozen=True)
class ToolInfo:
    """A server tool as the room settings page shows it."""

    name: str
    description: str
    side_effects: bool
    ask_first: bool  # its default


@dataclass(frozen=True)
class AgentSetup:
    """A room set up as an agent (docs/agents.md): its tool's name and what it is good for."""

    enabled: bool
    name: str
    description: str


@dataclass(frozen=True)
class AgentChoice:
    """An agent the room's owner may let the room's assistant call."""

    id: int
    tool_name: str
    title: str
    description: str
    chosen: bool


class TurnRefused(Exception):
    """A turn action this user may not take now; `code` is the wire error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class TurnQueue(Protocol):
    """What rooms asks of the turn queue."""

    def wanted(self, *, room: Room, content: str) -> bool:
        """Whether this message should get an answer."""

    def queue_full_locked(self, *, room: Room) -> bool:
        """Whether the room has as many turns waiting as it may (the post is then refused).
        Called inside the post's transaction: the answer holds until it commits (no two
        concurrent posts both take the last place)."""

    def queued_row(
        self, *, room: Room, now: Any, client_tools: list[dict[str, Any]]
    ) -> tuple[Row, RoomEvent]:
        """The turn a post queues, as a row of the post's statement (it reads the message row
        `m`) and its event (the post's second); `client_tools` are the sender's, kept with it."""

    def posted_on_commit(self, *, room_id: int) -> None:
        """A turn was queued: ring the queue once the transaction commits."""

    def transcript_turns(self, *, message_ids: list[int]) -> tuple[dict[int, int], dict[int, str]]:
        """For these messages: the turn each assistant message answers, and the status of the
        turn each user message triggered."""

    def transcript_calls(self, *, message_ids: list[int]) -> dict[int, list[ToolCallData]]:
        """The tool calls of these (assistant) messages, in order, by message."""

    def turns_read(
        self,
        *,
        room_id: int,
        turn_ids: list[int] | None = None,
        trigger_message_ids: list[int] | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[TurnData]:
        """A room's turns, newest first: these ids, or those these messages triggered, or the
        newest `limit` (before turn id `before`)."""

    def calls_read(
        self, *, room_id: int, turn_id: int | None = None, call_id: str | None = None, limit: int = 200
    ) -> list[ToolCallData]:
        """A room's tool calls, oldest first: one by id, those of one turn, or the newest `limit`."""

    def tool_result(self, *, room: Room, user: Any, call_id: str, output: Any, error: str | None) -> str:
        """A client tool's answer; the call's state after. Raises TurnRefused."""

    def tool_decide(self, *, room: Room, user: Any, call_id: str, approved: bool, reason: str | None) -> str:
        """Approve or deny a call that asks first; the call's state after. Raises TurnRefused."""

    def schedules_read(self, *, room: Room) -> list[dict[str, Any]]:
        """The room's schedules, each with its latest runs and their turns."""

    def schedule_new(self, *, room: Room, user: Any, fields: dict[str, Any]) -> dict[str, Any]:
        """Make a schedule as `user` (a member; fields: prompt, kind, cron, interval_seconds,
        run_at, timezone); raises TurnRefused (its code: forbidden, invalid_*) if it cannot be."""

    def schedule_remove(self, *, room: Room, user: Any, schedule_id: int) -> bool:
        """Remove a schedule (its creator or the room's owner); False if there is none.
        Raises TurnRefused("forbidden")."""

    def tool_catalog(self) -> list[ToolInfo]:
        """The server tools there are (the room settings page lists them)."""

    def agent_settings(self, *, room: Room) -> tuple[AgentSetup | None, list[AgentChoice]]:
        """The room as an agent (None: it is not one), and the agents its owner may choose."""

    def agent_settings_save(self, *, room: Room, setup: AgentSetup | None, chosen: list[int]) -> None:
        """Save both (only agents among the choices are kept). Raises TurnRefused (a name taken)."""

    def cancel(self, *, room: Room, user: Any, turn_id: int) -> str:
        """Stop or withdraw a turn; its status after. Raises TurnRefused."""

    def retry(self, *, room: Room, user: Any, turn_id: int) -> str:
        """Continue an interrupted or failed turn; its status after. Raises TurnRefused."""

    def moderator_stop(self, *, room: Room) -> int:
        """Stop the room's running or parked turn (rooms.moderation checked who may); how many."""

    def moderator_clear(self, *, room: Room) -> int:
        """Withdraw every queued turn of the room (rooms.moderation checked who may); how many."""

    def overview(self, *, limit: int) -> dict[str, Any]:
        """For the moderation dashboard: running and queued turns by room id
        (`{"running": {room_id: n}, "queued": {...}}`) and the newest failed or parked turns
        (`"attention": [{id, room_id, status, error, created_at}]`)."""


@functools.cache
def turn_queue() -> TurnQueue:
    """The configured turn queue (made once per process)."""
    queue: TurnQueue = import_string(settings.ROOM_TURN_QUEUE)()
    return queue
