"""The room actor end to end: real Daphne, Celery worker and beat, Postgres, Redis, fake LLM."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from typing import Any

import pytest

from agents.models import Turn
from rooms.client import RoomClient
from rooms.models import Message, RoomEvent, StreamChunk
from tests.conftest import run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def client_for(stack: Any, room: Any, token: str, **kw: Any) -> RoomClient:
    return RoomClient(stack.base_url, room.slug, token=token, **kw)


def assert_matches_database(client: RoomClient, room: Any) -> None:
    """The client's view of every message equals the database's, byte for byte."""
    db = [(m.seq, m.role, m.status, m.content) for m in Message.objects.filter(room=room).order_by("seq")]
    assert client.state.transcript() == db
    seqs = client.state.applied_seqs
    assert seqs == sorted(set(seqs)), "a room event was applied twice or out of order"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a room event is missing"


def turns_done(client: RoomClient, n: int) -> bool:
    terminal = {"done", "cancelled", "failed", "interrupted"}
    return sum(1 for t in client.state.turns.values() if t["status"] in terminal) >= n


def assistant_messages(client: RoomClient) -> list[Any]:
    return sorted((m for m in client.state.messages.values() if m.role == "assistant"), key=lambda m: m.seq)


def test_two_clients_see_identical_transcripts_in_the_same_seq_order(stack, fake, room, alice, bob):
    async def scenario() -> None:
        a = client_for(stack, room, alice[1])
        b = client_for(stack, room, bob[1])
        await a.connect()
        await b.connect()
        await a.wait_ack(await a.send("hello from Alice !tokens=15 !delay=10"))
        await b.wait_ack(await b.send("hello from Bob !tokens=10 !delay=10"))
        for c in (a, b):
            await c.wait_for(lambda c: turns_done(c, 2), timeout=30)
        assert a.state.transcript() == b.state.transcript()
        assert a.state.applied_seqs == b.state.applied_seqs
        assert_matches_database(a, room)
        assert_matches_database(b, room)
        await a.close()
        await b.close()

    run_async(scenario())
    assert Message.objects.filter(room=room, role="assistant", status="complete").count() == 2


def test_three_messages_sent_during_an_answer_are_answered_one_at_a_time_in_order(stack, fake, room, alice):
    async def scenario() -> RoomClient:
        a = client_for(stack, room, alice[1])
        await a.connect()
        await a.send("first !tokens=40 !delay=25")
        await a.wait_for(lambda c: any(m.status == "streaming" for m in assistant_messages(c)))
        ids = [await a.send(f"queued {i} !say=answer {i}") for i in (2, 3, 4)]
        for client_id in ids:  # accepted at once, while the first answer streams
            await a.wait_ack(client_id, timeout=3)
        assert any(m.status == "streaming" for m in assistant_messages(a))
        await a.wait_for(lambda c: turns_done(c, 4), timeout=40)
        await a.close()
        return a

    a = run_async(scenario())
    answers = [m.content for m in assistant_messages(a)]
    assert answers[1:] == ["answer 2", "answer 3", "answer 4"]
    turns = list(Turn.objects.filter(room=room).order_by("queue_seq"))
    assert [t.status for t in turns] == ["done"] * 4
    for earlier, later in zip(turns, turns[1:], strict=False):
        assert earlier.finished_at <= later.started_at, "two turns of one room overlapped"
    assert_matches_database(a, room)


@pytest.mark.parametrize(
    "k,delay_ms", [(0, 20), (1, 20), (7, 20), (3, 2)], ids=["k0", "k1", "k7", "mid-batch"]
)
def test_reconnect_with_since_after_k_deltas_converges_without_gap_or_duplicate(
    stack, fake, room, alice, k, delay_ms
):
    async def scenario() -> RoomClient:
        a = client_for(stack, room, alice[1])
        await a.connect()
        await a.send(f"long one !tokens=60 !delay={delay_ms}")
        if k == 0:
            await a.wait_for(lambda c: any(m.status == "streaming" for m in assistant_messages(c)))
        else:
            await a.wait_for(lambda c: sum(f["type"] == "delta" for f in c.frames) >= k)
        await a.drop()
        await asyncio.sleep(0.3)  # the stream goes on without us
        await a.connect()  # since = last seq we applied
        await a.wait_for(lambda c: turns_done(c, 1), timeout=30)
        await a.close()
        return a

    a = run_async(scenario())
    assert_matches_database(a, room)
    message = Message.objects.get(room=room, role="assistant")
    assert message.status == "complete"
    chunks = "".join(StreamChunk.objects.filter(message=message).values_list("text", flat=True))
    assert message.content == chunks
    assert assistant_messages(a)[0].content == message.content
    assert a.state.duplicate_deltas == 0


def test_a_turn_finishes_with_no_client_connected_and_a_later_client_gets_it(stack, fake, room, alice, bob):
    async def send_and_leave() -> None:
        a = client_for(stack, room, alice[1])
        await a.connect()
        await a.wait_ack(await a.send("answer while nobody watches !tokens=30 !delay=20"))
        await a.close()

    run_async(send_and_leave())
    deadline = time.monotonic() + 30
    while not Turn.objects.filter(room=room, status="done").exists():
        assert time.monotonic() < deadline, "the turn did not finish without a client"
        time.sleep(0.1)

    async def come_back() -> RoomClient:
        b = client_for(stack, room, bob[1])
        await b.connect()
        await b.close()
        return b

    b = run_async(come_back())
    answer = assistant_messages(b)[0]
    assert answer.status == "complete" and answer.content.endswith("w30")
    assert_matches_database(b, room)


def test_resending_a_send_with_the_same_client_id_stores_one_message_and_acks_twice(stack, fake, room, alice):
    client_id = str(uuid.uuid4())

    async def scenario() -> list[dict[str, Any]]:
        a = client_for(stack, room, alice[1])
        await a.connect()
        await a.send("only once !tokens=3 !delay=1", client_id=client_id)
        await a.wait_ack(client_id)
        await a.drop()  # as if the ack were lost with the connection
        await a.connect()
        await a.send("only once !tokens=3 !delay=1", client_id=client_id)
        await a.wait_for(lambda c: sum(f["type"] == "ack" for f in c.frames) == 2)
        await a.close()
        return [f for f in a.frames if f["type"] == "ack"]

    acks = run_async(scenario())
    assert acks[0] == acks[1]
    assert Message.objects.filter(room=room, client_id=client_id).count() == 1
    assert Turn.objects.filter(room=room).count() == 1


def test_cancel_keeps_the_partial_text_marks_it_cancelled_and_closes_the_llm_stream(stack, fake, room, alice):
    async def scenario() -> RoomClient:
        a = client_for(stack, room, alice[1])
        await a.connect()
        await a.send("stop me !tokens=300 !delay=30")
        await a.wait_for(lambda c: sum(f["type"] == "delta" for f in c.frames) >= 5)
        running = next(t for t in a.state.turns.values() if t["status"] == "running")
        await a.cancel(running["id"])
        await a.wait_for(lambda c: turns_done(c, 1), timeout=10)
        await a.close()
        return a

    a = run_async(scenario())
    message = Message.objects.get(room=room, role="assistant")
    assert message.status == "cancelled"
    assert message.content and not message.content.endswith("w300")
    assert assistant_messages(a)[0].content == message.content
    assert Turn.objects.get(room=room).status == "cancelled"
    assert fake.wait_for_disconnects(1, timeout=5), "the fake LLM never saw the stream closed"
    assert_matches_database(a, room)


@pytest.mark.parametrize("policy", ["continue", "interrupt"])
def test_a_worker_killed_mid_stream_is_recovered_and_the_next_turn_runs(stack, fake, room, alice, policy):
    room.recovery = policy
    room.save()

    async def scenario() -> tuple[RoomClient, str]:
        a = client_for(stack, room, alice[1])
        await a.connect()
        await a.send("killed midway !tokens=400 !delay=30")
        await a.wait_for(lambda c: sum(f["type"] == "delta" for f in c.frames) >= 5)
        await a.wait_ack(await a.send("next please !say=the next answer"))
        running = Turn.objects.get(room=room, status="running")
        pid = int(running.lease_owner.rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        if pid == stack.procs["worker"].pid:  # a threads pool: the worker itself died
            stack.procs["worker"].wait(timeout=30)
            stack.start("worker")  # as its supervisor would
        await asyncio.sleep(0.5)
        persisted = "".join(
            StreamChunk.objects.filter(message_id=running.assistant_message_id)
            .order_by("index")
            .values_list("text", flat=True)
        )
        # lease timeout (3 s in tests) plus one sweep (1 s), with slack for a busy machine
        await a.wait_for(lambda c: turns_done(c, 2), timeout=40)
        await a.close()
        return a, persisted

    a, persisted = run_async(scenario())
    first, second = Turn.objects.filter(room=room).order_by("queue_seq")
    assert second.status == "done"
    assert Message.objects.get(pk=second.assistant_message_id).content == "the next answer"
    answer = Message.objects.get(pk=first.assistant_message_id)
    chunks = "".join(StreamChunk.objects.filter(message=answer).values_list("text", flat=True))
    assert persisted and answer.content == chunks
    if policy == "interrupt":
        assert (first.status, answer.status) == ("interrupted", "interrupted")
        assert answer.content == persisted
    else:  # continued in the same message, after what was already said
        assert (first.status, answer.status, first.attempt) == ("done", "complete", 2)
        assert answer.content.startswith(persisted) and len(answer.content) > len(persisted)
        assert any(
            m["role"] == "assistant" and m["content"] == persisted
            for request in fake.requests
            for m in request["messages"]
        ), "the continuation step did not give the model what it already said"
    assert Message.objects.filter(room=room, role="assistant").count() == 2
    assert_matches_database(a, room)


BAD_FRAMES = [
    ("too_large", '{"type":"send","client_id":"%s","content":"%s"}' % (uuid.uuid4(), "x" * 70_000)),
    ("bad_json", "{not json"),
    ("bad_json", "[1, 2, 3]"),
    ("bad_json", b"\x00\x01binary"),
    ("unknown_type", '{"type":"explode"}'),
    ("unknown_type", '{"content":"no type"}'),
    ("invalid", '{"type":"send","client_id":"not-a-uuid","content":"hi"}'),
    ("invalid", '{"type":"send","client_id":"%s","content":123}' % uuid.uuid4()),
    ("invalid", '{"type":"send","client_id":"%s","content":"   "}' % uuid.uuid4()),
    ("invalid", '{"type":"send","client_id":"%s","content":"hi","extra":1}' % uuid.uuid4()),
    ("invalid", '{"type":"cancel","turn_id":"1"}'),
    ("invalid", '{"type":"sync","since":-1}'),
    ("not_found", '{"type":"cancel","turn_id":987654321}'),
]


def test_each_bad_frame_gets_its_error_code_changes_nothing_and_keeps_the_socket(stack, fake, room, alice):
    before = (Message.objects.count(), RoomEvent.objects.count(), Turn.objects.count())

    async def scenario() -> list[str]:
        a = client_for(stack, room, alice[1])
        await a.connect()
        codes = []
        for _expected, raw in BAD_FRAMES:
            n = len(a.errors)
            await a.send_raw(raw)
            await a.wait_for(lambda c, n=n: len(c.errors) > n, timeout=5)
            codes.append(a.errors[-1]["code"])
        pongs = sum(f["type"] == "pong" for f in a.frames)
        await a.ping()  # the socket is still usable
        await a.wait_for(lambda c: sum(f["type"] == "pong" for f in c.frames) > pongs, timeout=5)
        await a.close()
        return codes

    codes = run_async(scenario())
    assert codes == [expected for expected, _ in BAD_FRAMES]
    assert (Message.objects.count(), RoomEvent.objects.count(), Turn.objects.count()) == before


def test_a_member_removed_mid_socket_is_closed_with_4403_and_nothing_is_stored(stack, fake, room, alice, bob):
    from rooms.models import Membership

    async def scenario() -> int | None:
        b = client_for(stack, room, bob[1])
        await b.connect()  # public room: joined on connect
        Membership.objects.filter(room=room, user=bob[0]).delete()  # no broadcast at all
        await b.send("am I still here?")  # the write frame re-checks the socket's standing
        await b.wait_for(lambda c: c._reader.done(), timeout=5)
        return b.close_code

    assert run_async(scenario()) == 4403
    assert not Message.objects.filter(room=room).exists()


def test_private_rooms_refuse_non_members_and_unknown_tokens(stack, fake, alice, bob):
    from rooms.services import room_create

    private = room_create(owner=alice[0], title="Secret", visibility="private")

    async def close_code(token: str, slug: str) -> int | None:
        c = RoomClient(stack.base_url, slug, token=token)
        with pytest.raises(ConnectionError):
            await c.connect()
        return c.close_code

    assert run_async(close_code(bob[1], private.slug)) == 4403
    assert run_async(close_code("rct_not-a-token", private.slug)) == 4401
    assert run_async(close_code(alice[1], "no-such-room")) == 4404
