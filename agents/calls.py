"""Tool calls: a step's calls made, started, settled, answered and decided.

Every change is a compare-and-set on the call's state (`UPDATE ... WHERE state = ...`): the
first writer wins, and only the winner emits the `tool_update` event; a late or second answer
changes nothing and is refused with `conflict`. The runner's own writes are fenced by its lease;
a person's answer is serialised with the turn's park by the room's turn lock.

Side effects run at most once: `started_at` is committed in its own statement before a tool
runs, and recovery does not run a call again that started and has no result unless the tool is
idempotent (`calls_recover`): it ends `interrupted` and the model is told the outcome is unknown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents.lease import TakenTurn, lease_fence_locked
from agents.models import ToolCall
from rooms.events import NEXT_SEQ, events_append_last
from rooms.models import Membership, Room
from rooms.protocol import (
    AgentProgressData,
    RoomEvent,
    ToolCallData,
    ToolCallEvent,
    ToolUpdateEvent,
    UserRef,
)
from rooms.selectors import display_name
from rooms.turns import TurnRefused

OUTCOME_UNKNOWN = "the worker running it stopped before it finished: it may or may not have taken effect"


def call_wire(call: ToolCall) -> ToolCallData:
    """A call as it travels on the wire."""
    decided_by = call.decided_by if call.decided_by_id else None
    return ToolCallData(
        id=str(call.pk),
        turn_id=call.turn_id,
        message_id=call.message_id,
        step=call.step,
        name=call.name,
        kind=call.kind,
        input=call.input,
        state=call.state,
        output=call.output,
        error=call.error or None,
        requires_approval=call.requires_approval,
        decided_by=None if decided_by is None else UserRef(id=decided_by.pk, name=display_name(decided_by)),
        initiator_id=call.initiator_id,
        created_at=call.created_at.isoformat(),
        started_at=call.started_at.isoformat() if call.started_at else None,
        finished_at=call.finished_at.isoformat() if call.finished_at else None,
        progress=AgentProgressData(**call.progress) if call.progress else None,
    )


def call_event(call: ToolCall, *, created: bool = False) -> RoomEvent:
    if created:
        return ToolCallEvent(seq=NEXT_SEQ, call=call_wire(call))
    return ToolUpdateEvent(seq=NEXT_SEQ, call=call_wire(call))


@dataclass(frozen=True)
class CallPlan:
    """How the runner wants one of the model's calls made."""

    provider_call_id: str
    name: str
    kind: str
    arguments: str
    input: Any
    state: str
    error: str = ""
    output: Any = None  # a call a hook answered itself is made `done` with it
    side_effects: bool = False
    idempotent: bool = True
    requires_approval: bool = False


def calls_create(
    *, taken: TakenTurn, step: int, plans: list[CallPlan], text_offset: int, initiator_id: int | None
) -> list[ToolCall]:
    """Make a step's calls, with their `tool_call` events, if this worker still holds the turn."""
    now = timezone.now()
    with transaction.atomic():
        lease_fence_locked(taken)
        calls = ToolCall.objects.bulk_create(
            [
                ToolCall(
                    room_id=taken.room_id,
                    turn_id=taken.turn_id,
                    message_id=taken.message_id,
                    step=step,
                    index=i,
                    provider_call_id=p.provider_call_id[:100],
                    name=p.name[:64],
                    kind=p.kind,
                    arguments=p.arguments,
                    input=p.input,
                    state=p.state,
                    error=p.error[:2000],
                    side_effects=p.side_effects,
                    idempotent=p.idempotent,
                    requires_approval=p.requires_approval,
                    initiator_id=initiator_id,
                    text_offset=text_offset,
                    created_at=now,
                    finished_at=now if p.state in ToolCall.SETTLED else None,
                )  # fmt: skip
                for i, p in enumerate(plans)
            ]
        )
        events_append_last(room_id=taken.room_id, events=[call_event(c, created=True) for c in calls])
    return calls


def call_start(*, taken: TakenTurn, call_id: int) -> bool:
    """Commit `started_at` before the tool runs; False if the call is not to run (settled,
    already started, or the lease is gone)."""
    with transaction.atomic():
        lease_fence_locked(taken)
        return bool(
            ToolCall.objects.filter(pk=call_id, state=ToolCall.State.RUNNING, started_at__isnull=True).update(
                started_at=timezone.now()
            )
        )


def _output_checked(output: Any) -> Any:
    if len(json.dumps(output, default=str)) > settings.TOOL_OUTPUT_MAX_BYTES:
        raise ValueError(f"the output is over {settings.TOOL_OUTPUT_MAX_BYTES} bytes")
    return output


