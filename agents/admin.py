from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from agents.models import Agent, RoomAgent, ToolCall, Turn


@admin.register(Turn)
class TurnAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "queue_seq", "status", "attempt", "lease_owner", "lease_until"]
    list_filter = ["status"]
    raw_id_fields = ["room", "trigger_message", "assistant_message"]
    readonly_fields = ["lease_generation", "created_at", "started_at", "finished_at"]


@admin.register(ToolCall)
class ToolCallAdmin(admin.ModelAdmin):
    """Tool calls are the record of what the assistant did: read-only here (their state changes
    only through the loop's compare-and-set transitions, which also emit the room's events)."""

    list_display = ["id", "room", "turn", "name", "kind", "state", "decided_by", "created_at", "finished_at"]
    list_filter = ["state", "kind", "name"]
    search_fields = ["name", "error"]
    raw_id_fields = ["room", "turn", "message"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ToolCall | None = None) -> bool:
        return False


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    """Rooms set up as agents (the room's owner does the same on the room's settings page)."""

    list_display = ["name", "room", "enabled", "created_at"]
    list_filter = ["enabled"]
    search_fields = ["name", "description"]
    raw_id_fields = ["room"]


@admin.register(RoomAgent)
class RoomAgentAdmin(admin.ModelAdmin):
    """Which agents a room's assistant may call."""

    list_display = ["room", "agent", "created_at"]
    raw_id_fields = ["room", "agent"]
