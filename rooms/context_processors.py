from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def llm_notice(request: HttpRequest) -> dict[str, Any]:
    """Tell every page when answers come from the offline demo model."""
    from django.conf import settings

    if settings.LLM_PROVIDER != "demo":
        return {}
    return {"llm_notice": {"label": "Demo model (offline)", "is_demo": True}}
