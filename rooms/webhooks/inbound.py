"""Webhooks in: `POST /hooks/in/<key>/` turns a signed JSON message into a posted message.

The signature (signing.py, the hook's secret) is checked on the raw body before anything parses
it. The sender's event id (a field of the payload the hook names, else the signed `webhook-id`
header) becomes the message's client_id, so a sender's retry stores one message and gets the
same answer; the same id with other text is a conflict. The post goes through
`services.message_post` as the hook's user, who must still be a member of the room.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from rooms import metrics, ratelimit, services
from rooms.selectors import membership_of
from rooms.webhooks.models import InboundHook
from rooms.webhooks.signing import SignatureInvalid, signature_verify

_NS = uuid.UUID("0b1e9f3a-7c1d-4f0e-8a51-2f6c2f7d9e40")


def _error(status: int, code: str, detail: str) -> JsonResponse:
    metrics.WEBHOOKS_IN.labels(outcome=code).inc()
    return JsonResponse({"error": {"code": code, "detail": detail}}, status=status)


def field_at(payload: Any, path: str) -> Any:
    """The value at a dotted path ("message.from.name"; a number indexes a list), or None."""
    value = payload
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def inbound_client_id(*, hook_id: int, event_id: str) -> uuid.UUID:
    """The posted message's client_id: one per hook and sender's event id."""
    return uuid.uuid5(_NS, f"{hook_id}:{event_id}")


@csrf_exempt
@require_POST
def hook_receive(request: HttpRequest, key: str) -> JsonResponse:
    """Verify, then parse, then post: 202 {message_id, seq, duplicate}."""
    hook = InboundHook.objects.select_related("room", "user").filter(key=key, enabled=True).first()
    if hook is None:
        return _error(404, "not_found", "no such hook")
    body = request.body
    if len(body) > settings.WEBHOOK_INBOUND_MAX_BYTES:
        return _error(413, "too_large", f"at most {settings.WEBHOOK_INBOUND_MAX_BYTES} bytes")
    try:
        signed_id = signature_verify(secret=hook.secret, body=body, headers=request.headers)
    except SignatureInvalid as exc:
        return _error(401, "invalid_signature", str(exc))
    try:
        payload = json.loads(body)
    except ValueError:
        return _error(400, "invalid_json", "the body is not JSON")
    text = field_at(payload, hook.text_field)
    if not isinstance(text, str) or not text.strip():
        return _error(400, "invalid_fields", f"{hook.text_field!r} must be a non-empty string")
    event_id = field_at(payload, hook.id_field) if hook.id_field else signed_id
    if not isinstance(event_id, str | int) or not str(event_id):
        return _error(400, "invalid_fields", f"{hook.id_field!r} must be the sender's event id")
    sender = field_at(payload, hook.sender_field) if hook.sender_field else None
    content = f"{str(sender)[:60]}: {text}" if isinstance(sender, str) and sender.strip() else text
    if len(content) > settings.CHAT_MAX_MESSAGE_CHARS:
        return _error(400, "too_large", f"a message has at most {settings.CHAT_MAX_MESSAGE_CHARS} characters")
    if membership_of(room=hook.room, user=hook.user) is None:
        return _error(403, "forbidden", "the hook's user is not a member of the room")
    try:
        posted = services.message_post(
            room=hook.room, author=hook.user, content=content,
            client_id=inbound_client_id(hook_id=hook.pk, event_id=str(event_id)),
        )  # fmt: skip
    except services.ClientIdConflict:
        return _error(409, "conflict", "this event id was already posted with other content")
    except services.RoomBusy as exc:
        return _error(429, "rate_limited", str(exc))
    except ratelimit.RateLimited as exc:  # the user's message quota, shared with their sockets
        response = _error(429, "rate_limited", str(exc))
        response["Retry-After"] = str(max(1, round(exc.retry_after)))
        return response
    metrics.WEBHOOKS_IN.labels(outcome="duplicate" if not posted.created else "posted").inc()
    answer = {"message_id": posted.message_id, "seq": posted.seq, "duplicate": not posted.created}
    return JsonResponse(answer, status=202)
