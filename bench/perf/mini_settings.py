"""Settings of floor 2 (the minimal Channels app): nothing but Channels and its Redis pub/sub
layer, on the same Redis as the project. REDIS_URL and CHANNEL_PREFIX come from the bench."""

from __future__ import annotations

import os

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["daphne", "channels"]
ASGI_APPLICATION = "bench.perf.mini_asgi.application"
DATABASES: dict = {}
USE_TZ = True
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [os.environ["REDIS_URL"]], "prefix": os.environ["CHANNEL_PREFIX"]},
    }
}
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
