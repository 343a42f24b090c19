"""The moderation dashboard's reads: rooms active now, open reports, recent moderation
actions, turns that failed or wait on a person. The admin's index shows them first."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from django.conf import settings

from rooms.models import MessageReport, ModerationAction, Room
from rooms.presence import redis_key
from rooms.turns import turn_queue

log = logging.getLogger(__name__)
_PRESENCE_FRESH = 90.0  # seconds: as rooms.presence, an entry older than this is a dead socket
DASHBOARD_ROWS = 20


def connected_by_room() -> dict[int, int]:
    """People connected now, by room id (rooms.presence's hashes in Redis); {} if Redis is away."""
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        counts: dict[int, int] = {}
        prefix = redis_key("presence", "")
        now = time.time()
        for key in client.scan_iter(match=prefix + "*", count=500):
            room_id = key.decode().rsplit(":", 1)[-1]
            if not room_id.isdigit():
                continue
            people = {
                entry["id"]
                for entry in (json.loads(v) for v in client.hvals(key))
                if now - entry.get("t", 0) < _PRESENCE_FRESH
            }
            if people:
                counts[int(room_id)] = len(people)
        client.close()
        return counts
    except redis.RedisError:
        log.warning("presence unavailable for the dashboard", exc_info=True)
        return {}


def dashboard_context() -> dict[str, Any]:
    """What the dashboard shows, newest first, each row linking to its room or message."""
    turns = turn_queue().overview(limit=DASHBOARD_ROWS)
    connected = connected_by_room()
    active_ids = set(connected) | set(turns["running"]) | set(turns["queued"]) | set(turns["parked"])
    rooms = Room.objects.filter(pk__in=active_ids).order_by("slug")[:DASHBOARD_ROWS]
    active = [
        {
            "room": room,
            "connected": connected.get(room.pk, 0),
            "running": turns["running"].get(room.pk, 0),
            "queued": turns["queued"].get(room.pk, 0),
            "parked": turns["parked"].get(room.pk, 0),
        }
        for room in rooms
    ]
    active.sort(key=lambda r: (-r["connected"], -r["running"], r["room"].slug))
    rooms_by_id = Room.objects.in_bulk([t["room_id"] for t in turns["attention"]])
    attention = [dict(t, room=rooms_by_id.get(t["room_id"])) for t in turns["attention"]]
    return {
        "active_rooms": active,
        "open_reports": list(
            MessageReport.objects.filter(resolved_at__isnull=True)
            .select_related("message__room", "reporter")
            .order_by("-created_at")[:DASHBOARD_ROWS]
        ),
        "open_report_count": MessageReport.objects.filter(resolved_at__isnull=True).count(),
        "recent_actions": list(ModerationAction.objects.select_related("actor", "room")[:DASHBOARD_ROWS]),
        "attention_turns": attention,
    }
