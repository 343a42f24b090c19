"""WebSocket authentication: a bearer token for scripts, the session cookie for browsers.

Cookie-authenticated sockets must come from an allowed Origin, compared exactly (scheme, host
and port: settings.ALLOWED_ORIGINS), since the cookie is ambient and a foreign page could
otherwise use it. A token is not ambient: a token socket may omit Origin.

The middleware only reads the credentials (no database): the consumer checks them with
`socket_user` inside its one database visit per connect (rooms/consumers.py). A token is
checked with one hand-written statement (the ORM's query building cost more than the query,
docs/performance.md); a session goes through Django's own session and auth code unchanged.
"""

from __future__ import annotations

import functools
from importlib import import_module
from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib import auth
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.http import HttpRequest
from django.http.cookie import parse_cookie

from rooms.models import ApiToken
from rooms.services import token_hash

# `last_used_at` is written at most once per this many seconds per token, not on every connect
# (a write, with its WAL flush at commit, per connect for a timestamp the admin shows to the
# minute). The condition is in the statement, so it holds across processes.
TOKEN_TOUCH_EVERY = 60


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normal_origin(origin: str) -> str | None:
    """`scheme://host[:port]` in lower case, the scheme's default port left out; None if it
    is not an http(s) origin."""
    try:
        parsed = urlparse(origin.strip())
        port = parsed.port
    except ValueError:
        return None
    scheme, host = parsed.scheme.lower(), (parsed.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parsed.path not in ("", "/") or parsed.username:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS[scheme] else "")


@functools.cache
def _allowed_origins(origins: tuple[str, ...]) -> frozenset[str]:
    return frozenset(o for o in map(normal_origin, origins) if o)


def origin_allowed(origin: bytes | None) -> bool:
    """Whether an Origin header is exactly one of ALLOWED_ORIGINS (scheme, host and port)."""
    if origin is None:
        return False
    try:
        seen = normal_origin(origin.decode("ascii"))
    except UnicodeDecodeError:
        return False
    return seen is not None and seen in _allowed_origins(tuple(settings.ALLOWED_ORIGINS))


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
        # this frame lives as long as the socket: it keeps no more than the two scopes
        checked = _with_credentials(scope)
        if checked is None:
            return await WebsocketDenier()(scope, receive, send)
        return await self.inner(checked, receive, send)


def _with_credentials(scope: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of the scope with the socket's credentials, or None if its Origin is refused."""
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin")
    token = bearer_token(headers)
    if token is not None:
        if origin is not None and not origin_allowed(origin):
            return None
        return dict(scope, auth_method="token", auth_token=token)
    if not origin_allowed(origin):
        return None
    return dict(scope, auth_method="session", session_key=session_key(headers))


def has_credentials(scope: dict[str, Any]) -> bool:
    """Whether the socket presented any (a cheap check before the database)."""
    return bool(scope.get("auth_token") or scope.get("session_key"))


@functools.cache
def _token_user_sql() -> tuple[str, list[str]]:
    """The token statement and the user fields it returns (built once per process)."""
    user_model = get_user_model()
    fields = list(user_model._meta.concrete_fields)
    qn = connection.ops.quote_name
    columns = ", ".join(f"u.{qn(str(f.column))}" for f in fields)
    tokens, users = qn(ApiToken._meta.db_table), qn(user_model._meta.db_table)
    sql = f"""
        WITH t AS (
            SELECT id, user_id, last_used_at FROM {tokens}
            WHERE key_hash = %(hash)s AND revoked_at IS NULL
        ), touch AS (
            UPDATE {tokens} a SET last_used_at = now()
            FROM t JOIN {users} u ON u.id = t.user_id
            WHERE a.id = t.id AND u.is_active
              AND (t.last_used_at IS NULL
                   OR t.last_used_at < now() - make_interval(secs => %(every)s))
        )
        SELECT t.id, {columns} FROM t JOIN {users} u ON u.id = t.user_id WHERE u.is_active
    """
    return sql, [f.attname for f in fields]


def token_user(raw: str) -> tuple[Any, int] | None:
    """(user, token id) of an active token of an active user, or None: one statement, which
    also records the use (at most once per TOKEN_TOUCH_EVERY seconds per token)."""
    if not raw or len(raw) > 200:
        return None
    sql, names = _token_user_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, {"hash": token_hash(raw), "every": TOKEN_TOUCH_EVERY})
        row = cursor.fetchone()
    if row is None:
        return None
    user = get_user_model().from_db(connection.alias, names, row[1:])
    return user, row[0]


def socket_user(scope: dict[str, Any]) -> tuple[Any, int | None]:
    """(user, token id) for the scope's credentials; AnonymousUser if they are not valid.
    Sync: it reads the database (the token, or the session and its user)."""
    if scope.get("auth_method") == "token":
        found = token_user(scope.get("auth_token", ""))
        return found if found else (AnonymousUser(), None)
    key = scope.get("session_key")
    if not key:
        return AnonymousUser(), None
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(key)
    return auth.get_user(request), None
