from __future__ import annotations

from django.contrib import admin

from agents.models import Turn


@admin.register(Turn)
class TurnAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "queue_seq", "status", "attempt", "lease_owner", "lease_until"]
    list_filter = ["status"]
    raw_id_fields = ["room", "trigger_message", "assistant_message"]
    readonly_fields = ["lease_generation", "created_at", "started_at", "finished_at"]
