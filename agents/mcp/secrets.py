"""The MCP servers' credentials, encrypted with a key from the environment (MCP_SECRET_KEY)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _fernet() -> MultiFernet:
    keys = [k.strip() for k in settings.MCP_SECRET_KEY.split(",") if k.strip()]
    if not keys:
        if not settings.DEBUG:
            raise ImproperlyConfigured("set MCP_SECRET_KEY (a Fernet key) to store MCP servers' credentials")
        # development only: a key derived from SECRET_KEY (itself a dev key when DEBUG is on)
        keys = [
            base64.urlsafe_b64encode(hashlib.sha256(b"mcp:" + settings.SECRET_KEY.encode()).digest()).decode()
        ]
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"MCP_SECRET_KEY is not a Fernet key: {exc}") from None


def secrets_seal(values: dict[str, dict[str, str]]) -> str:
    """{"headers": {...}, "env": {...}} as a token for the database ('' when empty)."""
    if not any(values.values()):
        return ""
    return _fernet().encrypt(json.dumps(values).encode()).decode()


def secrets_open(token: str) -> dict[str, dict[str, str]]:
    """The stored credentials; a token no key opens reads as none (and the server then fails to
    authenticate, which its status shows), so a lost key never breaks the turn."""
    if not token:
        return {"headers": {}, "env": {}}
    try:
        data: Any = json.loads(_fernet().decrypt(token.encode()))
    except (InvalidToken, ValueError):
        return {"headers": {}, "env": {}}
    return {"headers": dict(data.get("headers") or {}), "env": dict(data.get("env") or {})}


def secrets_describe(values: dict[str, dict[str, str]]) -> str:
    """What is stored, by name only (the admin shows this, never a value)."""
    parts = []
    if values.get("headers"):
        parts.append("headers: " + ", ".join(sorted(values["headers"])))
    if values.get("env"):
        parts.append("environment: " + ", ".join(sorted(values["env"])))
    return "; ".join(parts)[:200]
