"""One turn: context -> provider stream -> chunk batches -> finish. A turn is a loop of steps."""

from __future__ import annotations

import functools
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from agents.calls import OUTCOME_UNKNOWN, call_settle, calls_create, calls_of_turn, calls_recover
from agents.drain import drain_requested
from agents.models import ToolCall, Turn
from agents.observe import TurnTracer
from agents.providers import get_provider
from agents.providers.base import (
    CONTINUE_PROMPT,
    ChatMessage,
    ModelRequest,
    ModelStream,
    ProviderError,
    StepEnd,
    TextDelta,
    ToolCallRequest,
)
from agents.streams import StepResult, TurnStopped, heartbeat_every, step_run
from agents.subagents import ChildProgress, agent_call_waiting, agent_calls_dispatch
from agents.toolbox import Toolbox, run_server_calls, step_messages, steps_messages, unique_call_ids
from agents.turns import (
    LeaseLost,
    LeaseState,
    TakenTurn,
    db_retry,
    lease_renew,
    message_text_from_chunks,
    turn_finish,
    turn_park,
    turn_release,
)
from agents.writer import TurnSink, writer
from rooms.models import Message, Room
from rooms.selectors import display_name

log = logging.getLogger(__name__)

_END = object()


@dataclass
class TurnContext:
    """What a (re)started turn needs: its room, the model's context so far, and where it stands."""

    room: Room
    messages: list[ChatMessage]
    initiator_id: int | None
    client_tools: list[dict[str, Any]]
    calls: list[ToolCall]  # this turn's calls so far, every step
    text_so_far: str  # the turn's answer text already written
    parent_call_id: int | None = None  # a sub-agent's run: the call it answers


def context_build(*, taken: TakenTurn) -> TurnContext:
    """The model's context: system prompt, the room's messages up to the trigger (earlier
    answers with their tool calls and results), then this turn's own steps so far."""
    room = Room.objects.get(pk=taken.room_id)
    turn = Turn.objects.select_related("trigger_message").get(pk=taken.turn_id)
    trigger_seq = turn.trigger_message.seq
    own_seq = Message.objects.values_list("seq", flat=True).get(pk=taken.message_id)
    rows = list(
        Message.objects.filter(room=room, seq__lt=own_seq)
        .exclude(status__in=(Message.Status.HIDDEN, Message.Status.DELETED))  # moderated: never context
        .exclude(role=Message.Role.USER, seq__gt=trigger_seq)  # queued after us: not ours yet
        .exclude(role=Message.Role.ASSISTANT, content="")
        .select_related("author")
        .order_by("-seq")[: settings.CONTEXT_MESSAGES]
    )
    earlier_calls: dict[int, list[ToolCall]] = {}
    answers = [m.pk for m in rows if m.role == Message.Role.ASSISTANT]
    for call in ToolCall.objects.filter(message_id__in=answers).order_by("step", "index"):
        earlier_calls.setdefault(call.message_id, []).append(call)
    messages = [ChatMessage(role="system", content=room.system_prompt)] if room.system_prompt else []
    for m in reversed(rows):
        if m.role == Message.Role.USER:
            messages.append(ChatMessage(role="user", content=f"{display_name(m.author)}: {m.content}"))
        elif m.role == Message.Role.ASSISTANT:
            steps, rest = steps_messages(m.content, earlier_calls.get(m.pk, []))
            messages += steps
            if rest:
                messages.append(ChatMessage(role="assistant", content=rest))
    calls = calls_of_turn(taken.turn_id)
    text = message_text_from_chunks(taken.message_id) if taken.next_index else ""
    steps, rest = steps_messages(text, calls)
    messages += steps
    if rest:
        # A continuation after a fault mid-step: the model gets what it already said of this
        # step and goes on from there.
        messages.append(ChatMessage(role="assistant", content=rest))
        messages.append(ChatMessage(role="user", content=CONTINUE_PROMPT))
    initiator = turn.trigger_message.author_id
    return TurnContext(
        room, messages, initiator, list(turn.client_tools or []), calls, text, turn.parent_call_id
    )


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """Model text as Postgres can store it: a NUL or a lone surrogate (both can come out of a
    JSON stream) becomes U+FFFD. Otherwise one bad token would fail the statement that writes
    the chunks of every turn of the process."""
    return _UNSTORABLE.sub("\ufffd", text)


