"""Sub-agents: the room's assistant calls another room's assistant (a room set up as an agent)
as a tool, an `agent` call.

Dispatching the call makes the child run: a task message and a turn in the agent's room, whose
`parent_call` is the call (unique: the child run's id is the parent call's id, so dispatching
the same call again, after a crash or a retry, attaches to the run instead of starting a
second). The parent turn then parks: no worker waits while the child runs. The child's runner
copies its progress (its answer so far, its own calls) into the parent call's `progress`, each
copy a `tool_update` in the parent room. When the child turn ends, however it ends, the parent
call is settled once (a compare-and-set) with its answer or a structured error
{status, reason, retryable}, and the parent turn is unparked. Cancelling the parent cancels the
child. Both hand-overs run after the commit that caused them; the sweeper repeats whatever a
crash in between lost (`agent_calls_reconcile`).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from agents import calls
from agents.agent_settings import AgentTool
from agents.kicks import kick_room_on_commit
from agents.lease import LeaseLost, TakenTurn, lease_fence_locked, room_turns_lock
from agents.models import Agent, ToolCall, Turn
from rooms.events import NEXT_SEQ, Fill, Row, events_append_last
from rooms.models import Message, Room
from rooms.protocol import MessageEvent, RoomEvent
from rooms.selectors import display_name, message_wire
from rooms.services import NEW_MESSAGE_ID, message_draft, message_row

if TYPE_CHECKING:
    from agents.runner import TurnContext

log = logging.getLogger(__name__)

OPEN = (Turn.Status.QUEUED, Turn.Status.RUNNING, Turn.Status.PARKED)


# --- the child run's outcome, as the parent's card and model see it --------------------------


def _refusal(status: str, reason: str, retryable: bool) -> tuple[str, dict[str, Any], str]:
    return ToolCall.State.ERROR, {"status": status, "reason": reason, "retryable": retryable}, reason


def _child_outcome(child: Turn) -> tuple[str, dict[str, Any], str]:
    """(state, output, error) of the parent call for a child turn that ended."""
    title = child.room.title
    if child.status == Turn.Status.DONE:
        answer = ""
        if child.assistant_message_id:
            answer = Message.objects.values_list("content", flat=True).get(pk=child.assistant_message_id)
        output: dict[str, Any] = {"agent": title, "room": child.room.slug, "answer": answer}
        if len(json.dumps(output)) > settings.TOOL_OUTPUT_MAX_BYTES:
            output.update(answer=answer[: settings.TOOL_OUTPUT_MAX_BYTES // 4], truncated=True)
        return ToolCall.State.DONE, output, ""
    if child.status == Turn.Status.FAILED:
        return _refusal("failed", f"the agent {title!r} failed: {child.error or 'no reason given'}", True)
    if child.status == Turn.Status.CANCELLED:
        return _refusal("cancelled", f"the agent {title!r} run was cancelled", False)
    # interrupted: its worker was lost and it may have done part of its work (side effects)
    why = child.error or "its worker was lost"
    return _refusal(
        "interrupted", f"the agent {title!r} was interrupted ({why}): it may have done part of it", False
    )


def _child_progress(child: Turn, *, text: str | None = None) -> dict[str, Any]:
    """The card's view of the child run (rooms.protocol.AgentProgressData)."""
    if text is None:
        text = ""
        if child.assistant_message_id:
            text = Message.objects.values_list("content", flat=True).get(pk=child.assistant_message_id)
    limit = settings.AGENT_PROGRESS_MAX_CHARS
    own = ToolCall.objects.filter(turn_id=child.pk).order_by("step", "index").values_list("name", "state")
    return {
        "room": child.room.slug, "title": child.room.title, "turn_id": child.pk, "status": child.status,
        "text": text[-limit:], "truncated": len(text) > limit,
        "calls": [{"name": n, "state": s} for n, s in own[:50]],
    }  # fmt: skip


# --- the parent's side: dispatch, attach ------------------------------------------------------

_CHILD_INSERT = """
    INSERT INTO agents_turn
        (room_id, queue_seq, trigger_message_id, status, attempt, cancel_requested,
         side_effects_started, lease_owner, lease_generation, error, client_tools, created_at,
         parent_call_id, depth)
    SELECT %(room)s, m.seq, m.id, 'queued', 0, false, false, '', 0, '', '[]'::jsonb, %(now)s,
           %(c_parent)s, %(c_depth)s
      FROM m
    RETURNING id
"""


