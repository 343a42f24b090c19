"""Request guards that must run before Django reads a request body."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


class Utf8FormsOnly:
    """Refuse form bodies declared in another charset with a 400.

    Django decodes such a body lazily and, when it is not UTF-8, its own CSRF and error pages
    read it again and fail with a 500; refusing it up front keeps the answer a clean 400.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        charset = (request.content_params or {}).get("charset", "utf-8").lower()
        if request.method == "POST" and charset.replace("-", "").replace("_", "") != "utf8":
            return HttpResponseBadRequest("Forms must be sent as UTF-8.")
        return self.get_response(request)
