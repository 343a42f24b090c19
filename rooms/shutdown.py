"""Graceful ASGI shutdown: on SIGTERM, close every socket with 4012 ("server restarting") so
clients reconnect at once (to another process or the restarted one), then let the server stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import weakref
from typing import Any

log = logging.getLogger(__name__)

# Autobahn (under Daphne) only sends 1000 or 3000-4999, so not the standard 1012.
CLOSE_RESTART = 4012
_sockets: weakref.WeakSet[Any] = weakref.WeakSet()
_installed = False


def track(consumer: Any) -> None:
    """Remember a live consumer; install the SIGTERM handler on first use (after the server's)."""
    global _installed
    _sockets.add(consumer)
    if _installed:
        return
    _installed = True
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(_close_all_then(previous, signum, frame)))

    signal.signal(signal.SIGTERM, on_term)


def forget(consumer: Any) -> None:
    _sockets.discard(consumer)


async def _close_all_then(previous: Any, signum: int, frame: Any) -> None:
    consumers = list(_sockets)
    log.warning("SIGTERM: closing %d sockets with %d", len(consumers), CLOSE_RESTART)
    await asyncio.gather(*(c.close(code=CLOSE_RESTART) for c in consumers), return_exceptions=True)
    await asyncio.sleep(0.2)  # let the close frames leave
    if callable(previous):
        previous(signum, frame)
    else:
        raise SystemExit(0)
