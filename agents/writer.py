"""Group commit: one writer thread per worker process persists the chunks of every turn it runs.

A runner hands each flushed batch of text to `ChunkWriter.submit` and goes on reading the
model. A writer lane takes everything waiting (from all its turns), writes it in ONE
fenced statement (`leases.chunks_write_unsent`), then broadcasts the deltas of the turns that
still hold their lease, in order (one channel-layer message per turn per batch, its publish
overlapping the next statement). Under load batches grow by themselves while the previous
statement runs, so a process with many turns streaming does a few commits a flush interval
instead of one per turn per flush; with one turn it is one statement per flush, as before,
but the runner no longer waits for it.

Order and safety: a turn's chunks are written in index order (FIFO, and a batch is one
transaction), each delta is broadcast only after its commit, and a turn that lost its lease
gets nothing written (the statement's fencing) and `lost` set for its runner to see.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from agents.chunks import ChunkRow, chunk_deltas, chunks_write_unsent
from agents.turns import LeaseLost, LeaseState, TakenTurn, db_retry
from rooms import broadcast, metrics

log = logging.getLogger(__name__)
MAX_PENDING = 64  # chunks of one turn waiting to be written before its runner waits
IDLE_RELEASE = 60.0  # seconds without rows after which a lane gives its connection back (taking
# one again costs a health-check round trip: a turn that starts after a pause should not pay it)


@dataclass
class TurnSink:
    """A running turn's side of the writer: what it submitted and what came of it."""

    taken: TakenTurn
    submitted: int = 0
    written: int = 0
    state: LeaseState = field(default_factory=lambda: LeaseState(cancel_requested=False))
    lost: bool = False
    error: BaseException | None = None
    #: its runner waits on this (backpressure, wait_written); woken only for its own rows
    changed: threading.Condition | None = None

    def raise_if_failed(self) -> None:
        if self.lost:
            raise LeaseLost(f"turn {self.taken.turn_id} generation {self.taken.generation}")
        if self.error is not None:
            raise self.error


def _wake(sinks: Iterable[TurnSink]) -> None:
    """Wake the runners of these turns (each waits on its own condition: no thundering herd)."""
    for sink in sinks:
        if sink.changed is not None:
            sink.changed.notify_all()


