"""EXPERIMENT ONLY (`python -m bench.perf --asgi bench.perf.asgi_parallel:application`): the
project's ASGI app with asgiref's process-wide single DB thread replaced by a pool.

Channels runs `database_sync_to_async` calls thread-sensitively and, outside Django's HTTP
handler, without a ThreadSensitiveContext, so every socket's database work in a Daphne process
queues for ONE thread (`SyncToAsync.single_thread_executor`). This module measures what the
figures would be if that work ran in parallel (each pool thread has its own DB connection), to
size the proposed change in docs/performance.md. It is not a fix: the fix belongs in the
consumer (call the services with `thread_sensitive=False`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import SyncToAsync

SyncToAsync.single_thread_executor = ThreadPoolExecutor(
    max_workers=int(os.environ.get("BENCH_DB_THREADS", "8")), thread_name_prefix="bench-db"
)

from chatproject.asgi import application  # noqa: E402

__all__ = ["application"]
