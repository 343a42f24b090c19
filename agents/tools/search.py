"""The `search_room` tool: full-text search of the room's own transcript (no other room's)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from agents.tools.base import Tool, ToolContext, ToolError
from agents.tools.clock import zone_named
from rooms.selectors import messages_search

RESULTS_MAX = 20
QUERY_MAX_CHARS = 200


def moment_parse(value: Any, *, field: str, zone: tzinfo, end_of_day: bool) -> datetime | None:
    """An ISO date or datetime (or "today", "yesterday") as an aware datetime in `zone`.

    A date stands for the start of that day, or with `end_of_day` for the start of the next one
    (so "until": "2026-12-02" includes the whole of that day)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ToolError(f"{field} must be an ISO date or datetime, e.g. 2026-12-02 or 2026-12-02T15:00")
    text = value.strip()
    today = datetime.now(zone).date()
    day: date | None = {"today": today, "yesterday": today - timedelta(days=1)}.get(text.lower())
    if day is None and len(text) == 10:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            pass
    if day is not None:
        if end_of_day:
            day += timedelta(days=1)
        return datetime.combine(day, time.min, tzinfo=zone)
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ToolError(f"{field}: {value!r} is not an ISO date or datetime") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


class RoomSearch(Tool):
    """Search what was said in this room, so the model can answer from the transcript."""

    name = "search_room"
    description = (
        "Search this room's chat transcript (messages of the people and of the assistant) with "
        'full-text search. query: words to find; "a phrase" in quotes, -word to exclude, "or" '
        "between alternatives; English word forms match (flight finds flights); an empty query "
        "lists the newest messages passing the other filters. author: a person's display name or "
        'username, or "Assistant". since / until: ISO dates (2026-12-02) or datetimes '
        '(2026-12-02T15:00, 2026-12-02T15:00+01:00), or "today" / "yesterday"; a date in until '
        "includes that whole day; dates and datetimes without an offset are read in `timezone` "
        "(default UTC). Results are newest first, each {seq, author, role, created_at, excerpt}, "
        "matched words in the excerpt marked **like this**. Example: what did Bob say about Porto "
        'yesterday -> {"query": "Porto", "author": "Bob", "since": "yesterday"}.'
    )
    parameters = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "maxLength": QUERY_MAX_CHARS, "description": "Words to find."},
            "author": {"type": "string", "maxLength": 150, "description": "Only messages by this person."},
            "since": {"type": "string", "maxLength": 40, "description": "Messages at or after this."},
            "until": {"type": "string", "maxLength": 40, "description": "Messages before this."},
            "timezone": {"type": "string", "maxLength": 64, "description": "IANA zone for dates."},
            "limit": {"type": "integer", "minimum": 1, "maximum": RESULTS_MAX, "default": 10},
        },
        "required": ["query"],
        "additionalProperties": False,
    }
    side_effects = False
    idempotent = True

    def run(self, ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
        """{"results": [...], "count": n} for this room, with a hint when nothing matched."""
        query = args.get("query", "")
        author = args.get("author")
        zone_name = args.get("timezone")
        limit = args.get("limit", 10)
        if not isinstance(query, str) or len(query) > QUERY_MAX_CHARS:
            raise ToolError(f"query must be a string of at most {QUERY_MAX_CHARS} characters")
        if author is not None and not isinstance(author, str):
            raise ToolError("author must be a string")
        if zone_name is not None and not isinstance(zone_name, str):
            raise ToolError("timezone must be a string")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= RESULTS_MAX:
            raise ToolError(f"limit must be a whole number from 1 to {RESULTS_MAX}")
        zone = zone_named(zone_name)
        since = moment_parse(args.get("since"), field="since", zone=zone, end_of_day=False)
        until = moment_parse(args.get("until"), field="until", zone=zone, end_of_day=True)
        if since is not None and until is not None and since >= until:
            raise ToolError("since must be before until")
        results = messages_search(
            room_id=ctx.room_id, query=query, author=author, since=since, until=until, limit=limit
        )
        found: dict[str, Any] = {"results": results, "count": len(results)}
        if not results:
            found["hint"] = "No message matched: try other or fewer words, or drop a filter."
        return found
