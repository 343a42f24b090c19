"""Schedules and their runs: a turn started by a timer (cron, interval, or once).

A run is one occurrence (schedule + slot): its row is unique on both, so however many sweepers
race for it, one insert wins and the occurrence runs at most once (agents/schedules.py).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Schedule(models.Model):
    """A message the scheduler posts into a room, as its creator, at each slot."""

    class Kind(models.TextChoices):
        CRON = "cron", "Cron expression"
        INTERVAL = "interval", "Every N seconds"
        ONCE = "once", "Once, at a time"

    class Via(models.TextChoices):
        PAGE = "page"
        ADMIN = "admin"
        TOOL = "tool"
        API = "api"

    room = models.ForeignKey("rooms.Room", on_delete=models.CASCADE, related_name="schedules")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    prompt = models.TextField(help_text="The message posted at each slot, as the creator")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    cron = models.CharField(max_length=120, blank=True, default="", help_text="e.g. 0 9 * * 1-5")
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    run_at = models.DateTimeField(null=True, blank=True, help_text="For a one-shot")
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA name, e.g. Europe/Lisbon")
    enabled = models.BooleanField(default=True)
    # The next slot to run (None once a one-shot ran, or a schedule was disabled).
    next_run_at = models.DateTimeField(null=True, blank=True)
    # After an error that may pass (a busy or locked room, a database fault) the slot is kept
    # and tried again from this time on; `failures` counts the tries in a row.
    retry_at = models.DateTimeField(null=True, blank=True)
    failures = models.IntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_via = models.CharField(max_length=8, choices=Via.choices, default=Via.PAGE)
    created_by_call = models.ForeignKey(
        "agents.ToolCall", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["next_run_at"], condition=Q(enabled=True), name="schedule_due_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["created_by_call"],
                condition=Q(created_by_call__isnull=False),
                name="schedule_one_per_call",
            ),
        ]

    def __str__(self) -> str:
        return f"schedule {self.pk} of room {self.room_id}: {self.describe()}"

    def describe(self) -> str:
        """When it runs, in words a person reads."""
        if self.kind == self.Kind.CRON:
            return f"cron '{self.cron}' ({self.timezone})"
        if self.kind == self.Kind.INTERVAL:
            return f"every {self.interval_seconds} s"
        return f"once at {self.run_at.isoformat() if self.run_at else '?'}"


class ScheduleRun(models.Model):
    """One occurrence of a schedule: posted (with its message and turn), or skipped."""

    class Status(models.TextChoices):
        POSTED = "posted"  # its message is stored and its turn queued
        SKIPPED = "skipped"  # an interval whose previous run was still going
        FAILED = "failed"  # refused for good (the creator left the room): the schedule stops

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="runs")
    slot = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices)
    message = models.ForeignKey(
        "rooms.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    turn = models.ForeignKey(
        "agents.Turn", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    claimed_by = models.CharField(max_length=120, blank=True, default="")
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-slot"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "slot"], name="schedulerun_occurrence_unique"),
        ]

    def __str__(self) -> str:
        return f"run of schedule {self.schedule_id} at {self.slot.isoformat()}: {self.status}"
