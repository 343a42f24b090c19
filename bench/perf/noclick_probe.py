"""EXPERIMENT ONLY (`python -m bench.perf --asgi bench.perf.noclick_probe:application`): the
project with autobahn's per-frame debug-log formatting made cheap, to size the fix.

autobahn's `WebSocketProtocol.sendData` builds the arguments of a `log.debug` call for every
frame it writes, even with debug logging off, and its highlighting helpers (`hltype`, `hlval`)
call `click.style` whenever click is importable (Celery installs it): a third of Daphne's busy
event-loop samples in the fan-out figure. Turning the highlighting off measured 14 -> 10 us per
delivery (docs/performance.md). A measuring device, not a fix: the project's ASGI module is
where a fix would go.
"""

from __future__ import annotations

import autobahn.util

autobahn.util._HAS_CLICK = False

from chatproject.asgi import application  # noqa: E402

__all__ = ["application"]
