"""Turns: the per-room FIFO queue. A room's lease is its one running turn."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from rooms.models import Message, Room


class Turn(models.Model):
    """One AI turn of a room, queued in the order of its triggering message."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    TERMINAL = (Status.DONE, Status.CANCELLED, Status.FAILED, Status.INTERRUPTED)

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="turns")
    # FIFO position: the seq of the triggering message (unique per room).
    queue_seq = models.BigIntegerField()
    trigger_message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+")
    assistant_message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempt = models.IntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    # Set before a tool with side effects runs: such a turn is never re-run or continued.
    side_effects_started = models.BooleanField(default=False)
    # The lease: who runs the turn, until when, and a fencing token every write checks.
    lease_owner = models.CharField(max_length=120, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_generation = models.BigIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["queue_seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "queue_seq"], name="turn_room_queue_unique"),
            models.UniqueConstraint(
                fields=["room"], condition=Q(status="running"), name="turn_one_running_per_room"
            ),
        ]
        indexes = [
            models.Index(fields=["room", "status", "queue_seq"], name="turn_room_status_idx"),
            models.Index(
                fields=["lease_until"], condition=Q(status="running"), name="turn_running_lease_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"turn {self.pk} of room {self.room_id}: {self.status}"
