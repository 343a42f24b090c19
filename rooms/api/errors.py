"""The API's one error model: `{"error": {code, message, type, ...}}`, with stable codes.

The shape is OpenAI's error object (`message`, `type`, `param`, `code`) plus our `fields` and
`retry_after`, so the official OpenAI clients show our messages as they show OpenAI's, and the
REST API and the OpenAI-compatible door answer errors alike. Every error response also says
whether a retry may help (`x-should-retry`, which the OpenAI clients obey): only a rate limit
or a brief outage; a retry of anything else would get the same answer, or post again.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError

log = logging.getLogger(__name__)

# code -> (HTTP status, OpenAI's error `type`). The codes are the contract; docs/api.md lists them.
CODES: dict[str, tuple[int, str]] = {
    "invalid": (400, "invalid_request_error"),
    "bad_json": (400, "invalid_request_error"),
    "unsupported": (400, "invalid_request_error"),
    "no_answer": (400, "invalid_request_error"),
    "unauthenticated": (401, "authentication_error"),
    "forbidden": (403, "permission_error"),
    # the room's moderation (the socket's codes for the same refusals)
    "locked": (403, "permission_error"),
    "read_only": (403, "permission_error"),
    "muted": (403, "permission_error"),
    "not_found": (404, "not_found_error"),
    "conflict": (409, "conflict_error"),
    "idempotency_conflict": (409, "conflict_error"),
    "turn_cancelled": (409, "conflict_error"),
    "too_large": (413, "invalid_request_error"),
    "rate_limited": (429, "rate_limit_error"),
    "internal": (500, "api_error"),
    "turn_failed": (502, "api_error"),
    "turn_interrupted": (502, "api_error"),
    "unavailable": (503, "api_error"),
}
_RETRYABLE = {"rate_limited", "unavailable"}


class FieldError(Schema):
    loc: list[str | int]
    msg: str


class ErrorBody(Schema):
    code: str
    message: str
    type: str
    param: str | None = None
    fields: list[FieldError] | None = None
    retry_after: float | None = None


class ApiError(Schema):
    """Every error the API answers (any status >= 400)."""

    error: ErrorBody


class ApiFailure(Exception):
    """A refused request: `code` is one of CODES; nothing was stored."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        fields: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code if code in CODES else "forbidden"
        self.message = message
        self.param = param
        self.fields = fields
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return CODES[self.code][0]

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "type": CODES[self.code][1]}
        error["param"] = self.param
        if self.fields is not None:
            error["fields"] = self.fields
        if self.retry_after is not None:
            error["retry_after"] = round(max(self.retry_after, 0.01), 2)
        return {"error": error}


def failure_response(api: NinjaAPI, request: HttpRequest, failure: ApiFailure) -> HttpResponse:
    response = api.create_response(request, failure.body(), status=failure.status)
    response["x-should-retry"] = "true" if failure.code in _RETRYABLE else "false"
    if failure.retry_after is not None:
        response["Retry-After"] = str(max(1, round(failure.retry_after)))
    if failure.code == "unauthenticated":
        response["WWW-Authenticate"] = "Bearer"
    return response


def validation_failure(errors: list[dict[str, Any]]) -> ApiFailure:
    """Ninja's (pydantic's) validation errors as one `invalid` (or `bad_json`) failure."""
    fields = [
        {"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")}
        for e in errors[:20]
    ]
    if any(e.get("type") == "json_invalid" for e in errors):
        return ApiFailure("bad_json", "the body is not valid JSON", fields=fields)
    first = fields[0] if fields else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"][1:]) or "request"
    return ApiFailure("invalid", f"{where}: {first['msg']}", param=where, fields=fields)


def install_handlers(api: NinjaAPI) -> None:
    """Every error the API can answer goes out in the one model."""

    def on_failure(request: HttpRequest, exc: Any) -> HttpResponse:
        return failure_response(api, request, exc)

    def on_validation(request: HttpRequest, exc: Any) -> HttpResponse:
        return failure_response(api, request, validation_failure(list(exc.errors)))

    def on_auth(request: HttpRequest, exc: Any) -> HttpResponse:
        message = "send an API token: Authorization: Bearer rct_... (create one on the Tokens page)"
        return failure_response(api, request, ApiFailure("unauthenticated", message))

    def on_http(request: HttpRequest, exc: Any) -> HttpResponse:
        code = next((c for c, (status, _) in CODES.items() if status == exc.status_code), "invalid")
        if str(exc).startswith("Cannot parse request body"):  # ninja's words for a body not JSON
            code = "bad_json"
        return failure_response(api, request, ApiFailure(code, str(exc)))

    def on_404(request: HttpRequest, exc: Any) -> HttpResponse:
        return failure_response(api, request, ApiFailure("not_found", str(exc) or "not found"))

    def on_other(request: HttpRequest, exc: Any) -> HttpResponse:
        # A refusal raised by a service with a wire code of its own (a turn action's
        # TurnRefused, a moderation check): its code and text, as the socket would send them.
        code = getattr(exc, "code", None)
        if isinstance(code, str) and code in CODES and code != "internal":
            retry_after = getattr(exc, "retry_after", None)  # slow mode's wait, say
            failure = ApiFailure(
                code, str(exc), retry_after=retry_after if isinstance(retry_after, float) else None
            )
            return failure_response(api, request, failure)
        if isinstance(exc, OperationalError | InterfaceError):  # the database is away for a moment
            log.warning("API request %s %s: database unavailable: %s", request.method, request.path, exc)
            return failure_response(
                api, request, ApiFailure("unavailable", "the database is unavailable; retry")
            )
        log.exception("API request %s %s failed", request.method, request.path)
        return failure_response(api, request, ApiFailure("internal", "internal error (logged on the server)"))

    api.add_exception_handler(ApiFailure, on_failure)
    api.add_exception_handler(ValidationError, on_validation)
    api.add_exception_handler(AuthenticationError, on_auth)
    api.add_exception_handler(HttpError, on_http)
    api.add_exception_handler(Http404, on_404)
    api.add_exception_handler(Exception, on_other)
