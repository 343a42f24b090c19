"""WebSocket authentication: a bearer token for scripts, the session cookie for browsers.

Cookie-authenticated sockets must come from an allowed Origin (the cookie is ambient, so a
foreign page could otherwise use it). A token is not ambient: a token socket may omit Origin.

The middleware only reads the credentials (no database): the consumer checks them with
`socket_user` inside its one database visit per connect (rooms/consumers.py).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest
from django.http.cookie import parse_cookie
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


def session_key(headers: dict[bytes, bytes]) -> str:
    """The session cookie's value, or ''."""
    cookies = parse_cookie(headers.get(b"cookie", b"").decode("latin1"))
    return cookies.get(settings.SESSION_COOKIE_NAME, "")


class RoomAuthMiddleware:
    """The origin check for the WebSocket routes; puts the credentials in the scope
    (`auth_method` plus `auth_token` or `session_key`) for `socket_user` to check."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = dict(scope.get("headers", []))
        origin = headers.get(b"origin")
        token = bearer_token(headers)
        if token is not None:
            if origin is not None and not origin_allowed(origin):
                return await WebsocketDenier()(scope, receive, send)
            scope = dict(scope, auth_method="token", auth_token=token)
            return await self.inner(scope, receive, send)
        if not origin_allowed(origin):
            return await WebsocketDenier()(scope, receive, send)
        scope = dict(scope, auth_method="session", session_key=session_key(headers))
        return await self.inner(scope, receive, send)


def has_credentials(scope: dict[str, Any]) -> bool:
    """Whether the socket presented any (a cheap check before the database)."""
    return bool(scope.get("auth_token") or scope.get("session_key"))


def socket_user(scope: dict[str, Any]) -> tuple[Any, int | None]:
    """(user, token id) for the scope's credentials; AnonymousUser if they are not valid.
    Sync: it reads the database (the token, or the session and its user)."""
    if scope.get("auth_method") == "token":
        found = token_lookup(raw=scope.get("auth_token", ""))
        return found if found else (AnonymousUser(), None)
    key = scope.get("session_key")
    if not key:
        return AnonymousUser(), None
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(key)
    return auth.get_user(request), None
