"""Graceful worker shutdown: on SIGTERM a worker hands its running turns to other workers.

Celery's warm shutdown waits for running tasks, and a turn can run for minutes. The worker's
main process marks itself draining in Redis; a runner in one of its pool processes sees the
mark at its next heartbeat, writes its last batch, and puts the turn back at the head of the
room's queue, so any other worker continues the same answer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
from celery.signals import worker_shutting_down

from rooms.presence import redis_sync

log = logging.getLogger(__name__)
_CHECK_EVERY = 0.5  # seconds
_last: tuple[float, bool] = (0.0, False)
_asking = threading.Lock()  # held by the one thread asking Redis


def _key(main_pid: int) -> str:
    return f"chat:drain:{os.uname().nodename}:{main_pid}"


@worker_shutting_down.connect
def _mark_draining(sig: str = "", how: str = "", exitcode: int = 0, **_: Any) -> None:
    try:
        redis_sync().set(_key(os.getpid()), how or "1", ex=3600)
    except redis.RedisError:
        log.warning("could not mark the worker as draining; running turns finish instead")


def drain_requested() -> bool:
    """Whether this runner's worker is shutting down (looked up at most every 0.5 s per process:
    one thread asks Redis, the others meanwhile use the last answer)."""
    global _last
    checked_at, draining = _last
    if time.monotonic() - checked_at < _CHECK_EVERY or not _asking.acquire(blocking=False):
        return draining
    try:
        # the worker's main process: our parent in a prefork pool, ourselves in a threads pool
        draining = bool(redis_sync().exists(_key(os.getppid()), _key(os.getpid())))
    except redis.RedisError:
        pass  # the last answer stands
    finally:
        _last = (time.monotonic(), draining)
        _asking.release()
    return draining
