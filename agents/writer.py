"""Group commit: one writer thread per worker process persists the chunks of every turn it runs.

A runner hands each flushed batch of text to `ChunkWriter.submit` and goes on reading the
model. The writer takes everything waiting (from all turns of the process), writes it in ONE
fenced statement (`leases.chunks_write_unsent`), then broadcasts the deltas of the turns that
still hold their lease, in order. Under load batches grow by themselves while the previous
statement runs, so a process with many turns streaming does a few commits a flush interval
instead of one per turn per flush; with one turn it is one statement per flush, as before,
but the runner no longer waits for it.

Order and safety: a turn's chunks are written in index order (FIFO, and a batch is one
transaction), each delta is broadcast only after its commit, and a turn that lost its lease
gets nothing written (the statement's fencing) and `lost` set for its runner to see.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from dataclasses import dataclass, field

from django.db import InterfaceError, OperationalError, connection

from agents.leases import ChunkRow, LeaseLost, LeaseState, chunk_deltas, chunks_write_unsent, db_retry
from agents.queue import TakenTurn
from rooms import broadcast

log = logging.getLogger(__name__)
MAX_PENDING = 64  # chunks of one turn waiting to be written before its runner waits
MAX_BATCH = 256  # rows per statement at most


@dataclass
class TurnSink:
    """A running turn's side of the writer: what it submitted and what came of it."""

    taken: TakenTurn
    submitted: int = 0
    written: int = 0
    state: LeaseState = field(default_factory=lambda: LeaseState(cancel_requested=False))
    lost: bool = False
    error: BaseException | None = None

    def raise_if_failed(self) -> None:
        if self.lost:
            raise LeaseLost(f"turn {self.taken.turn_id} generation {self.taken.generation}")
        if self.error is not None:
            raise self.error


class ChunkWriter:
    """The process's writer thread (started on first use, again after a fork)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._queue: deque[tuple[TurnSink, ChunkRow]] = deque()
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # first use, or a forked pool process
            self._pid = os.getpid()
            self._queue.clear()
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="chunk-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, close the thread's database connection and end the thread."""
        with self._cv:
            thread, self._stopping = self._thread, True
            self._cv.notify_all()
        if thread is not None and self._pid == os.getpid():
            thread.join(timeout)
        self._pid, self._thread = 0, None

    def submit(self, sink: TurnSink, index: int, text: str) -> LeaseState:
        """Queue one chunk; returns the turn's lease state as of its last written batch.

        Raises LeaseLost (or the database error) if an earlier batch of this turn failed.
        """
        with self._cv:
            self._ensure_thread()
            sink.raise_if_failed()
            while sink.submitted - sink.written >= MAX_PENDING and not (sink.lost or sink.error):
                self._cv.wait(1.0)  # backpressure: the database is slower than the model
            sink.raise_if_failed()
            self._queue.append((sink, ChunkRow(sink.taken, index, text)))
            sink.submitted += 1
            self._cv.notify_all()
            return sink.state

    def wait_written(self, sink: TurnSink, timeout: float | None = None) -> LeaseState:
        """Block until every chunk this turn submitted is written; raises like `submit`."""
        with self._cv:
            self._cv.wait_for(lambda: sink.written >= sink.submitted or sink.lost or sink.error, timeout)
            sink.raise_if_failed()
            if sink.written < sink.submitted:
                raise OperationalError(f"turn {sink.taken.turn_id}: chunk writes did not finish in time")
            return sink.state

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._queue) or self._stopping)
                if not self._queue:  # stopping, and nothing left to write
                    connection.close()
                    return
                # at most MAX_BATCH rows a statement: a commit stays a few milliseconds long
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - handed to every runner in the batch
                log.warning("chunk writer: a batch of %s chunks failed: %r", len(batch), exc)
                connection.close()  # whatever state it is in, the next batch starts clean
                error = exc if isinstance(exc, OperationalError | InterfaceError) else (
                    OperationalError(f"chunk write failed: {exc!r}"))  # fmt: skip
                with self._cv:
                    for sink, _ in batch:
                        sink.error = error
                    self._cv.notify_all()

    def _write(self, batch: list[tuple[TurnSink, ChunkRow]]) -> None:
        live = [(sink, row) for sink, row in batch if not (sink.lost or sink.error)]
        rows = [row for _, row in live]
        held = db_retry(lambda: chunks_write_unsent(rows), what="chunk write") if rows else {}
        sent = [row for sink, row in live if sink.taken.turn_id in held]
        broadcast.send_many_sync(chunk_deltas(sent))  # after the commit, in order
        with self._cv:
            for sink, _ in batch:
                state = held.get(sink.taken.turn_id)
                if state is None:
                    sink.lost = True
                else:
                    sink.state = state
                sink.written += 1
            self._cv.notify_all()


writer = ChunkWriter()
