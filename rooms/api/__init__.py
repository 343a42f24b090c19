"""The HTTP API: the REST API under /api/ and the OpenAI-compatible door under /v1/, one
OpenAPI schema (/api/openapi.json) and its docs page (/api/docs). docs/api.md is the guide."""

from __future__ import annotations

from ninja import NinjaAPI

from rooms.api.auth import TokenAuth
from rooms.api.endpoints import router as rest_router
from rooms.api.errors import install_handlers
from rooms.api.ingress import router as openai_router

api = NinjaAPI(
    title="Roomchat API",
    version="1",
    description=(
        "Rooms, transcripts, posts that start turns (submissions), turns, tool calls and "
        "approvals, plus an OpenAI-compatible door (`/v1/chat/completions`, `/v1/models`) where "
        "`model` is a room's slug. Authenticate with an API token from the Tokens page: "
        '`Authorization: Bearer rct_...`. Every error is `{"error": {code, message, type, '
        "param, fields?, retry_after?}}` with a stable `code` (docs/api.md lists them); "
        "a refused request stores nothing."
    ),
    auth=TokenAuth(),
    urls_namespace="api",
    openapi_url="/api/openapi.json",
    docs_url="/api/docs",
)
api.add_router("/api/", rest_router)
api.add_router("/v1/", openai_router)
install_handlers(api)
