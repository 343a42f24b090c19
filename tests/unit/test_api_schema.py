"""The API's OpenAPI schema documents its one error model on every operation, every operation
needs a token, and docs/api.md lists every error code the API can answer."""

from __future__ import annotations

from pathlib import Path

from rooms.api import api
from rooms.api.errors import CODES, ApiFailure

ROOT = Path(__file__).resolve().parents[2]


def _operations() -> list[tuple[str, str, dict]]:
    schema = api.get_openapi_schema(path_prefix="")
    return [(path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def test_every_operation_documents_the_error_model_and_needs_a_token() -> None:
    operations = _operations()
    paths = {path for path, _, _ in operations}
    assert {"/api/rooms/{slug}/messages", "/api/rooms/{slug}/submissions/{message_id}",
            "/v1/chat/completions", "/v1/models"} <= paths  # fmt: skip
    for path, method, op in operations:
        for status in (400, 401, 403, 404, 409, 413, 429, 500, 503):
            ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ApiError"), (path, method, status)
        assert op["security"] == [{"TokenAuth": []}], (path, method)


def test_the_error_body_is_openais_shape_with_a_stable_code() -> None:
    body = ApiFailure("rate_limited", "slow down", retry_after=2.5).body()
    assert body == {"error": {"code": "rate_limited", "message": "slow down", "type": "rate_limit_error",
                              "param": None, "retry_after": 2.5}}  # fmt: skip
    assert ApiFailure("no_such_code", "x").code == "forbidden"  # an unknown code never leaks out


def test_the_docs_list_every_error_code() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [code for code in CODES if f"`{code}`" not in text]
    assert missing == []
