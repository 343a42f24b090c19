"""EXPERIMENT ONLY (`python -m bench.perf --asgi bench.perf.hub_probe:application`): a probe of
the per-process room hub proposed in docs/performance.md, to size it before anyone builds it.

The project's `RoomConsumer`, unchanged, except that joining a room's group does not go through
the channel layer (one asyncio.Queue, one receive task and one msgpack decode per socket per
frame, `await_many_dispatch` re-arming its tasks per message). Instead one hub per process
subscribes once per room to the same Redis channel the layer publishes to, decodes each message
once, and calls the sockets' handlers (`room_event`, `room_delta`, ...) directly, in order.
Publishers are untouched (they still `group_send` on the pub/sub layer), and so are every
other group (user groups) and the database path. Not production code: no reconnect handling.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.layers import get_channel_layer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application
from django.urls import re_path
from redis import asyncio as aioredis

from chatproject.asgi import application as _project  # noqa: F401 - sets Django up
from rooms.auth import RoomAuthMiddleware
from rooms.consumers import RoomConsumer

log = logging.getLogger(__name__)


class Hub:
    def __init__(self) -> None:
        self.members: dict[str, list[Any]] = {}  # redis channel -> consumers, join order
        self.redis: aioredis.Redis | None = None
        self.pubsub: Any = None
        self.task: asyncio.Task[None] | None = None
        self.prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "asgi")

    def channel(self, group: str) -> str:
        return f"{self.prefix}__group__{group}"  # what RedisPubSubChannelLayer publishes to

    async def join(self, group: str, consumer: Any) -> None:
        name = self.channel(group)
        if self.pubsub is None:
            self.redis = aioredis.from_url(settings.REDIS_URL)
            self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        members = self.members.setdefault(name, [])
        if consumer not in members:
            members.append(consumer)
        if len(members) == 1:
            await self.pubsub.subscribe(name)
        if self.task is None:
            self.task = asyncio.create_task(self._read())

    async def leave(self, group: str, consumer: Any) -> None:
        name = self.channel(group)
        members = self.members.get(name)
        if members and consumer in members:
            members.remove(consumer)
            if not members:
                del self.members[name]
                await self.pubsub.unsubscribe(name)

    async def _read(self) -> None:
        layer = get_channel_layer()
        while True:
            try:
                msg = await self.pubsub.get_message(timeout=1.0)
            except Exception:  # a probe: log and go on
                log.exception("hub read failed")
                await asyncio.sleep(0.5)
                continue
            if msg is None or msg.get("type") != "message":
                continue
            name = msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
            members = self.members.get(name)
            if not members:
                continue
            message = layer.deserialize(msg["data"])  # once per process, not once per socket
            handler_name = message["type"].replace(".", "_")
            for consumer in list(members):
                try:
                    await getattr(consumer, handler_name)(message)
                except Exception:
                    log.exception("hub delivery failed")


HUB = Hub()


class _Layer:
    """The consumer's channel layer, with `room.*` group membership routed to the hub."""

    def __init__(self, layer: Any, consumer: Any) -> None:
        self._layer = layer
        self._consumer = consumer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._layer, name)

    async def group_add(self, group: str, channel: str) -> None:
        if group.startswith("room."):
            await HUB.join(group, self._consumer)
        else:
            await self._layer.group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        if group.startswith("room."):
            await HUB.leave(group, self._consumer)
        else:
            await self._layer.group_discard(group, channel)


class HubRoomConsumer(RoomConsumer):
    @property
    def channel_layer(self) -> Any:  # type: ignore[override]
        return self.__dict__.get("_hub_layer")

    @channel_layer.setter
    def channel_layer(self, layer: Any) -> None:
        self.__dict__["_hub_layer"] = None if layer is None else _Layer(layer, self)


application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(get_asgi_application()),
        "websocket": RoomAuthMiddleware(
            URLRouter([re_path(r"^ws/rooms/(?P<slug>[-a-zA-Z0-9_]{1,64})/$", HubRoomConsumer.as_asgi())])
        ),
    }
)
