"""WebSocket authentication: a bearer token for scripts, the session cookie for browsers.

Cookie-authenticated sockets must come from an allowed Origin (the cookie is ambient, so a
foreign page could otherwise use it). A token is not ambient: a token socket may omit Origin.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host

from rooms.services import token_lookup


def origin_allowed(origin: bytes | None) -> bool:
    """Whether an Origin header names one of ALLOWED_HOSTS."""
    if origin is None:
        return False
    try:
        parsed = urlparse(origin.decode("latin1"))
    except (UnicodeDecodeError, ValueError):
        return False
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return False
    domain, _port = split_domain_port(parsed.netloc)
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


def bearer_token(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class RoomAuthMiddleware:
    """Token or session authentication plus the origin check, for the WebSocket routes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.session_stack = AuthMiddlewareStack(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = dict(scope.get("headers", []))
        origin = headers.get(b"origin")
        token = bearer_token(headers)
        if token is not None:
            if origin is not None and not origin_allowed(origin):
                return await WebsocketDenier()(scope, receive, send)
            found = await database_sync_to_async(token_lookup)(raw=token)
            user, token_id = found if found else (AnonymousUser(), None)
            scope = dict(scope, user=user, auth_method="token", token_id=token_id)
            return await self.inner(scope, receive, send)
        if not origin_allowed(origin):
            return await WebsocketDenier()(scope, receive, send)
        scope = dict(scope, auth_method="session")
        return await self.session_stack(scope, receive, send)
