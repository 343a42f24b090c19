"""Rate limits: frames per socket (in memory), messages per user (Redis, all processes)."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from redis.exceptions import RedisError

from rooms.presence import _redis, redis_key

log = logging.getLogger(__name__)


class TokenBucket:
    """Allows `rate` events per second with bursts of `burst`; `take()` says how long to wait."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> float | None:
        """Spend one token; None if allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate


def frame_bucket() -> TokenBucket:
    rate = settings.RATE_FRAMES_PER_SECOND
    return TokenBucket(rate, max(1.0, 2 * rate))


async def message_quota_take(user_id: int) -> float | None:
    """Count one message against the user's per-minute quota; seconds to wait if it is spent."""
    limit = settings.RATE_MESSAGES_PER_MINUTE
    if limit <= 0:
        return None
    now = time.time()
    window = int(now // 60)
    key = redis_key("rate", "msg", int(user_id), window)
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = await pipe.execute()
    except RedisError:
        # Redis is away (a restart): the limit fails open rather than failing the user's send,
        # which only needs Postgres; the socket stays open.
        log.warning("message quota unavailable (Redis); allowing the message")
        return None
    if count > limit:
        return (window + 1) * 60 - now
    return None
