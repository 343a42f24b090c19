"""The metrics every process records (prometheus_client, multiprocess mode: each process writes
its own files under PROMETHEUS_MULTIPROC_DIR and /metrics adds them up, agents/observe.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

TURNS = Counter("roomchat_turns", "Turns that reached a status (done, failed, parked, ...)", ["status"])
TURN_QUEUE_WAIT = Histogram(
    "roomchat_turn_queue_wait_seconds", "From a turn queued to its first start", buckets=_SECONDS
)
TURN_FIRST_TOKEN = Histogram(
    "roomchat_turn_first_token_seconds", "From a turn's start to its first streamed text", buckets=_SECONDS
)
TURN_TOKENS_PER_SECOND = Histogram(
    "roomchat_turn_tokens_per_second",
    "Streamed text deltas per second after the first one, per turn run",
    buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000),
)
TURN_DURATION = Histogram(
    "roomchat_turn_duration_seconds", "One run of a turn, start to end", buckets=_SECONDS
)
TOOL_SECONDS = Histogram("roomchat_tool_call_seconds", "A server tool call's run", ["tool"], buckets=_SECONDS)
TOOL_CALLS = Counter("roomchat_tool_calls", "Tool calls run, by tool and outcome", ["tool", "outcome"])
SOCKETS = Gauge("roomchat_sockets_connected", "Open room sockets", multiprocess_mode="livesum")
REPLAY_EVENTS = Histogram(
    "roomchat_replay_events",
    "Room events replayed to a socket on connect or sync",
    buckets=(0, 1, 5, 10, 50, 100, 500, 1000, 5000),
)
CHUNK_WRITE_SECONDS = Histogram(
    "roomchat_chunk_write_seconds", "One group-commit statement of streamed chunks", buckets=_SECONDS
)
WEBHOOK_DELIVERIES = Counter(
    "roomchat_webhook_deliveries", "Webhook delivery attempts by outcome", ["outcome"]
)
WEBHOOKS_IN = Counter("roomchat_webhooks_in", "Inbound webhook requests by outcome", ["outcome"])
SCHEDULE_RUNS = Counter("roomchat_schedule_runs", "Occurrences of schedules by outcome", ["outcome"])