def _ancestor_rooms(turn: Turn) -> set[int]:
    """The rooms of the turn and of every turn above it in its chain of agents."""
    rooms = {turn.room_id}
    call_id = turn.parent_call_id
    for _ in range(settings.AGENT_MAX_DEPTH + 2):
        if call_id is None:
            break
        above = Turn.objects.filter(tool_calls__pk=call_id).values_list("room_id", "parent_call_id").first()
        if above is None:
            break
        rooms.add(above[0])
        call_id = above[1]
    return rooms


def _refused_why(*, parent: Turn, agent: Agent | None) -> tuple[str, dict[str, Any], str] | None:
    if agent is None or not agent.enabled or not agent.room.ai_enabled:
        return _refusal("unavailable", "this agent is no longer available", False)
    if parent.depth + 1 > settings.AGENT_MAX_DEPTH:
        return _refusal("refused", f"agents may call agents at most {settings.AGENT_MAX_DEPTH} deep", False)
    if agent.room_id in _ancestor_rooms(parent):
        # its room waits on this chain already: its turn would queue behind the waiting one forever
        return _refusal("refused", "this agent is already working on this request higher up", False)
    running = Turn.objects.filter(parent_call__isnull=False, status__in=OPEN).count()
    if running >= settings.AGENT_MAX_RUNNING:
        return _refusal(
            "busy", f"{running} agent runs are open, the most there may be; try again later", True
        )
    return None


def _task_text(*, parent: Turn, task: str) -> str:
    asker = parent.trigger_message.author
    who = f" for {display_name(asker)}" if asker is not None else ""
    return f"(A task from the assistant of \u201c{parent.room.title}\u201d{who})\n\n{task}"


def _child_create_last(*, call: ToolCall, parent: Turn, agent: Agent) -> int:
    """The child run: its task message and turn in the agent's room, with their events (the
    transaction's last statement). Its id."""
    now = timezone.now()
    room = agent.room
    content = _task_text(parent=parent, task=str((call.input or {}).get("task", "")))
    draft = message_draft(room=room, role=Message.Role.USER, author=None, content=content, created_at=now)
    from agents.turns import NEW_TURN_ID, turn_event  # the turn service imports this module

    turn_draft = Turn(pk=NEW_TURN_ID, room=room, trigger_message_id=NEW_MESSAGE_ID, created_at=now)
    rows = (
        message_row(role=draft.role, author_id=None, content=content, status=draft.status, client_id=None),
        Row(name="t", sql=_CHILD_INSERT, params={"c_parent": call.pk, "c_depth": parent.depth + 1},
            fills=(Fill("id", NEW_TURN_ID, "t.id"), Fill("trigger_message_id", NEW_MESSAGE_ID, "m.id")),
            returns=("t.id",)),
    )  # fmt: skip
    events: list[RoomEvent] = [
        MessageEvent(seq=NEXT_SEQ, message=message_wire(draft)),
        turn_event(turn_draft),
    ]
    stored = events_append_last(room_id=room.pk, events=events, rows=rows, now=now)
    kick_room_on_commit(room.pk)
    return int(stored.values[2])


def _attach(*, taken: TakenTurn, call: ToolCall, child: Turn) -> None:
    """Mark the call dispatched, with the child run in its card."""
    with transaction.atomic():
        lease_fence_locked(taken)
        ToolCall.objects.filter(pk=call.pk, state=ToolCall.State.RUNNING).update(
            started_at=timezone.now(), progress=_child_progress(child)
        )
        fresh = ToolCall.objects.select_related("decided_by").get(pk=call.pk)
        if fresh.state == ToolCall.State.RUNNING:
            events_append_last(room_id=taken.room_id, events=[calls.call_event(fresh)])


def _dispatch_one(*, taken: TakenTurn, call: ToolCall, agent_id: int | None) -> None:
    child = Turn.objects.select_related("room").filter(parent_call_id=call.pk).first()
    if child is None:
        parent = Turn.objects.select_related("room", "trigger_message__author").get(pk=taken.turn_id)
        agent = Agent.objects.select_related("room").filter(pk=agent_id).first() if agent_id else None
        refused = _refused_why(parent=parent, agent=agent)
        if refused is not None:
            state, output, error = refused
            with transaction.atomic():
                lease_fence_locked(taken)
                settled = calls.call_settle_agent_locked(
                    call_id=call.pk, state=state, output=output, error=error, progress=None
                )
                if settled is not None:
                    events_append_last(room_id=taken.room_id, events=[calls.call_event(settled)])
            return
        assert agent is not None
        try:
            with transaction.atomic():
                lease_fence_locked(taken)  # only the parent's holder starts its child
                _child_create_last(call=call, parent=parent, agent=agent)
        except IntegrityError:
            log.info("call %s: its child run exists already; attaching", call.pk)  # unique parent_call
        child = Turn.objects.select_related("room").get(parent_call_id=call.pk)
    if call.started_at is None:
        _attach(taken=taken, call=call, child=child)
    if child.status in Turn.TERMINAL:  # it ended while nobody listened (a crash in between)
        agent_call_settle(child_turn_id=child.pk)


