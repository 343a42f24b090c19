"""Webhooks out: the room's event log is the outbox.

Each endpoint keeps a cursor in its room's event log. After an append commits in a room that
has endpoints, a `pump` task turns the events past each cursor into deliveries (unique per
endpoint and seq) and moves the cursor in the same transaction, then enqueues one `deliver` task
per delivery on a queue of its own (a worker of its own, short timeouts): a dead endpoint never
holds up a turn or a post. The sweep pumps every endpoint behind its room and re-sends
deliveries whose task was lost, so no committed event is missed even if a process dies between
its commit and the enqueue.

A delivery is a signed POST (signing.py) retried with exponential back-off by Celery until a
2xx answer or WEBHOOK_MAX_ATTEMPTS; status, attempts, the last status code and error are kept.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from rooms import metrics
from rooms.models import Message, Room, RoomEvent
from rooms.webhooks.models import EVENT_TYPES, WebhookDelivery, WebhookEndpoint
from rooms.webhooks.signing import headers_signed

log = logging.getLogger(__name__)

_TURN_TYPES = {
    "done": "turn.done",
    "failed": "turn.failed",
    "interrupted": "turn.failed",
    "parked": "turn.parked",
    "cancelled": "turn.cancelled",
}


# --- which rooms have endpoints (the append path asks, so the answer is cached) --------------


class _HookedRooms:
    """The ids of rooms with an enabled endpoint, read at most every WEBHOOK_ROOMS_TTL seconds:
    the append path pays a clock read, not a query (a new endpoint is seen within the TTL, and
    by the sweep in any case)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: frozenset[int] = frozenset()
        self._read_at = float("-inf")

    def has(self, room_id: int) -> bool:
        if time.monotonic() - self._read_at > settings.WEBHOOK_ROOMS_TTL:
            with self._lock:
                if time.monotonic() - self._read_at > settings.WEBHOOK_ROOMS_TTL:
                    ids = WebhookEndpoint.objects.filter(enabled=True).values_list("room_id", flat=True)
                    self._ids = frozenset(ids.distinct())
                    self._read_at = time.monotonic()
        return room_id in self._ids

    def forget(self) -> None:
        self._read_at = float("-inf")


hooked_rooms = _HookedRooms()


def events_appended_on_commit(room_id: int) -> None:
    """Called by every append of room events: pump the room's endpoints once it commits (the
    look-up too waits for the commit: the append holds the room's row until then)."""
    # robust: a broker or database hiccup here is logged, never raised into the post or the turn
    transaction.on_commit(lambda: _pump_if_hooked(room_id), robust=True)


def _pump_if_hooked(room_id: int) -> None:
    if hooked_rooms.has(room_id):
        from rooms.webhooks.tasks import pump_room

        pump_room.delay(room_id)


# --- events to deliveries --------------------------------------------------------------------


def event_type_of(frame: dict[str, Any]) -> str | None:
    """The webhook event a room event is, if it is one."""
    if frame.get("type") == "message" and frame.get("message", {}).get("role") == Message.Role.USER:
        return "message.posted"
    if frame.get("type") == "turn":
        return _TURN_TYPES.get(frame.get("turn", {}).get("status", ""))
    return None


def payload_of(*, room: Room, event: RoomEvent, kind: str, frame: dict[str, Any]) -> dict[str, Any]:
    """What an endpoint receives for one event: a turn's includes its answer's text."""
    data: dict[str, Any] = {}
    if kind == "message.posted":
        message = dict(frame["message"])
        message.pop("html", None)
        data["message"] = message
    else:
        turn = frame["turn"]
        data["turn"] = turn
        if turn.get("message_id"):
            answer = Message.objects.filter(pk=turn["message_id"]).values("id", "content", "status").first()
            data["answer"] = answer
    return {
        "id": event_id_of(room_id=room.pk, seq=event.seq),
        "type": kind,
        "room": {"slug": room.slug, "title": room.title},
        "seq": event.seq,
        "created_at": event.created_at.isoformat(),
        "data": data,
    }


def event_id_of(*, room_id: int, seq: int) -> str:
    return f"evt_{room_id}_{seq}"


def room_pump(*, room_id: int, limit: int = 500) -> list[int]:
    """Turn the room's events past each endpoint's cursor into deliveries; their ids (enqueued
    after commit by the caller). Endpoints pumped elsewhere at the same moment are skipped."""
    created: list[int] = []
    with transaction.atomic():
        endpoints = list(
            WebhookEndpoint.objects.select_for_update(skip_locked=True).filter(room_id=room_id, enabled=True)
        )
        if not endpoints:
            return []
        room = Room.objects.get(pk=room_id)
        since = min(e.cursor_seq for e in endpoints)
        events = list(RoomEvent.objects.filter(room_id=room_id, seq__gt=since).order_by("seq")[:limit])
        now = timezone.now()
        for endpoint in endpoints:
            rows = []
            for event in events:
                if event.seq <= endpoint.cursor_seq:
                    continue
                frame = json.loads(event.frame)
                kind = event_type_of(frame)
                if kind is None or kind not in endpoint.events:
                    continue
                payload = payload_of(room=room, event=event, kind=kind, frame=frame)
                rows.append(
                    WebhookDelivery(
                        endpoint=endpoint,
                        seq=event.seq,
                        event_id=payload["id"],
                        event_type=kind,
                        payload=payload,
                        next_attempt_at=now,
                    )  # fmt: skip
                )
            # no conflict is possible: the endpoint row is locked and its cursor moves with these
            made = WebhookDelivery.objects.bulk_create(rows)
            created += [d.pk for d in made if d.pk is not None]
            if events:
                endpoint.cursor_seq = max(endpoint.cursor_seq, events[-1].seq)
                endpoint.save(update_fields=["cursor_seq"])
    return created


