"""A writer batch's chunks go out as one channel-layer message per run of a message's chunks;
each socket sends them as separate `delta` frames, minus what its snapshot already covered."""

from __future__ import annotations

import asyncio
import json
import threading

from agents.chunks import ChunkRow, chunk_deltas
from agents.turns import TakenTurn
from rooms.consumers import RoomConsumer


def _taken(turn_id: int, room_id: int, message_id: int) -> TakenTurn:
    return TakenTurn(turn_id, room_id, 1, message_id, 0, 1)


def test_a_batch_becomes_one_message_per_run_of_consecutive_chunks_in_order():
    a, b = _taken(1, 10, 100), _taken(2, 20, 200)
    rows = [ChunkRow(a, 0, "A0"), ChunkRow(b, 5, "B5"), ChunkRow(a, 1, "A1"), ChunkRow(b, 6, "B6"),
            ChunkRow(a, 3, "A3")]  # fmt: skip
    out = chunk_deltas(rows)
    assert [(room, m["message_id"], m["index"], len(m["texts"])) for room, m in out] == [
        (10, 100, 0, 2),
        (20, 200, 5, 2),
        (10, 100, 3, 1),  # index 2 is missing: a new run, after the first
    ]
    frames = [json.loads(t) for _, m in out for t in m["texts"]]
    assert [(f["type"], f["message_id"], f["index"], f["text"]) for f in frames] == [
        ("delta", 100, 0, "A0"), ("delta", 100, 1, "A1"), ("delta", 200, 5, "B5"),
        ("delta", 200, 6, "B6"), ("delta", 100, 3, "A3"),
    ]  # fmt: skip


def test_a_socket_sends_each_frame_of_a_run_and_skips_what_its_snapshot_covered():
    consumer = RoomConsumer()
    sent: list[str] = []

    async def send(text_data=None, bytes_data=None, close=False):
        sent.append(text_data)

    consumer.send = send
    consumer.delta_floor = {100: 2}  # a snapshot covered chunks 0 and 1 of message 100
    run = {"type": "room.delta", "message_id": 100, "index": 0, "texts": ["d0", "d1", "d2", "d3"]}
    other = {"type": "room.delta", "message_id": 200, "index": 7, "texts": ["e7", "e8"]}
    late = {"type": "room.delta", "message_id": 100, "index": 4, "texts": ["d4"]}
    old = {"type": "room.delta", "message_id": 100, "index": 0, "texts": ["d0", "d1"]}

    async def apply_all():
        for message in (run, other, late, old):
            await consumer.room_delta(message)

    # its own thread and loop: an earlier test may leave a loop running in this one
    runner = threading.Thread(target=asyncio.run, args=(apply_all(),))
    runner.start()
    runner.join(10)
    assert sent == ["d2", "d3", "e7", "e8", "d4"]
    assert run["texts"] == ["d0", "d1", "d2", "d3"]  # shared by every socket: never changed
