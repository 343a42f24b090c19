"""Who is connected to a room now: a Redis hash per room, shared by every ASGI process.

Joins and leaves of one room in one process are written in batches: while one batch is on its
way to Redis (one script call: write the batch, drop stale entries, read the hash) the next
collects, and each batch ends with one `presence` broadcast of the room's users. Ten sockets
joining a room at once cost one or two round trips and announcements, not ten of each (the
connect path, docs/performance.md); an idle room's single join is written at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import weakref
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from rooms import broadcast
from rooms.protocol import presence_frame

log = logging.getLogger(__name__)

_STALE_AFTER = 90.0  # seconds without a heartbeat: the socket's process died
_TTL = int(_STALE_AFTER * 4)  # the whole hash expires when nobody touched it for this long

# KEYS[1] the room's hash; ARGV: now, stale_after, ttl, n_touched, then n_touched pairs of
# (channel, entry), then the channels that left. Returns the hash after the change, flat.
_CHANGE = """
local now, stale, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
for i = 0, n - 1 do redis.call('HSET', KEYS[1], ARGV[5 + 2 * i], ARGV[6 + 2 * i]) end
for i = 5 + 2 * n, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  if now - cjson.decode(all[i + 1])['t'] > stale then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = all[i]; out[#out + 1] = all[i + 1]
  end
end
if #out > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return out
"""


class _Batch:
    """Presence changes of one room waiting for one script call, and who waits for them."""

    __slots__ = ("touched", "left", "done")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.touched: dict[str, str] = {}
        self.left: list[str] = []
        self.done: asyncio.Future[list[dict[str, Any]]] = loop.create_future()


class _Presence:
    """One event loop's Redis client, script, and the batches of its rooms."""

    def __init__(self) -> None:
        self.redis = aioredis.from_url(settings.REDIS_URL)
        self.change = self.redis.register_script(_CHANGE)
        self.waiting: dict[int, _Batch] = {}  # room -> the batch that collects
        self.flushing: set[int] = set()  # rooms with a batch on its way


# One per event loop (a Redis client is bound to the loop it was made on).
_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Presence] = weakref.WeakKeyDictionary()


def _state() -> _Presence:
    loop = asyncio.get_running_loop()
    state = _per_loop.get(loop)
    if state is None:
        state = _per_loop[loop] = _Presence()
    return state


def _redis() -> aioredis.Redis:
    """This event loop's Redis client (rooms.ratelimit shares it)."""
    return _state().redis


_sync_client: tuple[int, redis.Redis] | None = None


def redis_sync() -> redis.Redis:
    """This process's synchronous Redis client, for code on worker threads (the quotas, the
    turn queue's kicks); made again after a fork."""
    global _sync_client
    if _sync_client is None or _sync_client[0] != os.getpid():
        _sync_client = (os.getpid(), redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1))
    return _sync_client[1]


def redis_key(*parts: object) -> str:
    """A Redis key in this deployment's namespace (the channel prefix), so two deployments or
    test runs sharing one Redis (and each having a room 1) never see each other's keys."""
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "chat")
    return ":".join([prefix, *map(str, parts)])


def _key(room_id: int) -> str:
    return redis_key("presence", int(room_id))


def _entry(user: dict[str, Any]) -> str:
    return json.dumps({"id": user["id"], "name": user["name"], "t": time.time()})


def _users(flat: list[bytes]) -> list[dict[str, Any]]:
    """Distinct users of a flat HGETALL reply, by name."""
    users: dict[int, dict[str, Any]] = {}
    for value in flat[1::2]:
        entry = json.loads(value)
        users.setdefault(entry["id"], {"id": entry["id"], "name": entry["name"]})
    return sorted(users.values(), key=lambda u: u["name"].lower())


async def _flush(state: _Presence, room_id: int) -> None:
    """Write the room's batches one after the other, announcing the users after each."""
    try:
        while (batch := state.waiting.pop(room_id, None)) is not None:
            args: list[Any] = [time.time(), _STALE_AFTER, _TTL, len(batch.touched)]
            for pair in batch.touched.items():
                args.extend(pair)
            args.extend(batch.left)
            try:
                users = _users(await state.change(keys=[_key(room_id)], args=args))
                await broadcast.send_to_room(room_id, broadcast.ephemeral_message(presence_frame(users)))
            except Exception as exc:  # Redis is away: every waiter of the batch hears it
                batch.done.set_exception(exc)
            else:
                batch.done.set_result(users)
    finally:
        state.flushing.discard(room_id)


async def _change(room_id: int, *, touch: tuple[str, str] | None = None, leave: str = "") -> None:
    state = _state()
    batch = state.waiting.get(room_id)
    if batch is None:
        batch = state.waiting[room_id] = _Batch(asyncio.get_running_loop())
    if touch is not None:
        batch.touched[touch[0]] = touch[1]
    if leave:
        batch.touched.pop(leave, None)
        batch.left.append(leave)
    if room_id not in state.flushing:
        state.flushing.add(room_id)
        asyncio.get_running_loop().create_task(_flush(state, room_id))
    await asyncio.shield(batch.done)  # one waiter giving up does not cancel the others'


async def presence_join(room_id: int, channel_name: str, user: dict[str, Any]) -> None:
    """Mark a socket present and announce the room's users (batched per room)."""
    try:
        await _change(room_id, touch=(channel_name, _entry(user)))
    except (RedisError, OSError):
        # Presence is best effort: a Redis outage never closes a socket; its next heartbeat
        # after Redis is back marks it present again.
        log.warning("presence of room %s not updated (Redis unavailable)", room_id)


async def presence_leave(room_id: int, channel_name: str) -> None:
    """Forget a socket and announce the room's users (batched per room)."""
    await _change(room_id, leave=channel_name)


async def presence_touch(room_id: int, channel_name: str, user: dict[str, Any]) -> None:
    """Keep a socket present (every heartbeat): one round trip, no announcement."""
    key = _key(room_id)
    pipe = _redis().pipeline(transaction=False)
    try:
        pipe.hset(key, channel_name, _entry(user))
        pipe.expire(key, _TTL)
        await pipe.execute()
    except (RedisError, OSError):
        log.warning("presence of room %s not refreshed (Redis unavailable)", room_id)
