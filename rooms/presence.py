"""Who is connected to a room now: a Redis hash per room, shared by every ASGI process."""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings

_STALE_AFTER = 90.0  # seconds without a heartbeat: the socket's process died
# One client per event loop (a client is bound to the loop it was made on).
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def _redis() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = aioredis.from_url(settings.REDIS_URL)
    return client


def redis_key(*parts: object) -> str:
    """A Redis key in this deployment's namespace (the channel prefix), so two deployments or
    test runs sharing one Redis (and each having a room 1) never see each other's keys."""
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "chat")
    return ":".join([prefix, *map(str, parts)])


def _key(room_id: int) -> str:
    return redis_key("presence", int(room_id))


async def presence_list(room_id: int) -> list[dict[str, Any]]:
    """Distinct users connected to the room, oldest connection first."""
    raw = await _redis().hgetall(_key(room_id))
    now = time.time()
    users: dict[int, dict[str, Any]] = {}
    stale = []
    for channel, value in raw.items():
        entry = json.loads(value)
        if now - entry["t"] > _STALE_AFTER:
            stale.append(channel)
            continue
        users.setdefault(entry["id"], {"id": entry["id"], "name": entry["name"]})
    if stale:
        await _redis().hdel(_key(room_id), *stale)
    return sorted(users.values(), key=lambda u: u["name"].lower())


async def presence_touch(room_id: int, channel_name: str, user: dict[str, Any]) -> None:
    """Mark a socket present (on connect and on every heartbeat)."""
    entry = json.dumps({"id": user["id"], "name": user["name"], "t": time.time()})
    key = _key(room_id)
    await _redis().hset(key, channel_name, entry)
    await _redis().expire(key, int(_STALE_AFTER * 4))


async def presence_leave(room_id: int, channel_name: str) -> None:
    await _redis().hdel(_key(room_id), channel_name)
