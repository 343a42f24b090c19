"""The per-process room hub (rooms/hub.py): in-process against the real Redis, and end to end
through Daphne (the stack's web process) with the real worker and fake model."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from channels.layers import get_channel_layer
from django.conf import settings

from rooms.client import RoomClient
from rooms.hub import get_hub
from tests.conftest import run_async
from tests.integration.test_room_actor import (
    assert_matches_database,
    assistant_messages,
    client_for,
    turns_done,
)

pytestmark = [pytest.mark.integration]


class Recorder:
    """A hub member that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.resyncs = 0

    async def hub_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def hub_resync(self) -> None:
        self.resyncs += 1


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.01)


def kill_hub_connections(pid: int | None = None) -> int:
    """Drop the hubs' Redis connections (of this run; of one process if `pid` is given)."""
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    name = f"{prefix}:hub:" + (f"{socket.gethostname()}:{pid}" if pid else "")
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        ids = [c["id"] for c in client.client_list() if c.get("name", "").startswith(name)]
        for client_id in ids:
            client.client_kill_filter(_id=client_id)
        return len(ids)
    finally:
        client.close()


def ready_frames(client: RoomClient) -> int:
    return sum(f["type"] == "ready" for f in client.frames)


def test_hub_hears_what_the_channel_layer_publishes_to_a_group() -> None:
    group = f"room.{uuid.uuid4().int % 10**9}"

    async def scenario() -> None:
        hub, layer = get_hub(), get_channel_layer()
        assert hub.channel(group) == layer._get_layer()._get_group_channel_name(group)
        member = Recorder()
        await hub.join(member, group)
        await layer.group_send(group, {"type": "room.event", "seq": 1, "text": "one"})
        await until(lambda: len(member.messages) == 1)
        hub.leave(member, group)  # the group empties: the hub unsubscribes...
        await hub.join(member, group)  # ...and subscribes again at once
        assert hub.size(group) == 1
        await layer.group_send(group, {"type": "room.event", "seq": 2, "text": "two"})
        await until(lambda: len(member.messages) == 2)
        await asyncio.sleep(0.1)  # nothing is delivered twice
        assert [m["seq"] for m in member.messages] == [1, 2]
        hub.leave(member, group)
        assert hub.size(group) == 0

    run_async(scenario())


def test_after_losing_redis_the_hub_resubscribes_and_members_resync() -> None:
    group = f"room.{uuid.uuid4().int % 10**9}"

    async def scenario() -> None:
        hub, layer = get_hub(), get_channel_layer()
        members = [Recorder() for _ in range(3)]
        for member in members:
            await hub.join(member, group)
        assert await asyncio.to_thread(kill_hub_connections, os.getpid()) == 1
        await until(lambda: all(m.resyncs == 1 for m in members))  # after Redis confirmed again
        await layer.group_send(group, {"type": "room.event", "seq": 1, "text": "after"})
        await until(lambda: all(len(m.messages) == 1 for m in members))
        for member in members:
            hub.leave(member, group)

    run_async(scenario())


@pytest.mark.django_db(transaction=True)
def test_every_socket_converges_when_the_hub_loses_redis_mid_stream(stack, fake, room, alice, bob):
    async def scenario() -> list[RoomClient]:
        clients = [client_for(stack, room, (alice, bob)[i % 2][1]) for i in range(8)]
        for c in clients:
            await c.connect()
        await clients[0].send("a long one !tokens=120 !delay=15")
        await clients[0].wait_for(lambda c: sum(f["type"] == "delta" for f in c.frames) >= 5)
        assert await asyncio.to_thread(kill_hub_connections) >= 1
        for _ in range(2):  # and again while it reconnects or streams
            await asyncio.sleep(0.15)
            await asyncio.to_thread(kill_hub_connections)
        for c in clients:
            await c.wait_for(lambda c: turns_done(c, 1) and ready_frames(c) >= 2, timeout=40)
            await c.close()
        return clients

    for c in run_async(scenario()):
        assert_matches_database(c, room)


@pytest.mark.django_db(transaction=True)
def test_a_socket_that_stops_reading_does_not_hold_up_the_others(stack, fake, room, alice, bob):
    async def scenario() -> tuple[RoomClient, list[RoomClient]]:
        slow = client_for(stack, room, bob[1])
        await slow.connect()
        slow.ws.transport.pause_reading()  # it reads nothing more until resumed
        others = [client_for(stack, room, alice[1]) for _ in range(3)]
        for c in others:
            await c.connect()
        await others[0].send("a long answer !tokens=3000 !delay=0")
        for c in others:
            await c.wait_for(lambda c: turns_done(c, 1), timeout=60)
        assert not slow._reader.done() and not turns_done(slow, 1)
        slow.ws.transport.resume_reading()
        await slow.wait_for(lambda c: turns_done(c, 1), timeout=60)
        for c in (slow, *others):
            await c.close()
        return slow, others

    slow, others = run_async(scenario())
    for c in (slow, *others):
        assert_matches_database(c, room)


@pytest.mark.django_db(transaction=True)
def test_sockets_joining_an_empty_room_mid_stream_see_no_gap(stack, fake, room, alice, bob):
    """Subscribed before the replay is read: a joiner never misses a delta between the two, even
    when it is the room's only socket (the hub subscribes to the room for it)."""

    async def scenario() -> tuple[str, list[RoomClient]]:
        sender = client_for(stack, room, alice[1])
        await sender.connect()
        await sender.send("a long one !tokens=300 !delay=10")
        await sender.wait_for(lambda c: any(m.status == "streaming" for m in assistant_messages(c)))
        await sender.close()
        joiners = []
        for _ in range(6):  # one at a time: each finds the room without sockets
            c = client_for(stack, room, bob[1])
            await c.connect()
            await c.wait_for(lambda c: turns_done(c, 1) or sum(f["type"] == "delta" for f in c.frames) >= 3)
            await c.close()
            joiners.append(c)
        final = client_for(stack, room, bob[1])
        await final.connect()
        await final.wait_for(lambda c: turns_done(c, 1), timeout=40)
        await final.close()
        return assistant_messages(final)[0].content, [*joiners, final]

    final_text, clients = run_async(scenario())
    for c in clients:
        assert ready_frames(c) == 1, "the socket saw a gap and had to sync"
        assert assistant_messages(c)[0].content == final_text[: len(assistant_messages(c)[0].content)]
    assert_matches_database(clients[-1], room)