# --- sending ---------------------------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: exponential, capped."""
    return float(min(settings.WEBHOOK_RETRY_BASE * 2 ** max(0, attempts - 1), settings.WEBHOOK_RETRY_MAX))


_client_lock = threading.Lock()
_client: httpx.Client | None = None


def _http() -> httpx.Client:
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(
                timeout=httpx.Timeout(settings.WEBHOOK_TIMEOUT, connect=min(3.0, settings.WEBHOOK_TIMEOUT)),
                follow_redirects=False,
                headers={"user-agent": "roomchat-webhooks/1"},
            )
        return _client


class AddressRefused(Exception):
    """A webhook URL whose host is a private, loopback or link-local address."""


def url_check(url: str) -> None:
    """Refuse URLs that reach into the site's own network (unless WEBHOOK_ALLOW_PRIVATE): a room
    owner must not make the server POST to its neighbours. Checked at registration and before
    every attempt (a name may resolve differently later)."""
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return
    host = httpx.URL(url).host
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise AddressRefused(f"cannot resolve {host}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise AddressRefused(f"{host} is a private address ({address})")


def delivery_attempt(*, delivery_id: int, now: datetime | None = None) -> str:
    """Send a pending delivery once: 'delivered', 'retry' (due again later), 'failed' (out of
    attempts) or 'done' (it was not pending any more)."""
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return "done"
    endpoint = delivery.endpoint
    body = json.dumps(delivery.payload, separators=(",", ":"))
    headers = headers_signed(secret=endpoint.secret, msg_id=delivery.event_id, body=body, now=timezone.now())
    headers["content-type"] = "application/json"
    headers["x-roomchat-event"] = delivery.event_type
    code: int | None = None
    error = ""
    try:
        url_check(endpoint.url)
        response = _http().post(endpoint.url, content=body.encode(), headers=headers)
        code = response.status_code
        if not 200 <= code < 300:
            error = f"HTTP {code}: {response.text[:300]}"
    except (httpx.HTTPError, AddressRefused) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    attempts = delivery.attempts + 1
    now = now or timezone.now()
    fields: dict[str, Any] = {"attempts": attempts, "last_status_code": code}
    if error:  # kept after a later success: the record shows why it took several attempts
        fields["last_error"] = error
    if not error:
        fields |= {"status": WebhookDelivery.Status.DELIVERED, "delivered_at": now, "next_attempt_at": None}
        outcome = "delivered"
    elif attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        fields |= {"status": WebhookDelivery.Status.FAILED, "next_attempt_at": None}
        outcome = "failed"
    else:
        fields["next_attempt_at"] = now + timedelta(seconds=retry_delay(attempts))
        outcome = "retry"
    # compare-and-set on the attempt count: a redelivered task that raced this one writes nothing
    WebhookDelivery.objects.filter(pk=delivery_id, status="pending", attempts=delivery.attempts).update(
        **fields
    )
    metrics.WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
    return outcome


def deliveries_due(*, grace: float) -> list[int]:
    """Pending deliveries due more than `grace` seconds ago: their task was lost (a crash)."""
    before = timezone.now() - timedelta(seconds=grace)
    rows = WebhookDelivery.objects.filter(status="pending", next_attempt_at__lt=before)
    return list(rows.order_by("next_attempt_at").values_list("pk", flat=True)[:500])


def endpoints_behind() -> list[int]:
    """Rooms with an enabled endpoint whose cursor is behind the room's last seq."""
    from django.db.models import F

    rows = WebhookEndpoint.objects.filter(enabled=True, cursor_seq__lt=F("room__last_seq"))
    return list(rows.values_list("room_id", flat=True).distinct()[:500])


def endpoint_create(*, room: Room, user: Any, url: str, events: list[str]) -> WebhookEndpoint:
    """Register a URL for some of the room's events (its owner); starts at the room's next event."""
    from rooms.webhooks.signing import secret_new

    if room.owner_id != user.pk:
        raise PermissionError("only the room's owner registers webhooks")
    url_check(url)
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown or not events:
        raise ValueError(f"events must be some of {', '.join(EVENT_TYPES)}")
    last_seq = Room.objects.values_list("last_seq", flat=True).get(pk=room.pk)
    endpoint = WebhookEndpoint.objects.create(
        room=room,
        url=url,
        secret=secret_new(),
        events=sorted(set(events)),
        cursor_seq=last_seq,
        created_by=user,
    )
    hooked_rooms.forget()
    return endpoint
