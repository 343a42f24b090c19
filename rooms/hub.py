"""The per-process hub: one Redis subscription per group per process, fanned out in-process.

Publishers do not know about it. They `group_send` on the pub/sub channel layer
(rooms/broadcast.py), which PUBLISHes each message, serialized by the layer (msgpack), to the
Redis channel `{prefix}__group__{group}`. The hub SUBSCRIBEs to that channel once per process
while a local socket is in the group, decodes each message once and hands it to every local
member by calling `member.hub_message(message)` in join order: no per-socket channel, queue,
task or decode (Channels' per-consumer path cost 60-95 us per delivery; docs/performance.md).

One reader task per Redis host reads replies back to back; while Redis has sent more than one,
they are parsed from the buffer without yielding to the event loop, so the writes to each socket
in that batch leave in one go. Members must not wait in `hub_message` (no database work there):
one slow member would hold up the others.

Redis pub/sub is at-most-once, and the database is the truth (ARCHITECTURE.md, rule 1). After
the connection drops (Redis restarted, network, a missed heartbeat) the hub reconnects,
resubscribes every group and, once Redis confirms a group's subscription, calls
`member.hub_resync()` on each of its members: what was published meanwhile is lost, and each
socket catches up from the database from its last seq.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import weakref
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from channels.layers import get_channel_layer
from channels_redis.utils import _consistent_hash, create_pool, decode_hosts
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 5.0  # seconds for Redis to confirm a subscription before a join gives up
PING_EVERY = 10.0  # seconds between heartbeats on the subscriber connection
PING_TIMEOUT = 5.0  # seconds without any reply after a heartbeat: the connection is dead
_RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # reconnect back-off, the last one repeats
_PUBSUB_LAYER = "channels_redis.pubsub.RedisPubSubChannelLayer"


class Member(Protocol):
    """What the hub needs of a socket."""

    async def hub_message(self, message: dict[str, Any]) -> None:
        """One group message, decoded; must not wait on anything but the socket write."""

    def hub_resync(self) -> None:
        """Messages of a group may have been lost: catch up from the database."""


class HubUnavailable(Exception):
    """Redis did not confirm the subscription: the socket cannot be live now."""


class _Group:
    """The local members of one group, and whether its subscription is confirmed."""

    __slots__ = ("members", "subscribed", "resync")

    def __init__(self, subscribed: asyncio.Future[None]) -> None:
        self.members: dict[Member, None] = {}  # an ordered set: delivery in join order
        self.subscribed = subscribed  # done once Redis confirmed it on the current connection
        self.resync = False  # members catch up once the resubscription is confirmed


class _Subscriber:
    """One Redis connection in subscribe mode, for the groups that hash to one host."""

    def __init__(self, host: dict[str, Any], client_name: str, deserialize: Any) -> None:
        self._pool = create_pool({"client_name": client_name, **host})
        self._deserialize = deserialize
        self._groups: dict[str, _Group] = {}
        self._conn: Any = None  # the connection in use; None while (re)connecting
        # Futures of the SUBSCRIBEs sent on the current connection, per channel, in the order
        # they were sent: Redis confirms in that order, so the n-th reply answers the n-th.
        self._sent: dict[str, deque[asyncio.Future[None]]] = {}
        self._write_lock = asyncio.Lock()  # commands go out in the order they were decided
        self._task: asyncio.Task[None] | None = None
        self._down = False  # the last connection attempt failed: joins fail at once
        self._replies = 0  # replies read so far (the heartbeat watches it)
        self._background: set[asyncio.Task[None]] = set()

    def size(self, channel: str) -> int:
        group = self._groups.get(channel)
        return len(group.members) if group else 0

    def add(self, channel: str, member: Member) -> asyncio.Future[None] | None:
        """Add `member` to the group (subscribing to it if new); returns the future to await
        if Redis has not confirmed the subscription yet, None if it has (no wait at all)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="rooms.hub")
        if self._down:
            raise HubUnavailable("Redis is unreachable")
        group = self._groups.get(channel)
        if group is None:
            group = self._groups[channel] = _Group(asyncio.get_running_loop().create_future())
            # A task, so that commands leave in the order they were decided (see _write).
            self._soon(self._write("SUBSCRIBE", channel, confirm=group.subscribed))
        group.members[member] = None
        return None if group.subscribed.done() else group.subscribed

    def leave(self, channel: str, member: Member) -> None:
        group = self._groups.get(channel)
        if group is None or member not in group.members:
            return
        del group.members[member]
        if not group.members:
            # Decided in a task of its own: a join may refill the group before it runs.
            self._soon(self._unsubscribe_if_empty(channel))

    def _soon(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._background.discard)

    async def _unsubscribe_if_empty(self, channel: str) -> None:
        group = self._groups.get(channel)
        if group is None or group.members:
            return
        del self._groups[channel]
        await self._write("UNSUBSCRIBE", channel)

    async def _write(self, *command: str, confirm: asyncio.Future[None] | None = None) -> None:
        """Send a command on the current connection; if there is none, the next one resends
        every subscription, so nothing is lost by skipping it. Callers are tasks made at the
        moment of the decision; each takes the lock in its first step (FIFO when contended), so
        a SUBSCRIBE and an UNSUBSCRIBE of one channel reach Redis in the order decided."""
        async with self._write_lock:
            conn = self._conn
            if conn is None:
                return
            if confirm is not None:
                self._sent.setdefault(command[1], deque()).append(confirm)
            try:
                await conn.send_command(*command, check_health=False)
            except (RedisError, OSError):  # the reader notices too, and reconnects
                log.debug("hub: %s failed", command[0], exc_info=True)

    async def _run(self) -> None:
        """Connect, subscribe every group, read until the connection fails; forever."""
        failures = 0
        while True:
            conn = self._pool.make_connection()
            try:
                await conn.connect()
                await self._resubscribe(conn)
            except Exception as exc:  # whatever it is, the hub must not stop retrying
                self._down = failures > 0  # one quick retry before joins start failing
                delay = _RETRY_DELAYS[min(failures, len(_RETRY_DELAYS) - 1)]
                failures += 1
                log.warning("hub: cannot reach Redis (%r); retrying in %ss", exc, delay)
                await self._drop(conn)
                await asyncio.sleep(delay)
                continue
            self._down = False
            failures = 0
            heartbeat = asyncio.create_task(self._heartbeat(conn))
            try:
                await self._read(conn)
            except (RedisError, OSError) as exc:
                log.warning("hub: lost Redis (%s); resubscribing, sockets will catch up", exc)
            except Exception:  # a bug must not end the hub: start over, everyone catches up
                log.exception("hub: reader failed; resubscribing, sockets will catch up")
            finally:
                heartbeat.cancel()
                await self._drop(conn)

    async def _resubscribe(self, conn: Any) -> None:
        async with self._write_lock:
            self._conn = conn
            self._sent.clear()
            channels = list(self._groups)
            for channel in channels:
                self._sent[channel] = deque([self._groups[channel].subscribed])
            if channels:
                await conn.send_command("SUBSCRIBE", *channels, check_health=False)

    async def _drop(self, conn: Any) -> None:
        """Forget a dead connection: every confirmed group must be confirmed again, then its
        members resync (messages published in between are gone)."""
        if self._conn is conn:
            self._conn = None
            self._sent.clear()
            loop = asyncio.get_running_loop()
            for group in self._groups.values():
                if group.subscribed.done():
                    group.subscribed = loop.create_future()
                    group.resync = True
        await conn.disconnect(nowait=True)

    async def _read(self, conn: Any) -> None:
        while True:
            # math.inf: block without the socket timeout (the heartbeat watches the connection);
            # push_request: under RESP3 (redis-py 8's default) messages are pushes.
            reply = await conn.read_response(timeout=math.inf, push_request=True)
            self._replies += 1
            if not isinstance(reply, list):
                continue  # PONG while nothing is subscribed
            kind = reply[0]
            if kind == b"message":
                group = self._groups.get(reply[1].decode())
                if group is not None:
                    await self._deliver(group, reply[2])
            elif kind == b"subscribe":
                self._confirmed(reply[1].decode())

    async def _deliver(self, group: _Group, data: bytes) -> None:
        try:
            message = self._deserialize(data)  # once per process, not once per socket
        except Exception:
            log.exception("hub: undecodable message skipped")
            return
        for member in list(group.members):  # a member may leave while we deliver
            try:
                await member.hub_message(message)
            except Exception:
                log.exception("hub: delivery of %s to a socket failed", message.get("type"))

    def _confirmed(self, channel: str) -> None:
        sent = self._sent.get(channel)
        if not sent:
            return
        confirm = sent.popleft()
        if not sent:
            del self._sent[channel]
        if confirm.done():
            return
        confirm.set_result(None)
        group = self._groups.get(channel)
        if group is not None and group.subscribed is confirm and group.resync:
            group.resync = False
            for member in list(group.members):
                member.hub_resync()

    async def _heartbeat(self, conn: Any) -> None:
        """PING now and then; a connection that answers nothing is dropped (the reader fails)."""
        while True:
            await asyncio.sleep(PING_EVERY)
            seen = self._replies
            await self._write("PING")
            await asyncio.sleep(PING_TIMEOUT)
            if self._replies == seen:
                log.warning("hub: no reply from Redis in %ss; reconnecting", PING_TIMEOUT)
                await conn.disconnect(nowait=True)
                return


