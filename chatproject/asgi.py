"""ASGI entry point: HTTP pages (static files included, by middleware) plus the room WebSocket."""

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
    try:
        import autobahn.websocket.protocol as _ws_protocol
    except ImportError:
        pass
    else:
        _hltype = autobahn.util.hltype

        class _LazyType:
            """`hltype(obj)`, formatted only if a log message is ever rendered."""

            __slots__ = ("obj",)

            def __init__(self, obj: object) -> None:
                self.obj = obj

            def __format__(self, spec: str) -> str:
                return format(_hltype(self.obj), spec)

            def __str__(self) -> str:
                return str(_hltype(self.obj))

            __repr__ = __str__

        # Even plain, those arguments cost ~3 us per frame sent (`sendData` logs every write):
        # a lazy type name and the raw value (plain `hlval(v)` is just `f"{v}"`) format to the
        # same text if debug logging is on, and cost nothing when it is off.
        _ws_protocol.hltype = _LazyType
        _ws_protocol.hlval = lambda val, color="white", bold=True: val

from django.core.asgi import get_asgi_application

django_http = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from rooms.auth import RoomAuthMiddleware  # noqa: E402
from rooms.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_http,  # static files: the ServeStatic middleware
        "websocket": RoomAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