@dataclass
class ChunkBatcher:
    """Collects streamed text into numbered chunks, at most one per interval, and hands them to
    the process's chunk writer (group commit) without waiting for the write."""

    taken: TakenTurn
    next_index: int = 0
    pending: list[str] = field(default_factory=list)
    pending_chars: int = 0
    last_write: float = 0.0
    chars: int = 0  # the answer's length so far, written or pending (a step's text offset)
    ends_with_newline: bool = True
    separate_next: bool = False
    step_text: list[str] = field(default_factory=list)  # this step's text (the model's context)
    tracer: TurnTracer | None = None  # the run's timings (agents/observe.py)
    progress: ChildProgress | None = None  # a sub-agent's run: its text goes to the parent's card
    sink: TurnSink = field(init=False)

    def __post_init__(self) -> None:
        self.sink = TurnSink(self.taken)

    def add(self, text: str) -> None:
        if self.tracer is not None:
            self.tracer.text()
        if text:
            if self.separate_next and self.chars and not self.ends_with_newline:
                text = "\n\n" + text.lstrip("\n")  # the next step's text starts a new paragraph
            self.separate_next = False
            text = storable_text(text)
            self.pending.append(text)
            self.step_text.append(text)
            self.pending_chars += len(text)
            self.chars += len(text)
            self.ends_with_newline = text.endswith("\n")
            if self.progress is not None:
                self.progress.add_text(text)

    def take_step_text(self) -> str:
        text = "".join(self.step_text)
        self.step_text.clear()
        return text

    def due_at(self) -> float | None:
        """When the pending text should be written (leading edge: at once after a quiet spell)."""
        if not self.pending:
            return None
        if self.pending_chars >= settings.CHUNK_FLUSH_MAX_CHARS:
            return 0.0
        return self.last_write + settings.CHUNK_FLUSH_INTERVAL

    def flush(self) -> LeaseState | None:
        if not self.pending:
            return None
        state = writer.submit(self.sink, self.next_index, "".join(self.pending))
        self.next_index += 1
        self.pending.clear()
        self.pending_chars = 0
        self.last_write = time.monotonic()
        return state

    def flush_and_wait(self) -> bool:
        """Write what is pending and wait until all of it is written; False if the lease was
        lost or the database stayed away (the turn is then left to recovery)."""
        try:
            self.flush()
            writer.wait_written(self.sink, timeout=settings.LEASE_TIMEOUT)
        except LeaseLost:
            log.warning("turn %s: lease lost; stopping without writing", self.taken.turn_id)
            return False
        except (OperationalError, InterfaceError) as exc:
            log.warning("turn %s: chunks not written, left to recovery: %s", self.taken.turn_id, exc)
            return False
        return True


def _pump(stream: ModelStream, out: queue.SimpleQueue[object]) -> None:
    """Reader thread: move provider events into a queue, so the runner never blocks on I/O."""
    try:
        for event in stream:
            out.put(event)
        out.put(_END)
    except BaseException as exc:  # handed to the runner thread
        out.put(exc)


def _step_stream(stream: ModelStream, batcher: ChunkBatcher, deadline: float) -> StepResult:
    events: queue.SimpleQueue[object] = queue.SimpleQueue()  # C: a put and a get cost no Condition
    threading.Thread(target=_pump, args=(stream, events), daemon=True, name="model-stream").start()
    tool_calls: list[ToolCallRequest] = []
    finish_reason = "stop"
    next_beat = time.monotonic() + heartbeat_every()
    while True:
        now = time.monotonic()
        due = batcher.due_at()
        wake = min(next_beat, deadline, due if due is not None else next_beat)
        try:
            item = events.get(timeout=max(0.0, wake - now))
        except queue.Empty:
            item = None
        if item is _END:
            return StepResult(tool_calls, finish_reason)
        if isinstance(item, BaseException):
            raise item if isinstance(item, ProviderError) else ProviderError(str(item))
        if isinstance(item, TextDelta):
            batcher.add(item.text)
        elif isinstance(item, ToolCallRequest):
            tool_calls.append(item)
        elif isinstance(item, StepEnd):
            finish_reason = item.finish_reason
        now = time.monotonic()
        state: LeaseState | None = None
        due = batcher.due_at()
        if due is not None and now >= due:
            state = batcher.flush()
            next_beat = now + heartbeat_every()
        elif now >= next_beat:
            state = db_retry(lambda: lease_renew(taken=batcher.taken), what="lease renewal")
            connection.close()
            next_beat = now + heartbeat_every()
        if state is not None and state.cancel_requested:
            raise TurnStopped(Turn.Status.CANCELLED, "stopped by a user")
        if batcher.progress is not None:
            batcher.progress.maybe_write()
        if drain_requested():  # looked up at most twice a second
            raise TurnStopped("released", "the worker is shutting down")
        if now >= deadline:
            raise TurnStopped(Turn.Status.FAILED, "the turn hit its time limit")