def agent_calls_dispatch(
    *, taken: TakenTurn, calls_of_step: list[ToolCall], agents: dict[str, AgentTool]
) -> None:
    """Start (or attach to) the child run of each of the step's `agent` calls still running."""
    from agents.turns import db_retry

    for call in calls_of_step:
        if call.kind != ToolCall.Kind.AGENT or call.state != ToolCall.State.RUNNING:
            continue
        tool = agents.get(call.name)
        agent_id = tool.agent_id if tool is not None else None
        dispatch = functools.partial(_dispatch_one, taken=taken, call=call, agent_id=agent_id)
        db_retry(dispatch, what="agent dispatch")


def agent_call_waiting(call: ToolCall) -> bool:
    """Whether the call waits on its child run (dispatched, not settled): its turn parks."""
    return (
        call.kind == ToolCall.Kind.AGENT
        and call.state == ToolCall.State.RUNNING
        and call.started_at is not None
    )


# --- the child's end reaches the parent; the parent's end reaches the child --------------------


def agent_call_settle(*, child_turn_id: int) -> bool:
    """Settle the parent call of a child run that ended, and unpark the parent turn if nothing
    else of it waits. True if this settled it (exactly one caller does)."""
    from agents.turns import turn_unpark_events_locked

    child = Turn.objects.select_related("room", "parent_call").filter(pk=child_turn_id).first()
    if child is None or child.parent_call is None or child.status not in Turn.TERMINAL:
        return False
    parent_call = child.parent_call
    state, output, error = _child_outcome(child)
    progress = _child_progress(child)
    with transaction.atomic():
        room_turns_lock(parent_call.room_id)  # serialised with the parent's park, like an answer
        settled = calls.call_settle_agent_locked(
            call_id=parent_call.pk, state=state, output=output, error=error, progress=progress
        )
        if settled is None:
            return False
        events = [calls.call_event(settled)]
        parent = Turn.objects.select_for_update().get(pk=parent_call.turn_id)
        events += turn_unpark_events_locked(parent)
        events_append_last(room_id=parent_call.room_id, events=events)
    log.info("call %s settled by its child run %s (%s)", parent_call.pk, child.pk, child.status)
    return True


def agent_child_cancel(*, child_turn_id: int) -> str:
    """Stop a child run whose parent call ended (its parent was cancelled or gave up on it)."""
    from agents.turns import turn_stop_locked

    room_id = Turn.objects.filter(pk=child_turn_id).values_list("room_id", flat=True).first()
    if room_id is None:
        return "gone"
    with transaction.atomic():
        room_turns_lock(room_id)
        child = Turn.objects.select_for_update().get(pk=child_turn_id)
        return turn_stop_locked(turn=child)


def _safely(fn: Any, **kwargs: Any) -> None:
    try:
        fn(**kwargs)
    except Exception:  # the sweeper does it again (agent_calls_reconcile)
        log.warning("%s%s failed; the sweeper will repeat it", fn.__name__, kwargs, exc_info=True)


def agent_links_closed_locked(*, turn: Turn) -> None:
    """A turn ended: after the commit, its result reaches its parent call (if it is a child
    run), and its own children still open are cancelled."""
    if turn.parent_call_id is not None:
        transaction.on_commit(lambda: _safely(agent_call_settle, child_turn_id=turn.pk))
    children = Turn.objects.filter(parent_call__turn_id=turn.pk, status__in=OPEN).values_list("pk", flat=True)
    for child_id in list(children):
        transaction.on_commit(functools.partial(_safely, agent_child_cancel, child_turn_id=child_id))


