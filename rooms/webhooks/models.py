"""Webhook endpoints (out), their deliveries, and inbound hooks (in)."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q

EVENT_TYPES = ("message.posted", "turn.done", "turn.failed", "turn.parked", "turn.cancelled")


def _key() -> str:
    return secrets.token_urlsafe(18)


class WebhookEndpoint(models.Model):
    """A URL a room's owner registered for some of the room's events."""

    room = models.ForeignKey("rooms.Room", on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=80)  # whsec_<base64>: signs every delivery
    events = models.JSONField(default=list)  # of EVENT_TYPES
    enabled = models.BooleanField(default=True)
    # The outbox cursor: room events up to this seq have been turned into deliveries.
    cursor_seq = models.BigIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.url} ({', '.join(self.events)})"


class WebhookDelivery(models.Model):
    """One event to one endpoint: sent until it is answered 2xx or runs out of attempts."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"  # out of attempts

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    seq = models.BigIntegerField()  # of the room event
    event_id = models.CharField(max_length=80)  # the `webhook-id` header: the receiver dedups on it
    event_type = models.CharField(max_length=32)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.IntegerField(default=0)
    last_status_code = models.IntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "seq"], name="delivery_endpoint_seq_unique")
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"], condition=Q(status="pending"), name="delivery_pending_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} #{self.seq} -> endpoint {self.endpoint_id}: {self.status}"


class InboundHook(models.Model):
    """A signed URL that posts the JSON it receives into the room as `user`."""

    room = models.ForeignKey("rooms.Room", on_delete=models.CASCADE, related_name="inbound_hooks")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=40, unique=True, default=_key)  # in the URL; not a secret
    secret = models.CharField(max_length=80)  # whsec_<base64>: the sender signs with it
    name = models.CharField(max_length=80, blank=True, default="")
    # Where the payload keeps the text, the sender's event id (else the `webhook-id` header)
    # and the sender's name: dotted paths, so a bridge is a few lines of configuration.
    text_field = models.CharField(max_length=120, default="text")
    id_field = models.CharField(max_length=120, blank=True, default="")
    sender_field = models.CharField(max_length=120, blank=True, default="")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"inbound {self.name or self.key} of room {self.room_id}"