class TurnParked(Exception):
    """The turn waits on a person and was parked: the worker lets go of it."""


def _settle_step(
    taken: TakenTurn,
    calls: list[ToolCall],
    toolbox: Toolbox,
    deadline: float,
    progress: ChildProgress | None = None,
) -> list[ToolCall]:
    """Run what can run of a step's calls, then park the turn if some wait on a person;
    returns the step's calls once every one has settled."""

    def heartbeat() -> None:
        state = db_retry(lambda: lease_renew(taken=taken), what="lease renewal")
        if state.cancel_requested:
            raise TurnStopped(Turn.Status.CANCELLED, "stopped by a user")
        if time.monotonic() >= deadline:
            raise TurnStopped(Turn.Status.FAILED, "the turn hit its time limit")

    ids = {c.pk for c in calls}
    while True:
        # sub-agents first: their runs go on while the server calls run (and after, parked)
        agent_calls_dispatch(taken=taken, calls_of_step=calls, agents=toolbox.agents)
        run_server_calls(taken, calls, toolbox, heartbeat)
        calls = [c for c in calls_of_turn(taken.turn_id) if c.pk in ids]
        for call in calls:  # started here, yet not settled: its settle failed (outcome unknown)
            if call.kind == ToolCall.Kind.AGENT:
                continue  # dispatched: it waits on its child run
            if call.state == ToolCall.State.RUNNING and call.started_at is not None:
                call_settle(
                    taken=taken, call_id=call.pk, state=ToolCall.State.INTERRUPTED, error=OUTCOME_UNKNOWN
                )
        own = calls_of_turn(taken.turn_id)
        calls = [c for c in own if c.pk in ids]
        if progress is not None:
            progress.set_calls(own)
            progress.write()
        if all(c.state in ToolCall.SETTLED for c in calls):
            return calls
        if any(c.state in ToolCall.WAITING or agent_call_waiting(c) for c in calls):
            if db_retry(lambda: turn_park(taken=taken), what="park"):
                raise TurnParked()
        heartbeat()  # answered meanwhile: an approved call runs on the next round


def turn_run(*, taken: TakenTurn) -> str:
    """Run a leased turn to a terminal status, or park it while a call waits on a person;
    returns the status ('parked', 'lost' if the lease was lost). The run is traced."""
    tracer = TurnTracer(taken)
    status = "lost"
    try:
        status = _turn_run(taken=taken, tracer=tracer)
    finally:
        tracer.finish(status)
    return status