def agent_calls_reconcile() -> int:
    """Sweeper: repeat the hand-overs a crash lost, and end calls that waited too long. Returns
    how many calls or runs it changed."""
    changed = 0
    open_calls = ToolCall.objects.filter(calls.AGENT_WAITING)
    ended = Turn.objects.filter(parent_call__in=open_calls, status__in=Turn.TERMINAL).values_list(
        "pk", flat=True
    )
    for child_id in list(ended[:200]):
        changed += agent_call_settle(child_turn_id=child_id)
    orphans = Turn.objects.filter(parent_call__isnull=False, status__in=OPEN).exclude(
        parent_call__state=ToolCall.State.RUNNING
    )
    for child_id in list(orphans.values_list("pk", flat=True)[:200]):
        agent_child_cancel(child_turn_id=child_id)
        changed += 1
    deadline = timezone.now() - timedelta(seconds=settings.AGENT_CALL_TIMEOUT)
    late = ToolCall.objects.filter(calls.AGENT_WAITING, started_at__lt=deadline)
    gone = ToolCall.objects.filter(calls.AGENT_WAITING, child_turn__isnull=True)
    for call in list(late[:200]) + list(gone[:200]):
        reason = (
            f"the agent did not answer within {int(settings.AGENT_CALL_TIMEOUT)} s"
            if call.started_at and call.started_at < deadline
            else "the agent's room is gone"
        )
        changed += _parent_call_end(call=call, status="timeout", reason=reason, retryable=True)
    return changed


def _parent_call_end(*, call: ToolCall, status: str, reason: str, retryable: bool) -> int:
    from agents.turns import turn_unpark_events_locked

    with transaction.atomic():
        room_turns_lock(call.room_id)
        settled = calls.call_settle_agent_locked(
            call_id=call.pk, state=ToolCall.State.ERROR, error=reason, progress=None,
            output={"status": status, "reason": reason, "retryable": retryable},
        )  # fmt: skip
        if settled is None:
            return 0
        events = [calls.call_event(settled)]
        events += turn_unpark_events_locked(Turn.objects.select_for_update().get(pk=call.turn_id))
        events_append_last(room_id=call.room_id, events=events)
    child = Turn.objects.filter(parent_call_id=call.pk, status__in=OPEN).values_list("pk", flat=True).first()
    if child is not None:
        agent_child_cancel(child_turn_id=child)
    return 1


# --- the child's side: its progress in the parent's card ---------------------------------------


@dataclass
class ChildProgress:
    """Copies a child run's progress into its parent call's card, at most once per
    AGENT_PROGRESS_INTERVAL (and at once when its own calls change). Fenced by the child's
    lease: a runner that lost it writes nothing."""

    taken: TakenTurn
    parent_call_id: int
    parent_room_id: int
    room: Room
    text: str = ""
    calls: list[dict[str, str]] = field(default_factory=list)
    dirty: bool = True
    next_at: float = 0.0

    @classmethod
    def for_turn(cls, *, taken: TakenTurn, ctx: TurnContext) -> ChildProgress | None:
        if ctx.parent_call_id is None:
            return None
        parent_room_id = (
            ToolCall.objects.values_list("room_id", flat=True).filter(pk=ctx.parent_call_id).first()
        )
        if parent_room_id is None:
            return None
        limit = settings.AGENT_PROGRESS_MAX_CHARS
        progress = cls(
            taken, ctx.parent_call_id, parent_room_id, ctx.room, text=ctx.text_so_far[-limit * 2 :]
        )
        progress.calls = [{"name": c.name, "state": c.state} for c in ctx.calls]
        progress.write()
        return progress

    def add_text(self, text: str) -> None:
        self.text = (self.text + text)[-settings.AGENT_PROGRESS_MAX_CHARS * 2 :]
        self.dirty = True

    def set_calls(self, own: list[ToolCall]) -> None:
        self.calls = [{"name": c.name, "state": c.state} for c in own][:50]
        self.dirty = True
        self.next_at = 0.0

    def maybe_write(self) -> None:
        if self.dirty and time.monotonic() >= self.next_at:
            self.write()

    def write(self) -> None:
        """One copy, best effort: progress is a view, the child's own room holds the truth."""
        limit = settings.AGENT_PROGRESS_MAX_CHARS
        data = {
            "room": self.room.slug, "title": self.room.title, "turn_id": self.taken.turn_id,
            "status": Turn.Status.RUNNING, "text": self.text[-limit:], "truncated": len(self.text) > limit,
            "calls": self.calls,
        }  # fmt: skip
        self.dirty = False
        self.next_at = time.monotonic() + settings.AGENT_PROGRESS_INTERVAL
        try:
            with transaction.atomic():
                lease_fence_locked(self.taken)
                if ToolCall.objects.filter(Q(pk=self.parent_call_id, state=ToolCall.State.RUNNING)).update(
                    progress=data
                ):
                    call = ToolCall.objects.select_related("decided_by").get(pk=self.parent_call_id)
                    events_append_last(room_id=self.parent_room_id, events=[calls.call_event(call)])
        except LeaseLost:
            pass  # the runner finds out at its next write
        except Exception:
            log.warning("turn %s: progress not copied to call %s", self.taken.turn_id, self.parent_call_id,
                        exc_info=True)  # fmt: skip
        finally:
            connection.close()  # the runner gives its connection back while it streams
