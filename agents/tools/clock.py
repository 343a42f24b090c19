"""The `current_time` tool: today's date and the time, in UTC or a named IANA time zone."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agents.tools.base import Tool, ToolContext, ToolError

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def zone_named(name: str | None) -> tzinfo:
    """The IANA time zone `name` (None or "UTC": UTC), or ToolError for a zone that isn't one."""
    if name is None or name.strip().upper() in ("", "UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a zone key at all ("../x")
        raise ToolError(f"unknown time zone {name!r}: use an IANA name such as 'Europe/Lisbon'") from None


class Clock(Tool):
    """The current date and time: models have no clock of their own."""

    name = "current_time"
    description = (
        "The current date, time and weekday, in UTC or in the given IANA time zone "
        '(e.g. "Europe/Lisbon", "America/New_York", "Asia/Tokyo"). Use it whenever the answer '
        'depends on today\'s date or the time, including to resolve "yesterday" or "last week".'
    )
    parameters = {
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": 'An IANA time zone name; default "UTC".',
                "maxLength": 64,
            }
        },
        "additionalProperties": False,
    }
    side_effects = False
    idempotent = True

    def run(self, ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
        """{"timezone", "iso", "date", "time", "weekday", "utc_offset"} for now in the zone."""
        zone_name = args.get("timezone")
        if zone_name is not None and not isinstance(zone_name, str):
            raise ToolError("timezone must be a string")
        zone = zone_named(zone_name)
        now = datetime.now(UTC).astimezone(zone).replace(microsecond=0)
        return {
            "timezone": "UTC" if zone is UTC else str(zone),
            "iso": now.isoformat(),
            "date": now.date().isoformat(),
            "time": now.strftime("%H:%M:%S"),
            "weekday": WEEKDAYS[now.weekday()],  # not strftime("%A"): that follows the locale
            "utc_offset": now.isoformat()[-6:],
        }