def _turn_run(*, taken: TakenTurn, tracer: TurnTracer) -> str:
    deadline = time.monotonic() + settings.TURN_TIME_LIMIT
    batcher = ChunkBatcher(taken=taken, next_index=taken.next_index, tracer=tracer)
    status: str = Turn.Status.DONE
    error = ""
    try:
        ctx = context_build(taken=taken)
        room, messages = ctx.room, ctx.messages
        batcher.chars = len(ctx.text_so_far)
        batcher.ends_with_newline = ctx.text_so_far.endswith("\n") or not ctx.text_so_far
        toolbox = Toolbox.for_turn(
            room=room,
            client_tools=ctx.client_tools,
            heartbeat=lambda: db_retry(lambda: lease_renew(taken=taken), what="lease renewal"),
        )
        batcher.progress = ChildProgress.for_turn(taken=taken, ctx=ctx)
        step = 1 + max((c.step for c in ctx.calls), default=-1)
        if ctx.calls:  # taken again: a fault, a release, or the answer that unparked it
            recovered = calls_recover(taken=taken)
            last = [c for c in calls_of_turn(taken.turn_id) if c.step == step - 1]
            if recovered or any(c.state not in ToolCall.SETTLED for c in last):
                _settle_step(taken, last, toolbox, deadline, batcher.progress)
                ctx = context_build(taken=taken)  # with the step's results
                messages = ctx.messages
            batcher.separate_next = True
        used_ids = {c.provider_call_id for c in ctx.calls}
        # While the model streams, the chunk writer does the writing: the runner gives its
        # connection back (to the pool), or a threads worker with many turns would need a
        # connection per turn for nothing.
        connection.close()
        provider = get_provider()
        # only a model the server offers (a row written before LLM_MODELS gets the default)
        model = room.ai_model if room.ai_model in settings.LLM_MODELS else settings.LLM_MODEL
        while True:
            last_step = step >= settings.TURN_MAX_STEPS - 1  # the last one answers without tools
            tools = () if last_step else toolbox.specs()
            told = [ChatMessage(role="system", content=n) for n in toolbox.notices if tools]
            request = ModelRequest(model=model, messages=(*messages, *told), tools=tools)
            tracer.step_start(step)
            # on the process's stream loop if the provider can (agents/streams.py); a sub-agent's
            # run, whose text also goes to its parent's card, reads from a thread of its own
            streamed = provider.astream(request) if batcher.progress is None else None
            if streamed is not None:
                result = step_run(streamed, batcher, deadline)
            else:
                with provider.stream(request) as stream:
                    result = _step_stream(stream, batcher, deadline)
            tracer.step_end(tool_calls=len(result.tool_calls), finish_reason=result.finish_reason)
            if not result.tool_calls or last_step:
                break
            if not batcher.flush_and_wait():
                return "lost"
            requests = unique_call_ids(result.tool_calls, turn_id=taken.turn_id, step=step, used=used_ids)
            plans = [toolbox.plan(r, turn_id=taken.turn_id, initiator_id=ctx.initiator_id) for r in requests]
            create = functools.partial(
                calls_create, taken=taken, step=step, plans=plans, text_offset=batcher.chars,
                initiator_id=ctx.initiator_id,
            )  # fmt: skip
            made = db_retry(create, what="tool calls")
            if batcher.progress is not None:
                batcher.progress.set_calls(calls_of_turn(taken.turn_id))
                batcher.progress.write()
            settled = _settle_step(taken, made, toolbox, deadline, batcher.progress)
            messages = [*messages, *step_messages(batcher.take_step_text(), settled)]
            step += 1
            batcher.separate_next = True
        if not batcher.flush_and_wait():
            return "lost"
    except TurnParked:
        return "parked"
    except TurnStopped as stop:
        status, error = stop.status, stop.reason
        if not batcher.flush_and_wait():
            return "lost"
        if status == "released":  # graceful shutdown: another worker continues the answer
            released = db_retry(lambda: turn_release(taken=taken, reason=error), what="release")
            return "released" if released else "lost"
    except LeaseLost:
        log.warning("turn %s: lease lost mid-stream; stopping without writing", taken.turn_id)
        return "lost"
    except (OperationalError, InterfaceError) as exc:
        # The database stayed away longer than db_retry waits: nothing more can be written, so
        # the lease is left to expire and the sweeper continues the answer (a new attempt).
        log.warning("turn %s: database unavailable, leaving it to recovery: %s", taken.turn_id, exc)
        return "lost"
    except ProviderError as exc:
        # the provider's own words (and its host) stay in the log; members get a generic reason
        log.warning("turn %s: provider failed: %s", taken.turn_id, exc)
        status, error = Turn.Status.FAILED, f"model error: {exc.public}"
        if not batcher.flush_and_wait():
            return "lost"
    except Exception as exc:  # a bug or a database fault: end the turn in a known state
        log.exception("turn %s crashed", taken.turn_id)
        status, error = Turn.Status.FAILED, f"internal error: {type(exc).__name__}"
        try:
            if not batcher.flush_and_wait():
                return "lost"
        except Exception:
            log.warning("turn %s: could not save the last chunk", taken.turn_id)
    try:
        finished = db_retry(lambda: turn_finish(taken=taken, status=status, error=error), what="finish")
    except (OperationalError, InterfaceError):
        log.warning("turn %s: could not write its end; left to recovery", taken.turn_id)
        return "lost"
    if not finished:
        return "lost"
    return status
