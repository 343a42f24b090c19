"""Model streams on one event loop per worker process.

A turn's runner thread does the turn's database work (take, context, tool calls, finish); while
the model streams, the step runs on this process's stream loop instead of in a reader thread of
its own: the loop reads every turn's HTTP body as it arrives (one wake per network chunk for all
turns, no thread hand-off per token), feeds the turn's `ChunkBatcher` and hands due batches to
the chunk writer. The runner waits on the step's future and wakes only for its heartbeat: the
lease (renewed by the chunk writes themselves while text flows), a stop, a drain, the deadline.

Only the loop touches the batcher while a step streams; the runner touches it again only once
the step's task has ended (its future is done). Backpressure never blocks the loop: when a
turn has `writer.MAX_PENDING` chunks waiting, its text stays in the batcher and goes out as one
larger chunk once the writer has caught up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection

from agents.drain import drain_requested
from agents.models import Turn
from agents.providers.base import AsyncModelStream, ProviderError, StepEnd, TextDelta, ToolCallRequest
from agents.turns import db_retry, lease_renew
from agents.writer import writer
from rooms.broadcast import ProcessLoop

if TYPE_CHECKING:
    from agents.runner import ChunkBatcher

log = logging.getLogger(__name__)


stream_loop = ProcessLoop("model-streams")


@dataclass
class StepResult:
    tool_calls: list[ToolCallRequest]
    finish_reason: str


class TurnStopped(Exception):
    """The turn must end now with `status` (cancelled, or failed on the time limit)."""

    def __init__(self, status: str, reason: str = "") -> None:
        super().__init__(reason or status)
        self.status = status
        self.reason = reason


def heartbeat_every() -> float:
    return max(0.05, min(0.5, settings.LEASE_TIMEOUT / 4))


@dataclass
class _LoopStep:
    """One model step as a task on the stream loop."""

    stream: AsyncModelStream
    batcher: ChunkBatcher
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    finish_reason: str = "stop"
    task: asyncio.Task[StepResult] | None = None
    timer: asyncio.TimerHandle | None = None
    failure: BaseException | None = None  # raised by a timer's flush: ends the task with it
    stopped: bool = False

    async def run(self) -> StepResult:
        self.task = asyncio.current_task()
        try:
            if self.stopped:
                raise asyncio.CancelledError
            events = aiter(self.stream)
            while True:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
                except ProviderError:
                    raise
                except Exception as exc:
                    raise ProviderError(str(exc)) from exc
                if isinstance(event, TextDelta):
                    self.batcher.add(event.text)
                    self.flush_if_due()
                elif isinstance(event, ToolCallRequest):
                    self.tool_calls.append(event)
                elif isinstance(event, StepEnd):
                    self.finish_reason = event.finish_reason
            return StepResult(self.tool_calls, self.finish_reason)
        except asyncio.CancelledError:
            if self.failure is not None:  # a flush from the timer failed: that is the step's end
                raise self.failure from None
            raise
        finally:
            if self.timer is not None:
                self.timer.cancel()
            await self.stream.aclose()

    def flush_if_due(self) -> None:
        """Hand the pending text to the writer if it is due, else wake up when it is."""
        due = self.batcher.due_at()
        if due is None:
            return
        now = time.monotonic()
        if now >= due:
            if not writer.has_room(self.batcher.sink):  # backpressure: the text waits here
                due = now + settings.CHUNK_FLUSH_INTERVAL
            else:
                state = self.batcher.flush()
                if state is not None and state.cancel_requested:
                    raise TurnStopped(Turn.Status.CANCELLED, "stopped by a user")
                return
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(due - now, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        try:
            self.flush_if_due()
        except BaseException as exc:
            self.failure = exc
            if self.task is not None:
                self.task.cancel()

    def stop(self) -> None:
        """On the loop: end the step now (its stream is closed by the task's `finally`)."""
        self.stopped = True
        if self.task is not None:
            self.task.cancel()


def step_run(stream: AsyncModelStream, batcher: ChunkBatcher, deadline: float) -> StepResult:
    """Run one model step on the stream loop; from the runner thread, which keeps the turn's
    heartbeat. Raises like the threaded step: ProviderError, TurnStopped, LeaseLost, a database
    error from the chunk writer."""
    loop = stream_loop.loop()
    step = _LoopStep(stream, batcher)
    future = asyncio.run_coroutine_threadsafe(step.run(), loop)
    sink = batcher.sink
    written = sink.written
    try:
        while True:
            try:
                return future.result(timeout=heartbeat_every())
            except concurrent.futures.TimeoutError:
                pass
            if sink.written != written:  # a chunk write renewed the lease meanwhile
                written, state = sink.written, sink.state
            else:
                state = db_retry(lambda: lease_renew(taken=batcher.taken), what="lease renewal")
                connection.close()
            if state.cancel_requested:
                raise TurnStopped(Turn.Status.CANCELLED, "stopped by a user")
            if drain_requested():
                raise TurnStopped("released", "the worker is shutting down")
            if not stream_loop.alive():  # it only ends on a bug: another worker goes on from here
                raise TurnStopped("released", "the worker's stream loop stopped")
            if time.monotonic() >= deadline:
                raise TurnStopped(Turn.Status.FAILED, "the turn hit its time limit")
    except BaseException:
        if not future.done() and stream_loop.alive():
            loop.call_soon_threadsafe(step.stop)
            # the batcher is the runner's again only once the task has ended
            concurrent.futures.wait([future], timeout=10)
            if not future.done():
                log.warning("turn %s: its model step did not end in 10 s", batcher.taken.turn_id)
        raise
