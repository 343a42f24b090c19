"""Kicks: the doorbell that asks a worker to look at a room's queue, rung at most once.

A kick is idempotent (a worker that finds the room leased or empty does nothing), so duplicates
are safe but not free: every message and every finished turn rings, and a backlog of kicks
for rooms that are already running delays the ones that matter. A Redis key per room marks a
kick as waiting; the task clears it when it starts, before it looks at the queue, so a ring
after that point sends a new kick and no wake-up is lost. The mark expires, so a kick lost with
its broker message is re-sent by the sweeper at the latest `PENDING_TTL` seconds later.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import redis
from django.db import transaction

from rooms.presence import redis_key, redis_sync

log = logging.getLogger(__name__)
PENDING_TTL = 30  # seconds


def _pending_key(room_id: int) -> str:
    return redis_key("kick", int(room_id))


def kick_room_send(room_id: int) -> bool:
    """Send a kick for the room unless one is already waiting; True if one was sent."""
    from agents.tasks import kick_room

    key = _pending_key(room_id)
    try:
        fresh = bool(redis_sync().set(key, 1, nx=True, ex=PENDING_TTL))
    except redis.RedisError:
        fresh = True  # cannot tell: a duplicate is safe, a lost kick is not
    if not fresh:
        return False
    try:
        kick_room.delay(room_id)
    except Exception:
        log.warning("could not send a kick for room %s; the sweeper will", room_id, exc_info=True)
        kick_taken(room_id)
        return False
    return True


def kick_room_on_commit(room_id: int) -> None:
    """Kick the room once the transaction commits, from a background thread: the caller (a
    socket's database call, a request) does not wait for Redis, and a failed send never fails
    it (a kick lost with a dying process is re-sent by the sweeper)."""
    transaction.on_commit(partial(_sender().submit, kick_room_send, room_id), robust=True)


_executor: tuple[int, ThreadPoolExecutor] | None = None


def _sender() -> ThreadPoolExecutor:
    """One thread per process sends the kicks, in order (made again after a fork)."""
    global _executor
    if _executor is None or _executor[0] != os.getpid():
        _executor = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="kicks"))
    return _executor[1]


def kick_taken(room_id: int) -> None:
    """The kick is being handled: the next ring must send a new one."""
    try:
        redis_sync().delete(_pending_key(room_id))
    except redis.RedisError:
        pass  # the mark expires on its own
