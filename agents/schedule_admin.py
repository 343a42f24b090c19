"""Schedules in the admin: made and changed with the same checks as everywhere, runs listed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from agents.models import Schedule, ScheduleRun
from agents.schedules import ScheduleInvalid, schedule_validate, slot_after
from rooms.selectors import membership_of


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = ["room", "created_by", "prompt", "kind", "cron", "interval_seconds", "run_at", "timezone",
                  "enabled"]  # fmt: skip

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        candidate = Schedule(**{k: v for k, v in data.items() if k in self.Meta.fields})
        try:
            if (
                data.get("room")
                and data.get("created_by")
                and not membership_of(room=data["room"], user=data["created_by"])
            ):
                raise ScheduleInvalid("forbidden", "its creator must be a member of the room")
            schedule_validate(candidate, now=timezone.now())
        except ScheduleInvalid as exc:
            raise forms.ValidationError(exc.detail) from None
        return data


class ScheduleRunInline(admin.TabularInline):
    model = ScheduleRun
    extra = 0
    fields = ["slot", "status", "turn", "message", "claimed_by", "error", "created_at"]
    readonly_fields = ["slot", "status", "turn", "message", "claimed_by", "error", "created_at"]
    ordering = ["-slot"]
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ["id", "room", "created_by", "kind", "when", "enabled", "next_run_at", "failures"]
    list_filter = ["kind", "enabled", "created_via"]
    search_fields = ["prompt"]
    raw_id_fields = ["room", "created_by"]
    readonly_fields = ["next_run_at", "retry_at", "failures", "last_error", "created_via", "created_at"]
    inlines = [ScheduleRunInline]

    @admin.display(description="when")
    def when(self, obj: Schedule) -> str:
        return obj.describe()

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        if not change:
            obj.created_via = Schedule.Via.ADMIN
        # a new or changed timing starts from its next slot after now: nothing is backfilled
        obj.next_run_at = slot_after(obj, after=timezone.now()) if obj.enabled else None
        if obj.kind == Schedule.Kind.INTERVAL and obj.enabled and not change:
            obj.next_run_at = timezone.now() + timedelta(seconds=int(obj.interval_seconds or 0))
        super().save_model(request, obj, form, change)


@admin.register(ScheduleRun)
class ScheduleRunAdmin(admin.ModelAdmin):
    """Each occurrence with the turn it started: a record, read-only."""

    list_display = ["id", "schedule", "slot", "status", "turn", "claimed_by", "created_at"]
    list_filter = ["status"]
    raw_id_fields = ["schedule", "message", "turn"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
