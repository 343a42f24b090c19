"""Rate limits: frames per socket (in memory), messages per user (Redis, all processes)."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from redis.exceptions import RedisError

from rooms.presence import redis_key, redis_sync

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


def sync_bucket() -> TokenBucket:
    per_minute = settings.RATE_SYNCS_PER_MINUTE
    return TokenBucket(per_minute / 60.0, max(1.0, per_minute / 4))


class RateLimited(Exception):
    """A limit is spent; `retry_after` seconds until it is not."""

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def message_quota_spend(*, user_id: int) -> None:
    """Count one message against the user's per-minute quota, over every path that posts
    (socket, form, API); raises RateLimited once it is spent."""
    limit = settings.RATE_MESSAGES_PER_MINUTE
    if limit <= 0:
        return
    now = time.time()
    window = int(now // 60)
    key = redis_key("rate", "msg", int(user_id), window)
    try:
        pipe = redis_sync().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = pipe.execute()
    except RedisError:
        # Redis is away (a restart): the limit fails open rather than failing the user's post,
        # which only needs Postgres.
        log.warning("message quota unavailable (Redis); allowing the message")
        return
    if count > limit:
        raise RateLimited("too many messages this minute", retry_after=(window + 1) * 60 - now)
