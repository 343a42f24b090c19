"""Group names and sending to a room: the one user of the channel layer.

The channel layer is a doorbell, not storage: every frame sent here was committed first, and a
client that misses one recovers it with `sync` from the database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from typing import Any, Literal, TypedDict

from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)


def room_group(room_id: int) -> str:
    """The group of a room's sockets; built from the numeric id, never from URL input."""
    return f"room.{int(room_id)}"


def user_group(user_id: int) -> str:
    """The group of all sockets of one user (token revocation)."""
    return f"user.{int(user_id)}"


# The channel-layer messages (envelopes, not wire frames: they carry frames as text, encoded once
# for every socket). The consumer's handler for each is named after its `type` (rooms.replay).


class EventEnvelope(TypedDict):
    type: Literal["room.event"]
    seq: int
    text: str


class DeltaEnvelope(TypedDict):
    type: Literal["room.delta"]
    message_id: int
    index: int
    texts: list[str]


class EphemeralEnvelope(TypedDict):
    type: Literal["room.ephemeral"]
    text: str
    sender: str


class KickEnvelope(TypedDict):
    type: Literal["room.kick"]
    user_id: int
    code: int  # the close code (rooms.protocol): banned, kicked, deactivated


class RevokedEnvelope(TypedDict):
    type: Literal["user.revoked"]
    token_id: int


Envelope = EventEnvelope | DeltaEnvelope | EphemeralEnvelope | KickEnvelope | RevokedEnvelope


def event_message(seq: int, text: str) -> EventEnvelope:
    """A committed room event (its stored frame text)."""
    return {"type": "room.event", "seq": seq, "text": text}


def delta_message(message_id: int, index: int, texts: list[str]) -> DeltaEnvelope:
    """Consecutive `delta` frames of one message, chunks `index`, `index + 1`, ...: one
    channel-layer message (one encode, one PUBLISH, one hub decode) for a writer's batch."""
    return {"type": "room.delta", "message_id": message_id, "index": index, "texts": texts}


def ephemeral_message(text: str, sender: str = "") -> EphemeralEnvelope:
    """A frame not stored (presence, typing); `sender`'s own socket does not get it."""
    return {"type": "room.ephemeral", "text": text, "sender": sender}


def kick_message(user_id: int, code: int = 4403) -> KickEnvelope:
    """Close this user's sockets in the room with `code` (a ban: 4403)."""
    return {"type": "room.kick", "user_id": user_id, "code": code}


def revoked_message(token_id: int) -> RevokedEnvelope:
    """Close the sockets this token opened."""
    return {"type": "user.revoked", "token_id": token_id}


async def send_to_room(room_id: int, message: Envelope) -> None:
    """Broadcast from async code (consumers)."""
    await get_channel_layer().group_send(room_group(room_id), message)


class ProcessLoop:
    """An event loop of the process on a daemon thread of its own, for sync code to run
    coroutines on (made again after a fork). The publisher's: `async_to_sync` would make a loop
    per call and a Redis connection per loop; this keeps one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; made (again) on first use, after a fork, or if its thread ended."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or not self.alive():
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop.run_forever, name=self.name, daemon=True)
                self._thread.start()
            return self._loop

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


_publisher = ProcessLoop("broadcast-loop")


def send_many_sync(items: list[tuple[int, Envelope]]) -> None:
    """Broadcast to several rooms at once, in order: (room id, message) pairs."""
    publish([(room_group(room_id), m) for room_id, m in items], wait=True)


def publish(items: list[tuple[str, Envelope]], *, wait: bool) -> None:
    """Hand (group, message) pairs to the process's publisher loop, which sends them in the
    order they were handed over (from every thread); `wait` blocks until they are sent."""
    if not items:
        return
    future = publish_started(items)
    if not wait:
        future.add_done_callback(_log_failure)
        return
    published_wait(future, len(items))


def publish_started(items: list[tuple[str, Envelope]]) -> concurrent.futures.Future[None]:
    """Start publishing (group, message) pairs; they go out after everything handed over before
    them, from any thread (the loop runs the publishes FIFO: one lock per shard, taken in order)."""
    return asyncio.run_coroutine_threadsafe(_publish(items), _publisher.loop())


def published_wait(future: concurrent.futures.Future[None], count: int) -> None:
    """Wait for a started publish; a failure is logged, not raised (clients resync)."""
    try:
        future.result(5.0)
    except Exception:  # the doorbell failed; the database still has everything
        log.warning("broadcast of %s messages failed; clients will resync", count, exc_info=True)


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("broadcast failed; clients will resync", exc_info=future.exception())


async def _publish(items: list[tuple[str, Envelope]]) -> None:
    if not await _publish_pipelined(items):
        layer = get_channel_layer()
        for group, message in items:
            await layer.group_send(group, message)


async def _publish_pipelined(items: list[tuple[str, Envelope]]) -> bool:
    """PUBLISH many messages in one round trip per Redis shard, in order, exactly as the
    pub/sub layer's `group_send` would (its channel names and serializer); False if the layer
    is not channels_redis' pub/sub layer as we know it (the caller then sends one by one)."""
    try:
        inner = get_channel_layer()._get_layer()  # the layer of this event loop
        by_shard: dict[int, tuple[Any, list[tuple[str, bytes]]]] = {}
        for group, message in items:
            channel = inner._get_group_channel_name(group)
            shard = inner._get_shard(channel)
            payload = inner.channel_layer.serialize(message)
            by_shard.setdefault(id(shard), (shard, []))[1].append((channel, payload))
    except AttributeError:
        return False
    for shard, messages in by_shard.values():
        async with shard._lock:
            shard._ensure_redis()
            pipe = shard._redis.pipeline(transaction=False)
            for channel, payload in messages:
                pipe.publish(channel, payload)
            await pipe.execute()
    return True


def send_to_group_on_commit(group: str, message: Envelope) -> None:
    transaction.on_commit(lambda: publish([(group, message)], wait=False))


def send_to_room_on_commit(room_id: int, messages: list[EventEnvelope]) -> None:
    """Broadcast after the current transaction commits (never before: rule 1), without making
    the caller (a request, a socket's database call) wait for Redis."""
    items: list[tuple[str, Envelope]] = [(room_group(room_id), m) for m in messages]
    transaction.on_commit(lambda: publish(items, wait=False))
