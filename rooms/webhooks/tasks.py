"""Thin Celery tasks of the webhooks (their own queue: settings.WEBHOOK_QUEUE)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction

from rooms.webhooks import outbound


def _deliver_on_commit(ids: list[int]) -> None:
    transaction.on_commit(lambda: [deliver.delay(i) for i in ids], robust=True)


@shared_task(name="rooms.webhooks.pump_room", ignore_result=True)
def pump_room(room_id: int) -> int:
    """New room events become deliveries; each is sent by its own task."""
    with transaction.atomic():
        ids = outbound.room_pump(room_id=int(room_id))
        _deliver_on_commit(ids)
    return len(ids)


@shared_task(name="rooms.webhooks.deliver", bind=True, ignore_result=True)
def deliver(self: Any, delivery_id: int) -> str:
    """Send one delivery; retried with back-off (the attempts are counted in its row)."""
    outcome = outbound.delivery_attempt(delivery_id=int(delivery_id))
    if outcome == "retry":
        attempts = outbound.WebhookDelivery.objects.values_list("attempts", flat=True).get(pk=delivery_id)
        raise self.retry(countdown=outbound.retry_delay(attempts), max_retries=settings.WEBHOOK_MAX_ATTEMPTS)
    return outcome


@shared_task(name="rooms.webhooks.sweep", ignore_result=True)
def sweep_webhooks() -> dict[str, int]:
    """Beat: pump endpoints left behind, and send again deliveries whose task was lost."""
    rooms = outbound.endpoints_behind()
    for room_id in rooms:
        pump_room.delay(room_id)
    lost = outbound.deliveries_due(grace=settings.WEBHOOK_RETRY_MAX + 30)
    for delivery_id in lost:
        deliver.delay(delivery_id)
    return {"pumped": len(rooms), "resent": len(lost)}