def call_settle(
    *, taken: TakenTurn, call_id: int, state: str, output: Any = None, error: str = ""
) -> ToolCall | None:
    """End a running call the runner ran (done or error), with its event; None if it was not
    running any more (cancelled, or another worker's)."""
    with transaction.atomic():
        lease_fence_locked(taken)
        call = _settle_locked(call_id=call_id, from_states=(ToolCall.State.RUNNING,), state=state,
                              output=output, error=error)  # fmt: skip
        if call is None:
            return None
        events_append_last(room_id=taken.room_id, events=[call_event(call)])
    return call


def _settle_locked(
    *,
    call_id: int,
    from_states: tuple[str, ...],
    state: str,
    output: Any = None,
    error: str = "",
    **more: Any,
) -> ToolCall | None:
    """The compare-and-set: the call goes from one of `from_states` to `state`, or nothing happens."""
    if state == ToolCall.State.DONE:
        try:
            output = _output_checked(output)
        except ValueError as exc:
            state, output, error = ToolCall.State.ERROR, None, str(exc)
    changed = ToolCall.objects.filter(pk=call_id, state__in=from_states).update(
        state=state, output=output, error=error[:2000], finished_at=timezone.now(), **more
    )
    if not changed:
        return None
    return ToolCall.objects.select_related("decided_by").get(pk=call_id)


def call_settle_agent_locked(
    *, call_id: int, state: str, output: Any, error: str, progress: dict[str, Any] | None
) -> ToolCall | None:
    """End an `agent` call with its child run's outcome (the parent room's turns locked by the
    caller): the first writer wins, so the result reaches the parent once. None if it had ended."""
    return _settle_locked(
        call_id=call_id, from_states=(ToolCall.State.RUNNING,), state=state, output=output, error=error,
        **({"progress": progress} if progress is not None else {}),
    )  # fmt: skip


# --- a person's answer (the room's turns locked by the caller) --------------------------------


def _call_in_room(room: Room, call_id: str) -> ToolCall:
    if not call_id.isdigit() or len(call_id) > 18:
        raise TurnRefused("not_found", f"no tool call {call_id[:40]!r} in this room")
    call = ToolCall.objects.filter(pk=int(call_id), room=room).first()
    if call is None:
        raise TurnRefused("not_found", f"no tool call {call_id} in this room")
    return call


def call_answer_locked(
    *, room: Room, user: Any, call_id: str, output: Any, error: str | None
) -> tuple[ToolCall, list[RoomEvent]]:
    """A client tool's result, from the person whose message started the turn."""
    call = _call_in_room(room, call_id)
    if call.kind != ToolCall.Kind.CLIENT or call.initiator_id != user.pk:
        raise TurnRefused("forbidden", "only the person whose message started the turn answers its tools")
    if error is not None:
        state, output = ToolCall.State.ERROR, None
    else:
        state, error = ToolCall.State.DONE, ""
        try:
            _output_checked(output)
        except ValueError as exc:
            raise TurnRefused("too_large", str(exc)) from None
    settled = _settle_locked(
        call_id=call.pk,
        from_states=(ToolCall.State.WAITING_CLIENT,),
        state=state,
        output=output,
        error=error or "",
    )
    if settled is None:
        raise TurnRefused("conflict", f"tool call {call_id} is {call.state}: it takes no answer now")
    return settled, [call_event(settled)]


def may_decide(*, room: Room, user: Any, call: ToolCall) -> bool:
    """The person whose message started the turn, or the room's owner or a moderator."""
    if call.initiator_id == user.pk or room.owner_id == user.pk:
        return True
    return Membership.objects.filter(
        room=room,
        user=user,
        banned_at__isnull=True,
        role__in=(Membership.Role.OWNER, Membership.Role.MODERATOR),
    ).exists()


def call_decide_locked(
    *, room: Room, user: Any, call_id: str, approved: bool, reason: str | None
) -> tuple[ToolCall, list[RoomEvent]]:
    """Approve (the call will run) or deny (the model is told) a call that asks first."""
    call = _call_in_room(room, call_id)
    if not may_decide(room=room, user=user, call=call):
        raise TurnRefused("forbidden", "only the person who asked, or the room's owner or moderators, decide")
    now, why = timezone.now(), (reason or "").strip()[:500]
    if approved:
        changed = ToolCall.objects.filter(pk=call.pk, state=ToolCall.State.AWAITING_APPROVAL).update(
            state=ToolCall.State.RUNNING, decided_by=user, decided_at=now, decision_reason=why
        )
        settled = ToolCall.objects.select_related("decided_by").get(pk=call.pk) if changed else None
    else:
        error = f"denied by {display_name(user)}" + (f": {why}" if why else "")
        settled = _settle_locked(
            call_id=call.pk, from_states=(ToolCall.State.AWAITING_APPROVAL,), state=ToolCall.State.DENIED,
            error=error, decided_by=user, decided_at=now, decision_reason=why,
        )  # fmt: skip
    if settled is None:
        raise TurnRefused("conflict", f"tool call {call_id} is {call.state}: it was already decided")
    return settled, [call_event(settled)]


