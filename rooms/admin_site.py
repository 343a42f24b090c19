"""The admin site whose index is the moderation dashboard (rooms.admin_dashboard)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse


class ModerationAdminSite(admin.AdminSite):
    """The admin: its first page is the moderation dashboard, then the models as usual."""

    index_template = "admin/moderation_index.html"

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        from rooms.admin_dashboard import dashboard_context

        return super().index(request, {**dashboard_context(), **(extra_context or {})})
