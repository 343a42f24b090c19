"""API authentication: the API tokens of the Tokens page, as a bearer key (as the socket takes
them, with the same one-statement check, `rooms.auth.token_user`)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja.security import HttpBearer

from rooms.auth import token_user
from rooms.sockets import on_db_threads

_token_user_on_db = on_db_threads(token_user)


class TokenAuth(HttpBearer):
    """`Authorization: Bearer rct_...`: the token's user, if the token and the user are active."""

    async def authenticate(self, request: HttpRequest, token: str) -> Any:
        found = await _token_user_on_db(token)
        if found is None:
            return None
        user, token_id = found
        request.api_token_id = token_id  # type: ignore[attr-defined]
        return user