# --- the turn's calls ---------------------------------------------------------------------------


def calls_of_turn(turn_id: int) -> list[ToolCall]:
    return list(
        ToolCall.objects.filter(turn_id=turn_id).select_related("decided_by").order_by("step", "index")
    )


# An `agent` call whose child run was dispatched waits on it like a call on a person.
AGENT_WAITING = Q(kind=ToolCall.Kind.AGENT, state=ToolCall.State.RUNNING, started_at__isnull=False)


def calls_waiting(turn_id: int) -> bool:
    """Whether a call of the turn waits on a person or on a sub-agent (the turn then parks)."""
    waiting = Q(state__in=ToolCall.WAITING) | AGENT_WAITING
    return ToolCall.objects.filter(waiting, turn_id=turn_id).exists()


def calls_recover(*, taken: TakenTurn) -> list[ToolCall]:
    """A turn taken again after its worker was lost: a call that started and has no result is
    `interrupted` if it may have had a side effect, else it runs again. Returns the changed."""
    changed: list[ToolCall] = []
    started = ToolCall.objects.filter(
        turn_id=taken.turn_id, state=ToolCall.State.RUNNING, started_at__isnull=False
    )
    for call in started:
        if call.side_effects and not call.idempotent:
            settled = call_settle(
                taken=taken, call_id=call.pk, state=ToolCall.State.INTERRUPTED, error=OUTCOME_UNKNOWN
            )
            if settled is not None:
                changed.append(settled)
        else:
            with transaction.atomic():
                lease_fence_locked(taken)
                ToolCall.objects.filter(pk=call.pk, state=ToolCall.State.RUNNING).update(started_at=None)
    return changed


def calls_end_open_locked(*, turn_id: int, error: str) -> list[RoomEvent]:
    """End every call of the turn that has not settled (a cancel, a timeout): their events."""
    events: list[RoomEvent] = []
    open_states = (*ToolCall.WAITING, ToolCall.State.RUNNING)
    for call_id, started_at, side_effects, idempotent in ToolCall.objects.filter(
        turn_id=turn_id, state__in=open_states
    ).values_list("pk", "started_at", "side_effects", "idempotent"):
        state, why = ToolCall.State.ERROR, error
        if started_at is not None and side_effects and not idempotent:
            # it started and nothing stops its thread (or its worker is gone): it may have
            # taken effect, so it did not fail, its outcome is unknown
            state, why = (
                ToolCall.State.INTERRUPTED,
                f"{error} while it ran: it may or may not have taken effect",
            )
        settled = _settle_locked(call_id=call_id, from_states=open_states, state=state, error=why)
        if settled is not None:
            events.append(call_event(settled))
    return events


def calls_wait_expired() -> list[int]:
    """Turns with a call that waited on a person longer than TOOL_WAIT_TIMEOUT."""
    deadline = timezone.now() - timedelta(seconds=settings.TOOL_WAIT_TIMEOUT)
    waiting = Q(state__in=ToolCall.WAITING, created_at__lt=deadline)
    return list(ToolCall.objects.filter(waiting).values_list("turn_id", flat=True).distinct()[:500])


def calls_expire_locked(*, turn_id: int) -> list[RoomEvent]:
    """End the turn's calls that waited too long: the model continues with that."""
    deadline = timezone.now() - timedelta(seconds=settings.TOOL_WAIT_TIMEOUT)
    events: list[RoomEvent] = []
    expired = ToolCall.objects.filter(turn_id=turn_id, state__in=ToolCall.WAITING, created_at__lt=deadline)
    for call in expired:
        settled = _settle_locked(
            call_id=call.pk, from_states=ToolCall.WAITING, state=ToolCall.State.ERROR,
            error=f"no answer within {int(settings.TOOL_WAIT_TIMEOUT)} s",
        )  # fmt: skip
        if settled is not None:
            events.append(call_event(settled))
    return events
