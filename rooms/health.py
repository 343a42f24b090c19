"""Health endpoints for a process manager or a load balancer (docs/deploy.md).

`/healthz`: the process answers HTTP (touches nothing else, so a database outage does not get
every web process restarted). `/readyz`: it can serve rooms: Postgres and Redis answer.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

log = logging.getLogger(__name__)
CHECK_TIMEOUT = 2.0  # seconds each dependency may take to answer


@never_cache
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the event loop runs."""
    return JsonResponse({"status": "ok"})


def _postgres_ok() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()  # back to the pool: a probe every few seconds must not hold one


async def _redis_ok() -> None:
    client = aioredis.from_url(settings.REDIS_URL, socket_timeout=CHECK_TIMEOUT)
    try:
        await client.ping()
    finally:
        await client.aclose()


@never_cache
@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: Postgres and Redis answer within CHECK_TIMEOUT; 503 names what does not."""
    checks = {"postgres": sync_to_async(_postgres_ok, thread_sensitive=False)(), "redis": _redis_ok()}
    failed = []
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, CHECK_TIMEOUT)
        except Exception as exc:  # any failure means "not ready"; the reason goes to the log
            log.warning("readyz: %s is not ready: %r", name, exc)
            failed.append(name)
    if failed:
        return JsonResponse({"status": "unavailable", "failing": failed}, status=503)
    return JsonResponse({"status": "ok"})
