"""The producer: streams chunks into rooms through the project's own write path, in its own process.

    python -m bench.perf.produce --user U --rooms 1,2,3 --chunks N [--rate R] [--seconds S] --out F

Per room (one thread each, like one turn per Celery pool slot): post a user message with the
real service (`rooms.services.message_post`), lease its turn (`agents.turns.turn_take_next`),
then hand each chunk to the process's chunk writer as the runner does (`agents.writer`: one
thread writes the waiting chunks of every turn in one fenced statement, group commit, then
broadcasts their deltas), wait until all are written, and finish the turn (`turn_finish`).
The only thing patched, in this process only, is the Celery kick (no worker must take these
turns) and a timer around the chunk statement (its COMMIT included). Prints `ready <json>`,
waits for a line on stdin, streams, writes a JSON report to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.backends.utils import CursorWrapper  # noqa: E402

import agents.chunks  # noqa: E402
import agents.kicks  # noqa: E402
from agents.models import Turn  # noqa: E402
from agents.turns import turn_finish, turn_take_next  # noqa: E402
from agents.writer import TurnSink, writer  # noqa: E402
from rooms.models import Room  # noqa: E402
from rooms.services import message_post  # noqa: E402

agents.kicks.kick_room_send = lambda room_id: False  # these turns belong to this process

_commit_ns: list[int] = []
_commit_end: dict[tuple[int, int], int] = {}  # (message id, chunk index) -> wall clock after COMMIT
_record_commit_end = False  # --lag only: decoding the rows again is not free
_orig_execute = CursorWrapper.execute


def _timed_execute(self: CursorWrapper, sql: str, params: Any = None) -> object:
    """A chunk write is one autocommitted statement (a batch of chunks, group commit): its
    execution is its COMMIT."""
    if sql is not agents.chunks._CHUNKS_SQL:
        return _orig_execute(self, sql, params)
    t = time.perf_counter_ns()
    result = _orig_execute(self, sql, params)
    _commit_ns.append(time.perf_counter_ns() - t)
    end = time.time_ns()
    if _record_commit_end:
        for row in json.loads(params[0]):  # [turn id, generation, message id, index, text]
            _commit_end[(row[2], row[3])] = end
    return result


CursorWrapper.execute = _timed_execute  # type: ignore[method-assign]


def pct(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--user", type=int, required=True)
    parser.add_argument("--rooms", required=True)
    parser.add_argument("--chunks", type=int, default=0, help="per room; 0: until --seconds")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=0.0, help="chunks/s per room; 0: unpaced")
    parser.add_argument("--lag", action="store_true", help="record commit times of room 0")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    global _record_commit_end
    _record_commit_end = args.lag

    user = get_user_model().objects.get(pk=args.user)
    taken = []
    for room_id in [int(r) for r in args.rooms.split(",")]:
        room = Room.objects.get(pk=room_id)
        message_post(room=room, author=user, client_id=uuid.uuid4(), content="bench producer")
        t = turn_take_next(room_id=room_id, owner="bench-producer")
        assert t is not None, f"room {room_id}: no turn to take"
        taken.append(t)
    connection.close()
    print("ready " + json.dumps([t.message_id for t in taken]), flush=True)
    sys.stdin.readline()

    results: list[dict] = [{} for _ in taken]
    call_ns: list[int] = []
    commit_end: dict[int, int] = {}

    def stream(k: int) -> None:
        tk = taken[k]
        sink = TurnSink(tk)
        n, i = args.chunks, 0
        t0 = time.monotonic()
        end = t0 + args.seconds if args.seconds else float("inf")
        while (not n or i < n) and time.monotonic() < end:
            if args.rate:
                delay = t0 + i / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            c = time.perf_counter_ns()
            writer.submit(sink, i, f"t{i} ")
            call_ns.append(time.perf_counter_ns() - c)
            i += 1
        writer.wait_written(sink, timeout=60)
        elapsed = time.monotonic() - t0
        if args.lag and k == 0:
            commit_end.update({j: _commit_end[(tk.message_id, j)] for j in range(i)})
        turn_finish(taken=tk, status=Turn.Status.DONE)
        connection.close()
        results[k] = {"message_id": tk.message_id, "chunks": i, "seconds": elapsed}

    commits_before = len(_commit_ns)
    threads = [threading.Thread(target=stream, args=(k,)) for k in range(len(taken))]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t0
    streamed = _commit_ns[commits_before:]
    total = sum(r["chunks"] for r in results)
    report = {
        "rooms": results,
        "chunks": total,
        "wall_s": wall,
        "rows_per_s": total / max(wall, 1e-9),
        "commit_p50_ms": pct(streamed, 0.5),
        "commit_p99_ms": pct(streamed, 0.99),
        "call_p50_ms": pct(call_ns, 0.5),
        "call_p99_ms": pct(call_ns, 0.99),
        "commit_end_ns": commit_end,
    }
    with open(args.out, "w") as f:
        json.dump(report, f)
    print("done", flush=True)


if __name__ == "__main__":
    main()
