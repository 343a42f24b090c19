"""Graceful shutdown (worker hand-over, ASGI 1012), rate limits, bans and revoked tokens."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

from agents.models import Turn
from rooms.client import RoomClient
from rooms.models import Message, StreamChunk
from rooms.services import member_ban, membership_join, token_revoke
from tests.conftest import on_own_connection, run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_to_a_worker_hands_its_turn_to_another_worker(stack, fake, room, alice):
    stack.start("worker2")
    try:

        async def scenario() -> RoomClient:
            a = RoomClient(stack.base_url, room.slug, token=alice[1])
            await a.connect()
            await a.send("a long one !tokens=150 !delay=30")
            await a.wait_for(lambda c: sum(f["type"] == "delta" for f in c.frames) >= 5)
            owner_pid = int(Turn.objects.get(room=room, status="running").lease_owner.rsplit(":", 1)[1])
            workers = {p.pid: n for n, p in stack.procs.items()}
            # the worker's main process: the runner's own (threads pool) or its parent (prefork)
            main_pid = owner_pid if owner_pid in workers else psutil.Process(owner_pid).ppid()
            name = workers[main_pid]
            os.kill(main_pid, signal.SIGTERM)  # warm shutdown of that worker only
            stack.procs.pop(name).wait(timeout=20)  # it exits without finishing the answer
            await a.wait_for(lambda c: any(t["status"] == "done" for t in c.state.turns.values()), timeout=40)
            await a.close()
            return a

        a = run_async(scenario())
    finally:
        if "worker" not in stack.procs:
            stack.start("worker")
        stack.stop("worker2")
    turn = Turn.objects.get(room=room)
    message = Message.objects.get(pk=turn.assistant_message_id)
    assert turn.status == "done" and message.status == "complete"
    from agents.providers.base import CONTINUE_PROMPT

    assert any(  # continued from what it had said, not restarted
        m["content"] == CONTINUE_PROMPT for r in fake.requests for m in r["messages"]
    )
    chunks = list(StreamChunk.objects.filter(message=message).order_by("index"))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert message.content == "".join(c.text for c in chunks)
    assert any(f["type"] == "turn" and f["turn"]["recovering"] for f in a.frames), (
        "clients were not told the turn was being recovered"
    )
    assert Message.objects.filter(room=room, role="assistant").count() == 1
    assert a.state.messages[message.pk].content == message.content


def test_sigterm_to_the_asgi_server_closes_sockets_with_4012_and_clients_come_back(stack, fake, room, alice):
    async def connect() -> RoomClient:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        return a

    async def scenario() -> tuple[int | None, RoomClient]:
        a = await connect()
        os.kill(stack.procs["web"].pid, signal.SIGTERM)
        await a.wait_for(lambda c: c._reader.done(), timeout=10)
        code = a.close_code
        stack.procs.pop("web").wait(timeout=15)
        stack.start("web")
        await a.connect()  # resumes with since
        await a.wait_ack(await a.send("back again !say=welcome back"))
        await a.wait_for(lambda c: any(t["status"] == "done" for t in c.state.turns.values()))
        await a.close()
        return code, a

    code, a = run_async(scenario())
    assert code == 4012
    assert Message.objects.get(room=room, role="assistant").content == "welcome back"


def test_frames_over_the_per_socket_rate_get_rate_limited_with_retry_after(stack, room, alice):
    async def scenario() -> list[dict]:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        for _ in range(600):  # 200/s allowed in the test stack, burst 400
            await a.send_raw('{"type":"typing"}')
        await a.wait_for(lambda c: bool(c.errors), timeout=10)
        await asyncio.sleep(1.0)
        pongs = sum(f["type"] == "pong" for f in a.frames)
        await a.ping()  # after waiting, the socket works again
        await a.wait_for(lambda c: sum(f["type"] == "pong" for f in c.frames) > pongs, timeout=5)
        await a.close()
        return a.errors

    errors = run_async(scenario())
    assert errors and {e["code"] for e in errors} == {"rate_limited"}
    assert all(0 < e["retry_after"] <= 1 for e in errors)


def test_a_full_room_queue_refuses_more_questions_and_stores_nothing(stack, fake, room, alice):
    async def scenario() -> list[dict]:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await a.send("hold the room !hang")
        await a.wait_for(lambda c: any(t["status"] == "running" for t in c.state.turns.values()))
        for i in range(10):  # the test stack allows 8 waiting turns per room
            await a.send(f"q{i}")
        await a.wait_for(lambda c: len(c.acks) + len(c.errors) >= 11, timeout=10)
        await a.close()
        return a.errors

    errors = run_async(scenario())
    assert [e["code"] for e in errors] == ["rate_limited", "rate_limited"], (
        errors,
        list(Turn.objects.filter(room=room).values_list("status", flat=True)),
    )
    assert Turn.objects.filter(room=room, status="queued").count() == 8
    assert Message.objects.filter(room=room, role="user").count() == 9


def test_a_banned_member_is_disconnected_and_cannot_come_back(stack, room, alice, bob):
    membership_join(room=room, user=bob[0])

    async def scenario() -> tuple[int | None, int | None]:
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await b.connect()
        await asyncio.to_thread(on_own_connection, member_ban, room=room, user=bob[0])
        await b.wait_for(lambda c: c._reader.done(), timeout=10)
        first = b.close_code
        again = RoomClient(stack.base_url, room.slug, token=bob[1])
        with pytest.raises(ConnectionError):
            await again.connect()
        return first, again.close_code

    assert run_async(scenario()) == (4403, 4403)


def test_revoking_a_token_closes_the_sockets_it_opened(stack, room, alice):
    from rooms.models import ApiToken

    token = ApiToken.objects.filter(user=alice[0]).get()

    async def scenario() -> int | None:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await asyncio.to_thread(on_own_connection, token_revoke, user=alice[0], token_id=token.pk)
        await a.wait_for(lambda c: c._reader.done(), timeout=10)
        return a.close_code

    assert run_async(scenario()) == 4401
