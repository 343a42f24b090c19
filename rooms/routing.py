from __future__ import annotations

from django.urls import re_path

from rooms.consumers import NoRouteConsumer, RoomConsumer

websocket_urlpatterns = [
    re_path(r"^ws/rooms/(?P<slug>[-a-zA-Z0-9_]{1,64})/$", RoomConsumer.as_asgi()),
    re_path(r"", NoRouteConsumer.as_asgi()),  # any other path: a clean 4404, not a 500
]
