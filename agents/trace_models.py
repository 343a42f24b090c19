"""A turn's trace: the timings of one run of a turn (its steps, model calls and tool calls)."""

from __future__ import annotations

from django.db import models


class TurnTrace(models.Model):
    """One run of a turn (a turn parked, recovered or continued has several), written once at
    its end; `spans` are [{name, kind, start, duration, attrs}] in seconds from `started_at`."""

    turn = models.ForeignKey("agents.Turn", on_delete=models.CASCADE, related_name="traces")
    attempt = models.IntegerField()
    status = models.CharField(max_length=16)  # how the run ended: done, parked, failed, lost...
    started_at = models.DateTimeField()
    duration = models.FloatField()  # seconds
    spans = models.JSONField(default=list)

    class Meta:
        ordering = ["turn_id", "started_at"]
        indexes = [models.Index(fields=["turn", "started_at"], name="turntrace_turn_idx")]

    def __str__(self) -> str:
        return f"trace of turn {self.turn_id} attempt {self.attempt}: {self.status}"
