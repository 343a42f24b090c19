"""The heartbeat of access: every ACCESS_RECHECK_SECONDS one statement re-reads the standing of
every live socket of this process (rooms.standing) and closes those that lost their right.

A socket that sends nothing (no frames, no pings) would otherwise keep reading a room after a
ban whose broadcast was lost; with this it is closed within one interval whatever it does.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from django.conf import settings

from rooms.sockets import sockets_standing_on_db

log = logging.getLogger(__name__)
_watched: weakref.WeakSet[Any] = weakref.WeakSet()  # consumers with a `socket_id`
_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def watch(consumer: Any) -> None:
    """Watch a live socket's standing (starts this process's watcher on first use)."""
    _watched.add(consumer)
    loop = asyncio.get_running_loop()
    if loop not in _tasks and settings.ACCESS_RECHECK_SECONDS > 0:
        _tasks[loop] = loop.create_task(_watch_forever())


def unwatch(consumer: Any) -> None:
    _watched.discard(consumer)


async def sockets_recheck() -> int:
    """Re-read the standing of every watched socket; close those that lost it. How many."""
    consumers = [c for c in list(_watched) if getattr(c, "socket_id", None) is not None]
    if not consumers:
        return 0
    verdicts = await sockets_standing_on_db(sockets=[c.socket_id for c in consumers])
    closed = 0
    for consumer, (code, _latest) in zip(consumers, verdicts, strict=True):
        if code:
            _watched.discard(consumer)
            await consumer.close(code=code)
            closed += 1
    return closed


async def _watch_forever() -> None:
    while True:
        await asyncio.sleep(settings.ACCESS_RECHECK_SECONDS)
        try:
            closed = await sockets_recheck()
            if closed:
                log.info("closed %s sockets that lost their access", closed)
        except Exception:  # the database is away: the next round tries again
            log.warning("access recheck failed", exc_info=True)