class _Lane:
    """One writer thread with its own database connection (started on first use, again after
    a fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer thread waits for rows on it
        self._queue: deque[tuple[TurnSink, ChunkRow]] = deque()
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._publishing: tuple[concurrent.futures.Future[None], int] | None = None

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # first use, or a forked pool process
            self._pid = os.getpid()
            self._queue.clear()
            self._stopping = False
            self._publishing = None
            self._thread = threading.Thread(target=self._run, name="chunk-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, close the thread's database connection and end the thread."""
        with self._lock:
            thread, self._stopping = self._thread, True
            self._work.notify()
        if thread is not None and self._pid == os.getpid():
            thread.join(timeout)
        self._pid, self._thread = 0, None

    def submit(self, sink: TurnSink, index: int, text: str) -> LeaseState:
        """Queue one chunk; returns the turn's lease state as of its last written batch.

        Raises LeaseLost (or the database error) if an earlier batch of this turn failed.
        """
        with self._lock:
            self._ensure_thread()
            if sink.changed is None:
                sink.changed = threading.Condition(self._lock)
            sink.raise_if_failed()
            while sink.submitted - sink.written >= MAX_PENDING and not (sink.lost or sink.error):
                sink.changed.wait(1.0)  # backpressure: the database is slower than the model
            sink.raise_if_failed()
            self._queue.append((sink, ChunkRow(sink.taken, index, text)))
            sink.submitted += 1
            self._work.notify()
            return sink.state

    def has_room(self, sink: TurnSink) -> bool:
        """Whether `submit` would queue at once (fewer than MAX_PENDING chunks of the turn wait)."""
        return sink.submitted - sink.written < MAX_PENDING

    def wait_written(self, sink: TurnSink, timeout: float | None = None) -> LeaseState:
        """Block until every chunk this turn submitted is written; raises like `submit`."""
        with self._lock:
            if sink.changed is not None:  # else it never submitted anything
                sink.changed.wait_for(
                    lambda: sink.written >= sink.submitted or sink.lost or sink.error, timeout
                )
            sink.raise_if_failed()
            if sink.written < sink.submitted:
                raise OperationalError(f"turn {sink.taken.turn_id}: chunk writes did not finish in time")
            return sink.state

    def _published_wait(self) -> None:
        if self._publishing is not None:
            broadcast.published_wait(*self._publishing)
            self._publishing = None

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._work.wait_for(lambda: bool(self._queue) or self._stopping, IDLE_RELEASE):
                    connection.close()  # idle: its connection goes back to the pool meanwhile
                    self._work.wait_for(lambda: bool(self._queue) or self._stopping)
                if not self._queue:  # stopping, and nothing left to write
                    self._published_wait()
                    connection.close()
                    return
                # a bounded statement: its commit stays a few milliseconds long
                size = min(settings.CHUNK_WRITE_BATCH, len(self._queue))
                batch = [self._queue.popleft() for _ in range(size)]
            try:
                self._write(batch)
            except Exception as exc:
                log.warning("chunk writer: a batch of %s chunks failed: %r", len(batch), exc)
                connection.close()  # whatever state it is in, the next batch starts clean
                error = exc if isinstance(exc, OperationalError | InterfaceError) else (
                    OperationalError(f"chunk write failed: {exc!r}"))  # fmt: skip
                with self._lock:
                    for sink, _ in batch:
                        sink.error = error
                    _wake({id(sink): sink for sink, _ in batch}.values())

    def _write(self, batch: list[tuple[TurnSink, ChunkRow]]) -> None:
        live = [(sink, row) for sink, row in batch if not (sink.lost or sink.error)]
        rows = [row for _, row in live]
        started = time.perf_counter()
        held = db_retry(lambda: chunks_write_unsent(rows), what="chunk write") if rows else {}
        if rows:
            metrics.CHUNK_WRITE_SECONDS.observe(time.perf_counter() - started)
        sent = [row for sink, row in live if sink.taken.turn_id in held]
        # After the commit, in order. The publish overlaps the next batch's statement: only the
        # previous batch's publish is waited for (backpressure if Redis is slow); the publisher
        # loop sends FIFO, so the runner's later broadcasts (the turn's end) still come after.
        self._published_wait()
        deltas = [(broadcast.room_group(room_id), m) for room_id, m in chunk_deltas(sent)]
        if deltas:
            self._publishing = (broadcast.publish_started(deltas), len(deltas))
        with self._lock:
            for sink, _ in batch:
                state = held.get(sink.taken.turn_id)
                if state is None:
                    sink.lost = True
                else:
                    sink.state = state
                sink.written += 1
            _wake({id(sink): sink for sink, _ in batch}.values())


class ChunkWriter:
    """The process's chunk writers: `CHUNK_WRITERS` lanes, each a thread with its own
    connection, so that Postgres runs that many statements at once. A turn always goes to the
    same lane (by turn id), which keeps its chunks and their deltas in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lanes: list[_Lane] = []

    def _lane(self, sink: TurnSink) -> _Lane:
        lanes = self._lanes
        if not lanes:
            with self._lock:
                if not self._lanes:
                    self._lanes = [_Lane() for _ in range(max(1, settings.CHUNK_WRITERS))]
                lanes = self._lanes
        return lanes[sink.taken.turn_id % len(lanes)]

    def submit(self, sink: TurnSink, index: int, text: str) -> LeaseState:
        """Queue one chunk; returns the turn's lease state as of its last written batch.

        Raises LeaseLost (or the database error) if an earlier batch of this turn failed.
        """
        return self._lane(sink).submit(sink, index, text)

    def has_room(self, sink: TurnSink) -> bool:
        """Whether `submit` would queue this turn's next chunk without waiting (backpressure)."""
        return self._lane(sink).has_room(sink)

    def wait_written(self, sink: TurnSink, timeout: float | None = None) -> LeaseState:
        """Block until every chunk this turn submitted is written; raises like `submit`."""
        return self._lane(sink).wait_written(sink, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, close the lanes' database connections and end their threads."""
        with self._lock:
            lanes, self._lanes = self._lanes, []
        for lane in lanes:
            lane.stop(timeout)


writer = ChunkWriter()
