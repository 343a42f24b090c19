"""Webhooks in the admin: endpoints, every delivery with its status, attempts and last error."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from rooms.webhooks.models import InboundHook, WebhookDelivery, WebhookEndpoint


class DeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    extra = 0
    fields = ["seq", "event_type", "status", "attempts", "last_status_code", "last_error", "created_at"]
    readonly_fields = [
        "seq",
        "event_type",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "created_at",
    ]
    can_delete = False
    max_num = 0


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "url", "enabled", "cursor_seq", "created_at"]
    list_filter = ["enabled"]
    raw_id_fields = ["room", "created_by"]
    readonly_fields = ["secret", "cursor_seq", "created_at"]
    inlines = [DeliveryInline]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["id", "endpoint", "event_type", "seq", "status", "attempts", "last_status_code",
                    "last_error", "next_attempt_at", "delivered_at"]  # fmt: skip
    list_filter = ["status", "event_type"]
    raw_id_fields = ["endpoint"]
    actions = ["send_again"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Send again (failed or pending deliveries)")
    def send_again(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        from rooms.webhooks.tasks import deliver

        ids = list(queryset.exclude(status="delivered").values_list("pk", flat=True))
        WebhookDelivery.objects.filter(pk__in=ids).update(
            status="pending", attempts=0, next_attempt_at=timezone.now()
        )
        for delivery_id in ids:
            deliver.delay(delivery_id)


@admin.register(InboundHook)
class InboundHookAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "name", "user", "key", "enabled", "created_at"]
    raw_id_fields = ["room", "user"]
    readonly_fields = ["key", "secret", "created_at"]
