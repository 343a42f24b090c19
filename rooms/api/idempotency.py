"""Idempotency-Key: the same key twice is one effect and the same answer; another request with
the same key is a 409. Keys are the user's own and live `API_IDEMPOTENCY_TTL` seconds.

A post claims its key in a transaction of its own, then posts with a client_id made from the
key (so even a crash between the two, or two racing retries, store one message: the post's own
unique index refuses the second), then stores the answer. The room row is never held for the
key's bookkeeping: the post stays the last statement of its transaction (rooms.events).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from rooms.api.errors import ApiFailure
from rooms.models import ApiIdempotencyKey

_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")  # visible ASCII, as the header allows
_CLIENT_ID_SPACE = uuid.UUID("6f1d0c1e-5b7a-4c36-9a52-6d1f5b0a7e21")


def key_checked(raw: str | None) -> str | None:
    """The request's Idempotency-Key, or None; an unusable one is refused."""
    if raw is None:
        return None
    key = raw.strip()
    if not _KEY.match(key):
        raise ApiFailure("invalid", "Idempotency-Key must be 1-200 visible ASCII characters",
                         param="Idempotency-Key")  # fmt: skip
    return key


def request_fingerprint(*, endpoint: str, body: Any) -> str:
    """What makes two requests the same one: the route and the validated body."""
    text = json.dumps([endpoint, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def key_client_id(*, user_id: int, key: str) -> uuid.UUID:
    """The client_id a keyed post is stored with: the same key, the same message."""
    return uuid.uuid5(_CLIENT_ID_SPACE, f"{int(user_id)}:{key}")


@dataclass
class Claim:
    """A key held for one request: `answer` is the stored (status, body) when it was answered."""

    row: ApiIdempotencyKey
    answer: tuple[int, Any] | None
    created: bool


def key_claim(*, user: Any, key: str, endpoint: str, fingerprint: str) -> Claim:
    """Take the key for this request, or find its stored answer; 409 if it named another."""
    cutoff = timezone.now() - timedelta(seconds=settings.API_IDEMPOTENCY_TTL)
    _keys_expire(user=user, cutoff=cutoff)
    for _ in range(3):
        row = ApiIdempotencyKey.objects.filter(user=user, key=key).first()
        if row is not None and row.created_at < cutoff:
            ApiIdempotencyKey.objects.filter(pk=row.pk, created_at=row.created_at).delete()
            row = None
        if row is None:
            try:
                with transaction.atomic():
                    row = ApiIdempotencyKey.objects.create(
                        user=user, key=key, endpoint=endpoint, fingerprint=fingerprint
                    )
            except IntegrityError:  # a concurrent request took it first: look again
                continue
            return Claim(row, None, created=True)
        if row.endpoint != endpoint or row.fingerprint != fingerprint:
            raise ApiFailure(
                "idempotency_conflict",
                "this Idempotency-Key was already used for a different request",
                param="Idempotency-Key",
            )
        if row.response is not None and row.status_code is not None:
            return Claim(row, (row.status_code, row.response), created=False)
        return Claim(row, None, created=False)  # an earlier try stored no answer: run again
    raise ApiFailure("conflict", "the Idempotency-Key is in use by a concurrent request; retry")


def _keys_expire(*, user: Any, cutoff: Any) -> None:
    """Forget some of the user's expired keys (a few per claim: the table stays small without a
    sweep of its own)."""
    expired = ApiIdempotencyKey.objects.filter(user=user, created_at__lt=cutoff).values_list("pk", flat=True)
    ApiIdempotencyKey.objects.filter(pk__in=list(expired[:50])).delete()


def key_answer(*, claim: Claim, status: int, body: Any) -> tuple[int, Any]:
    """Store the answer every later request with this key gets, unless a racing request with
    the same key stored one first; the stored answer (so racing requests answer the same)."""
    ApiIdempotencyKey.objects.filter(pk=claim.row.pk, response__isnull=True).update(
        status_code=status, response=body
    )
    stored = ApiIdempotencyKey.objects.filter(pk=claim.row.pk).values_list("status_code", "response").first()
    if stored is None or stored[1] is None or stored[0] is None:
        return status, body
    return int(stored[0]), stored[1]


def key_release(*, claim: Claim) -> None:
    """The request was refused and stored nothing: forget the key (it may be used again)."""
    if claim.created:
        ApiIdempotencyKey.objects.filter(pk=claim.row.pk, response__isnull=True).delete()
