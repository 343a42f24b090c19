"""The Standard Webhooks signature (standardwebhooks.com): HMAC-SHA256 over
`<id>.<timestamp>.<body>` with a per-endpoint secret, in the `webhook-id`, `webhook-timestamp`
and `webhook-signature` headers; a receiver refuses a timestamp more than 5 minutes off."""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from datetime import datetime

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


class SignatureInvalid(Exception):
    """Missing or wrong signature headers, a bad signature, or a stale timestamp."""


def secret_new() -> str:
    """A new signing secret, as Standard Webhooks writes them."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def headers_signed(*, secret: str, msg_id: str, body: str, now: datetime) -> dict[str, str]:
    """The headers that sign `body` as message `msg_id` at `now`."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id=msg_id, timestamp=now, data=body),
    }


def signature_verify(*, secret: str, body: bytes, headers: Mapping[str, str]) -> str:
    """Check `body`'s signature (before anything parses it); the signed message id."""
    wanted = {k: v for k, v in headers.items() if k.lower().startswith("webhook-")}
    try:
        text = body.decode()
        Webhook(secret).verify(text, wanted, json_parse=False)
    except (WebhookVerificationError, UnicodeDecodeError, ValueError, binascii.Error) as exc:
        # ValueError / binascii.Error: a signature that is not "v1,<base64>"
        raise SignatureInvalid(str(exc) or type(exc).__name__) from None
    return {k.lower(): v for k, v in wanted.items()}["webhook-id"]