class Hub:
    """The groups of this process's sockets, over one subscriber connection per Redis host."""

    def __init__(self) -> None:
        backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
        if backend != _PUBSUB_LAYER:
            raise ImproperlyConfigured(f"rooms.hub listens to {_PUBSUB_LAYER}, not {backend}")
        config: dict[str, Any] = settings.CHANNEL_LAYERS["default"].get("CONFIG", {})
        self.prefix = config.get("prefix", "asgi")
        name = f"{self.prefix}:hub:{socket.gethostname()}:{os.getpid()}"
        deserialize = get_channel_layer().deserialize
        self._subscribers = [
            _Subscriber(host, name, deserialize) for host in decode_hosts(config.get("hosts"))
        ]

    def channel(self, group: str) -> str:
        """The Redis channel the pub/sub layer publishes a group to (its
        `_get_group_channel_name`; tests/integration/test_hub.py keeps the two equal)."""
        return f"{self.prefix}__group__{group}"

    def _subscriber(self, channel: str) -> _Subscriber:
        return self._subscribers[_consistent_hash(channel, len(self._subscribers))]

    async def join(self, member: Member, *groups: str) -> None:
        """Deliver the groups' messages to `member`; returns once Redis confirmed every
        subscription, so what the member reads from the database next is covered. Joining
        groups that are already subscribed completes without waiting."""
        try:
            waits = [
                wait
                for channel in map(self.channel, groups)
                if (wait := self._subscriber(channel).add(channel, member)) is not None
            ]
            if waits:
                await asyncio.wait_for(asyncio.gather(*map(asyncio.shield, waits)), JOIN_TIMEOUT)
        except TimeoutError:
            self.leave(member, *groups)
            raise HubUnavailable(f"Redis did not confirm {groups} in {JOIN_TIMEOUT}s") from None
        except BaseException:
            self.leave(member, *groups)
            raise

    def leave(self, member: Member, *groups: str) -> None:
        """Stop delivering to `member` (idempotent); unsubscribes a group left empty."""
        for channel in map(self.channel, groups):
            self._subscriber(channel).leave(channel, member)

    def size(self, group: str) -> int:
        """How many local members a group has (for tests and introspection)."""
        channel = self.channel(group)
        return self._subscriber(channel).size(channel)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """The hub of the running event loop (a Redis connection is bound to its loop)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
    return hub
