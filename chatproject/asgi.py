"""ASGI entry point: HTTP pages (and static files) plus the room WebSocket."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

try:
    import autobahn.util
except ImportError:  # autobahn comes with Daphne; without it there is nothing to correct
    pass
else:
    # Daphne's WebSocket library builds the arguments of a `log.debug` call for every frame it
    # writes, debug logging on or not, and its highlighting helper (`hl`, behind `hltype` and
    # `hlval`) calls `click.style` whenever click is importable, which Celery makes it. The flag
    # is read only by `hl`, to choose ANSI-coloured or plain text for autobahn's log messages:
    # off, the messages are plain and a delivery costs about 30 % less CPU (docs/performance.md).
    autobahn.util._HAS_CLICK = False

from django.core.asgi import get_asgi_application  # noqa: E402

django_http = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from rooms.auth import RoomAuthMiddleware  # noqa: E402
from rooms.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_http),
        "websocket": RoomAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
