"""The MCP servers in the admin: the only place a server is added (a stdio server runs a command
on the workers). Credentials are write-only: typed once, stored encrypted, never shown again."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ImproperlyConfigured
from django.db.models import QuerySet
from django.http import HttpRequest

from agents.mcp.config import ServerConfig
from agents.mcp.models import McpServer, RoomMcpServer
from agents.mcp.secrets import secrets_describe, secrets_open, secrets_seal

_HEADER = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*:\s*(.*)$")
_ENV = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def _pairs(text: str, pattern: re.Pattern[str], what: str) -> dict[str, str]:
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = pattern.match(line.strip())
        if match is None:
            raise forms.ValidationError(f"line {n} is not {what}")
        out[match[1]] = match[2]
    return out


class McpServerForm(forms.ModelForm):
    url = forms.URLField(
        required=False,
        max_length=500,
        assume_scheme="https",
        help_text="Streamable HTTP: the endpoint, e.g. https://mcp.example.com/mcp",
    )
    headers = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "autocomplete": "off"}),
        help_text="Streamable HTTP: 'Name: value', one a line (e.g. Authorization: Bearer ...). "
        "Stored encrypted, never shown again; leave empty to keep what is stored.",
    )
    environment = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "autocomplete": "off"}),
        help_text="stdio: 'KEY=value', one a line, added to the command's environment. Stored "
        "encrypted, never shown again; leave empty to keep what is stored.",
    )
    clear_credentials = forms.BooleanField(
        required=False, help_text="Forget the stored headers and environment."
    )

    class Meta:
        model = McpServer
        exclude = ["secrets", "secrets_summary", "catalog", "catalog_at"]

    def clean_headers(self) -> dict[str, str]:
        return _pairs(self.cleaned_data.get("headers") or "", _HEADER, "'Name: value'")

    def clean_environment(self) -> dict[str, str]:
        return _pairs(self.cleaned_data.get("environment") or "", _ENV, "'KEY=value'")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("headers") or data.get("environment"):
            try:  # no key (or a bad one): say so on the form rather than fail the save
                secrets_seal({"headers": {"check": "x"}, "env": {}})
            except ImproperlyConfigured as exc:
                self.add_error("headers" if data.get("headers") else "environment", str(exc))
        return data

    def save(self, commit: bool = True) -> Any:
        server = super().save(commit=False)
        stored = secrets_open(server.secrets)
        if self.cleaned_data.get("clear_credentials"):
            stored = {"headers": {}, "env": {}}
        if self.cleaned_data.get("headers"):
            stored["headers"] = self.cleaned_data["headers"]
        if self.cleaned_data.get("environment"):
            stored["env"] = self.cleaned_data["environment"]
        server.secrets = secrets_seal(stored)
        server.secrets_summary = secrets_describe(stored)
        if commit:
            server.save()
        return server


@admin.register(McpServer)
class McpServerAdmin(admin.ModelAdmin):
    form = McpServerForm
    list_display = ["name", "transport", "availability", "tool_count", "catalog_at", "updated_at"]
    list_filter = ["transport", "availability"]
    readonly_fields = ["secrets_summary", "known_tools", "catalog_at"]
    actions = ["connect_now"]

    @admin.display(description="tools")
    def tool_count(self, obj: McpServer) -> int:
        return len(obj.catalog or [])

    @admin.display(description="tools the server listed (the names to mark read-only)")
    def known_tools(self, obj: McpServer) -> str:
        return ", ".join(t.get("name", "?") for t in obj.catalog or []) or "(not connected yet)"

    @admin.action(description="Connect now and read the tool list")
    def connect_now(self, request: HttpRequest, queryset: QuerySet[McpServer]) -> None:
        from agents.mcp.manager import McpManager

        manager = McpManager()  # a short-lived one: this is the web process, not a worker
        try:
            catalogs = manager.catalogs([ServerConfig.of(s) for s in queryset], wait=10)
        finally:
            manager.close()
        for catalog in catalogs:
            if catalog.tools is None:
                self.message_user(request, f"{catalog.name}: {catalog.error}", messages.ERROR)
            else:
                self.message_user(request, f"{catalog.name}: {len(catalog.tools)} tools", messages.SUCCESS)


@admin.register(RoomMcpServer)
class RoomMcpServerAdmin(admin.ModelAdmin):
    list_display = ["room", "server", "on", "ask_first"]
    list_filter = ["server", "on"]
    raw_id_fields = ["room"]
