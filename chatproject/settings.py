"""One settings module, read from the environment (see README "Configuration")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# the variables of a .env file, under those already in the environment (ENV_FILE: another file)
_env_file = Path(env.str("ENV_FILE", default=str(BASE_DIR / ".env")))
if _env_file.is_file():
    env.read_env(str(_env_file))

# Off unless asked for. `make` writes a .env for local development (DEBUG=true and a random
# SECRET_KEY, used by make run and make test); a deployment sets its own environment.
DEBUG = env.bool("DEBUG", default=False)

# /metrics (agents/observe.py): every process of the stack writes its samples under one
# directory and the view adds them up (prometheus_client's multiprocess mode). Set before
# anything imports prometheus_client; `stack run` and the test stack empty it when they start.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(BASE_DIR / ".devdata" / "metrics"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")  # if set, /metrics wants it as a bearer token
# OpenTelemetry spans per turn, step and tool call: off unless an OTLP endpoint is configured
# (the standard OTEL_EXPORTER_OTLP_* variables) or OTEL_TRACES_CONSOLE is set.
OTEL_ENABLED = bool(env.str("OTEL_EXPORTER_OTLP_ENDPOINT", default="")) or env.bool(
    "OTEL_TRACES_CONSOLE", default=False
)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (docs/deploy.md)")
    SECRET_KEY = "dev-only-insecure-key-set-SECRET_KEY-in-production"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# The exact origins (scheme://host[:port]) a browser's room socket may come from. Unset: the
# CSRF_TRUSTED_ORIGINS and https:// on each plain name of ALLOWED_HOSTS; `make run` and the test
# stack set it to the address they serve (http://127.0.0.1:8000 and its localhost twin).
ALLOWED_ORIGINS = env.list("ALLOWED_ORIGINS", default=[]) or [
    *CSRF_TRUSTED_ORIGINS,
    *(f"https://{h}" for h in ALLOWED_HOSTS if h and not h.startswith(".") and h != "*"),
]

# HTTPS by default once DEBUG is off (the site is expected behind TLS; docs/deploy.md).
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Preloading puts the domain on the browsers' built-in HSTS list, a commitment that is hard to
# undo: only the operator can decide it (SECURE_HSTS_PRELOAD=true), so check --deploy's
# reminder about it (security.W021) is silenced.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
# Behind a proxy that terminates TLS and sets X-Forwarded-Proto (never trust it otherwise).
if env.bool("TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy on every response: scripts only from our own files (no inline script,
# no eval), no plugins, no <base>, no framing. Style attributes stay allowed (the avatar's hue,
# a markdown table's alignment, the admin's own) but <style> elements and foreign sheets do not.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],  # the room's WebSocket is same-origin
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}

# Without DATABASE_URL / REDIS_URL: the embedded servers' URLs. Settings start nothing: `make
# run` and the test session start those servers (stack.services) before any process needs them.
_EMBEDDED_DATABASE_URL = f"postgres://postgres@127.0.0.1:{env.int('EMBEDDED_PG_PORT', default=54329)}/chat"
_EMBEDDED_REDIS_URL = f"redis://127.0.0.1:{env.int('EMBEDDED_REDIS_PORT', default=63799)}/0"

INSTALLED_APPS = [
    "daphne",
    "rooms.admin_apps.ModerationAdminConfig",  # django.contrib.admin, with the moderation dashboard
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "csp",
    "servestatic",  # its configuration checks
    "ninja",  # the API's docs page serves its own static files (no CDN)
    "rooms",
    "agents",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # static files, served asynchronously (WhiteNoise's ASGI-capable fork: WhiteNoise itself is
    # sync-only and under ASGI buffers each file and warns, evansd/whitenoise#179, #531)
    "servestatic.middleware.ServeStaticMiddleware",
    "rooms.middleware.Utf8FormsOnly",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "chatproject.urls"
ASGI_APPLICATION = "chatproject.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "rooms.context_processors.llm_notice",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=_EMBEDDED_DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
DATABASES["default"].setdefault("OPTIONS", {})
# A psycopg connection pool per process (Django >= 5.1, the supported way under ASGI): without
# it every socket's database call opens a new Postgres connection (measured: one per ping).
if env.bool("DB_POOL", default=True):
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": 1,
        "max_size": env.int("DB_POOL_MAX", default=10),
        "timeout": 10,
    }
if env.bool("DB_POOL", default=True):
    import psycopg_pool.base

    # After Postgres refused or dropped connections, psycopg_pool retries after 1 s, 2 s, 4 s...:
    # a 1-second outage could keep a process (the sweeper, that recovers turns) off the database
    # for several seconds more. Retry sooner, backing off more gently.
    psycopg_pool.base.AttemptWithBackoff.INITIAL_DELAY = 0.1
    psycopg_pool.base.AttemptWithBackoff.DELAY_BACKOFF = 1.5
# A pooled connection is checked (one empty round trip) when it is taken, so after Postgres
# restarts or drops sessions the pool hands out live connections instead of one error each.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=True)
# Our transactions are a few statements long. A process frozen inside one (SIGSTOP, a GC pause,
# a debugger) would hold its row locks, e.g. a room's, and stall that room for every process;
# Postgres ends such a session after this many ms, releasing the locks.
DB_IDLE_IN_TRANSACTION_TIMEOUT_MS = env.int("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", default=5000)
if DB_IDLE_IN_TRANSACTION_TIMEOUT_MS > 0:
    _pg_options = DATABASES["default"]["OPTIONS"].get("options", "")
    DATABASES["default"]["OPTIONS"]["options"] = (
        f"{_pg_options} -c idle_in_transaction_session_timeout={DB_IDLE_IN_TRANSACTION_TIMEOUT_MS}".strip()
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default=_EMBEDDED_REDIS_URL)
# Shared by every process (the per-address limits count there); keys under the channel prefix.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CHANNEL_PREFIX", default="chat"),
    }
}
CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
    "default": {
        # The pub/sub layer: one PUBLISH per group send, one subscription per group per
        # process. It never drops silently under capacity; lost frames are restored by `sync`.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": env.str("CHANNEL_PREFIX", default="chat")},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / ".devdata" / "staticfiles")
# collectstatic also writes a gzip copy of each file, which the middleware serves when asked
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedStaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="WARNING")},
    "loggers": {
        "rooms": {"level": env.str("LOG_LEVEL", default="INFO")},
        "agents": {"level": env.str("LOG_LEVEL", default="INFO")},
    },
}

# --- The room actor -------------------------------------------------------------------------
CHAT_MAX_FRAME_BYTES = env.int("CHAT_MAX_FRAME_BYTES", default=64 * 1024)
CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", default=16_000)
# A socket's replay (connect with `since`, `sync`, catch-up) is read and sent in batches of
# CHAT_REPLAY_BATCH events; one replay may go back at most CHAT_REPLAY_MAX_EVENTS events and send
# CHAT_REPLAY_MAX_BYTES of them: past either, the socket is closed with 4413 and the page reloads
# (a fresh transcript). What one socket can make a process hold is bounded by these.
CHAT_REPLAY_BATCH = env.int("CHAT_REPLAY_BATCH", default=500)
CHAT_REPLAY_MAX_EVENTS = env.int("CHAT_REPLAY_MAX_EVENTS", default=5000)
CHAT_REPLAY_MAX_BYTES = env.int("CHAT_REPLAY_MAX_BYTES", default=8 * 1024 * 1024)
# Open room sockets one user may hold in one ASGI process (0: no limit); one more is closed 4429.
SOCKETS_PER_USER = env.int("SOCKETS_PER_USER", default=32)
# The turn queue rooms hand their messages to (rooms.turns.TurnQueue); rooms never import it.
ROOM_TURN_QUEUE = "agents.hook.RoomTurnQueue"
TURN_TIME_LIMIT = env.float("TURN_TIME_LIMIT", default=300.0)  # seconds per turn
LEASE_TIMEOUT = env.float("LEASE_TIMEOUT", default=20.0)  # a running turn's lease, renewed
SWEEP_INTERVAL = env.float("SWEEP_INTERVAL", default=5.0)  # beat: expired leases, lost kicks
CHUNK_FLUSH_INTERVAL = env.float("CHUNK_FLUSH_INTERVAL", default=0.03)  # seconds
CHUNK_FLUSH_MAX_CHARS = env.int("CHUNK_FLUSH_MAX_CHARS", default=2048)
CHUNK_WRITERS = env.int("CHUNK_WRITERS", default=1)  # writer threads (lanes) per worker process
CHUNK_WRITE_BATCH = env.int("CHUNK_WRITE_BATCH", default=256)  # chunk rows per statement at most
CONTEXT_MESSAGES = env.int("CONTEXT_MESSAGES", default=40)
TURN_MAX_STEPS = env.int("TURN_MAX_STEPS", default=8)  # model steps per turn (tool rounds + 1)
# Tools (agents/tools/): the server tools there are, those a room has on unless its owner says
# otherwise (empty: all), and the hooks every call goes through (before/after, dotted paths).
AGENT_TOOLS = [
    "agents.tools.calculator.Calculator",
    "agents.tools.clock.Clock",
    "agents.tools.search.RoomSearch",
    "agents.tools.notes.Note",
    "agents.tools.schedule.ScheduleTurn",
]
# more tool classes (dotted paths) appended from the environment: the test and chaos stacks load
# their slow test tools (tests/tools.py) this way
AGENT_TOOLS += env.list("AGENT_TOOLS_EXTRA", default=[])
AGENT_TOOLS_ON = env.list("AGENT_TOOLS_ON", default=[])
TOOL_HOOKS = env.list("TOOL_HOOKS", default=["agents.tools.hooks.LogCalls"])
TOOL_CONCURRENCY = env.int("TOOL_CONCURRENCY", default=4)  # server calls of one step at once
TOOL_TIMEOUT = env.float("TOOL_TIMEOUT", default=30.0)  # seconds per server call
TOOL_WAIT_TIMEOUT = env.float("TOOL_WAIT_TIMEOUT", default=86_400.0)  # approval / client answer
TOOL_OUTPUT_MAX_BYTES = env.int("TOOL_OUTPUT_MAX_BYTES", default=32 * 1024)
CLIENT_TOOLS_MAX = env.int("CLIENT_TOOLS_MAX", default=8)  # client tools offered with one send
CLIENT_TOOL_SCHEMA_MAX_BYTES = env.int("CLIENT_TOOL_SCHEMA_MAX_BYTES", default=8 * 1024)
MAX_TURN_ATTEMPTS = env.int("MAX_TURN_ATTEMPTS", default=3)  # runs of one turn, recoveries included
# Sub-agents (agents/subagents.py): how deep a chain of agents calling agents may go, how many
# child runs may be open at once (site-wide), how long a parent waits for one, and how often
# (and how much of) a child's answer so far is copied into the parent's card.
AGENT_MAX_DEPTH = env.int("AGENT_MAX_DEPTH", default=2)
AGENT_MAX_RUNNING = env.int("AGENT_MAX_RUNNING", default=16)
AGENT_CALL_TIMEOUT = env.float("AGENT_CALL_TIMEOUT", default=900.0)
AGENT_PROGRESS_INTERVAL = env.float("AGENT_PROGRESS_INTERVAL", default=0.5)
AGENT_PROGRESS_MAX_CHARS = env.int("AGENT_PROGRESS_MAX_CHARS", default=1200)
# MCP servers' tools (agents/mcp/, docs/mcp.md): the servers are rows configured in the admin.
# MCP_SECRET_KEY encrypts their credentials (Fernet keys, comma-separated: the first encrypts,
# all decrypt, so a key can be rotated); with DEBUG and no key, one is derived from SECRET_KEY.
MCP_SECRET_KEY = env.str("MCP_SECRET_KEY", default="")
MCP_CONNECT_WAIT = env.float("MCP_CONNECT_WAIT", default=5.0)  # a turn waits for a starting server
MCP_IDLE_CHECK = env.float("MCP_IDLE_CHECK", default=60.0)  # idle seconds before a call pings first
MCP_RETRY_MIN = env.float("MCP_RETRY_MIN", default=1.0)  # back-off between connection attempts,
MCP_RETRY_MAX = env.float("MCP_RETRY_MAX", default=30.0)  # doubling up to this (the breaker)
MCP_CATALOG_TTL = env.float("MCP_CATALOG_TTL", default=300.0)  # seconds between tool list refreshes
# Rate limits (0 turns a limit off): frames per second per socket (burst = 2x), messages per
# minute per user (all sockets), turns waiting in one room's queue; `sync` frames per minute
# per socket (each one reads the database: burst = a quarter of it, at least 1).
RATE_FRAMES_PER_SECOND = env.float("RATE_FRAMES_PER_SECOND", default=20.0)
RATE_SYNCS_PER_MINUTE = env.float("RATE_SYNCS_PER_MINUTE", default=12.0)
RATE_MESSAGES_PER_MINUTE = env.int("RATE_MESSAGES_PER_MINUTE", default=30)
RATE_QUEUED_TURNS_PER_ROOM = env.int("RATE_QUEUED_TURNS_PER_ROOM", default=20)
# Scheduled turns (agents/schedules.py): the shortest interval, schedules per room, and the
# back-off (seconds, doubling) after an error that may pass before the slot is tried again.
SCHEDULE_MIN_INTERVAL = env.float("SCHEDULE_MIN_INTERVAL", default=60.0)
SCHEDULES_PER_ROOM_MAX = env.int("SCHEDULES_PER_ROOM_MAX", default=20)
SCHEDULE_RETRY_BASE = env.float("SCHEDULE_RETRY_BASE", default=30.0)
SCHEDULE_RETRY_MAX = env.float("SCHEDULE_RETRY_MAX", default=3600.0)
# Webhooks (rooms/webhooks/): seconds a delivery may take, attempts, the back-off (doubling
# from the base, capped; below the broker's visibility timeout), and how stale the append
# path's list of rooms with endpoints may be.
WEBHOOK_TIMEOUT = env.float("WEBHOOK_TIMEOUT", default=5.0)
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=8)
WEBHOOK_RETRY_BASE = env.float("WEBHOOK_RETRY_BASE", default=10.0)
WEBHOOK_RETRY_MAX = env.float("WEBHOOK_RETRY_MAX", default=300.0)
WEBHOOK_ROOMS_TTL = env.float("WEBHOOK_ROOMS_TTL", default=2.0)
WEBHOOK_INBOUND_MAX_BYTES = env.int("WEBHOOK_INBOUND_MAX_BYTES", default=64 * 1024)
# Webhook URLs on private, loopback or link-local addresses (the site's own network): refused
# unless allowed; allowed by default only with DEBUG (local receivers in development and tests).
WEBHOOK_ALLOW_PRIVATE = env.bool("WEBHOOK_ALLOW_PRIVATE", default=DEBUG)
# Seconds between re-reads of every live socket's access (a ban whose broadcast was lost still
# closes it); each socket's frames, `sync` and heartbeat re-check it as well. 0: off.
ACCESS_RECHECK_SECONDS = env.float("ACCESS_RECHECK_SECONDS", default=20.0)
# Per client address ("N/h", "N/m"; empty: no limit): each guest account, room and token costs
# a quota and a queue, so how fast one address may make them is limited.
RATE_GUESTS = env.str("RATE_GUESTS", default="10/h")
RATE_SIGNUPS = env.str("RATE_SIGNUPS", default="10/h")
RATE_ROOMS = env.str("RATE_ROOMS", default="20/h")
RATE_TOKENS = env.str("RATE_TOKENS", default="20/h")
# the request header holding the client's address behind a proxy (e.g. HTTP_X_REAL_IP)
RATELIMIT_IP_META_KEY = env.str("RATELIMIT_IP_META_KEY", default="") or None
# What a guest (an account with a display name only) may do besides reading and posting.
GUESTS_MAY_CREATE_ROOMS = env.bool("GUESTS_MAY_CREATE_ROOMS", default=False)
GUESTS_MAY_CREATE_TOKENS = env.bool("GUESTS_MAY_CREATE_TOKENS", default=False)

# --- The HTTP API (rooms/api/) -----------------------------------------------------------------
API_IDEMPOTENCY_TTL = env.int("API_IDEMPOTENCY_TTL", default=86_400)  # seconds a key is kept
API_WAIT_MAX = env.float("API_WAIT_MAX", default=60.0)  # longest long-poll of a submission
# seconds between a follower's checks of the database when no broadcast came (a lost doorbell)
API_FOLLOW_POLL = env.float("API_FOLLOW_POLL", default=2.0)
API_STREAM_KEEPALIVE = env.float("API_STREAM_KEEPALIVE", default=15.0)  # SSE comment when idle

# --- LLM -------------------------------------------------------------------------------------
LLM_BASE_URL = env.str("LLM_BASE_URL", default="")
LLM_API_KEY = env.str("LLM_API_KEY", default="")
LLM_MODEL = env.str("LLM_MODEL", default="gpt-4o-mini")
# The models a room's owner may pick besides LLM_MODEL (the default); nothing else reaches the
# provider, whatever a room row says.
LLM_MODELS = env.list("LLM_MODELS", default=[])
# "openai" (any OpenAI-compatible server), "demo" (offline, canned), or a dotted class path.
LLM_PROVIDER = env.str("LLM_PROVIDER", default="openai" if (LLM_BASE_URL or LLM_API_KEY) else "demo")
LLM_TIMEOUT = env.float("LLM_TIMEOUT", default=60.0)

# --- Celery ----------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_QUEUE", default="celery")
# The sweeper gets a queue (and a small worker) of its own: on the turn queue it would wait
# behind a backlog of kicks while every pool process streams a long answer, and recovery of a
# lost worker's turn would wait with it.
CELERY_CONTROL_QUEUE = f"{CELERY_TASK_DEFAULT_QUEUE}.control"
# chatproject.celery.route_task: the sweeper's tasks (sweeps, schedules) to CELERY_CONTROL_QUEUE,
# webhooks to `<CELERY_QUEUE>.webhooks`, from a worker of their own: a slow endpoint never takes
# a turn's thread (read when a task is sent, so a test run's own queue names apply)
CELERY_TASK_ROUTES = ("chatproject.celery.route_task",)
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True  # safe: a kick is idempotent
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = TURN_TIME_LIMIT + 30
CELERY_TASK_TIME_LIMIT = TURN_TIME_LIMIT + 60
_visibility = int(CELERY_TASK_TIME_LIMIT + 300)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": _visibility}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": _visibility}
CELERY_VISIBILITY_TIMEOUT = _visibility
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    # expires: a sweep that waited longer than two intervals is stale; the next one is due
    "sweep-rooms": {
        "task": "agents.tasks.sweep_rooms",
        "schedule": SWEEP_INTERVAL,
        "options": {"expires": SWEEP_INTERVAL * 2},
    },
    # due schedules fire on the sweeper too (two beats or sweepers still run an occurrence once)
    "sweep-webhooks": {
        "task": "rooms.webhooks.sweep",
        "schedule": max(SWEEP_INTERVAL, 5.0),
        "options": {"expires": max(SWEEP_INTERVAL, 5.0) * 2},
    },
    "fire-schedules": {
        "task": "agents.tasks.fire_schedules",
        "schedule": SWEEP_INTERVAL,
        "options": {"expires": SWEEP_INTERVAL * 2},
    },
}
