"""django.contrib.admin with the moderation dashboard as its index (INSTALLED_APPS names this)."""

from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class ModerationAdminConfig(AdminConfig):
    default_site = "rooms.admin_site.ModerationAdminSite"
