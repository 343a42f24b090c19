"""Floor 2: the smallest Channels app that does the project's job. A stock
`AsyncWebsocketConsumer` joins one group and forwards every group message to its socket
(stock `dispatch`, so Channels' thread-pool hop per event is included, as in any Channels app
that does not override it). Served by Daphne with `bench.perf.mini_settings`.

    DJANGO_SETTINGS_MODULE=bench.perf.mini_settings python -m daphne bench.perf.mini_asgi:application
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.perf.mini_settings")

import django

django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

GROUP = "bench"


class RelayConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def bench_frame(self, message: dict) -> None:
        await self.send(text_data=message["text"])


application = ProtocolTypeRouter({"websocket": URLRouter([re_path(r"^sub/?$", RelayConsumer.as_asgi())])})
