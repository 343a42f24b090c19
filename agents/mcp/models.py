"""MCP servers the assistant may use: configured site-wide in the admin, switched on per room."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

from rooms.models import Room

# A server's name prefixes its tools' names (`name__tool`), which the model sees: short, and
# never two underscores in a row, so the prefix always splits off cleanly.
SERVER_NAME = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]|_(?!_)){0,23}$",
    "Lower-case letters, digits, '-' and single '_', at most 24 characters.",
)


class McpServer(models.Model):
    """One MCP server: how to reach it, who may use it, which of its tools only read."""

    class Transport(models.TextChoices):
        HTTP = "http", "Streamable HTTP (a URL)"
        STDIO = "stdio", "stdio (runs a command on the worker)"

    class Availability(models.TextChoices):
        OFF = "off", "Off everywhere"
        OPTIONAL = "optional", "Room owners may switch it on"
        DEFAULT = "default", "On in every room unless its owner switches it off"

    name = models.CharField(max_length=24, unique=True, validators=[SERVER_NAME])
    title = models.CharField(max_length=120, blank=True)
    transport = models.CharField(max_length=8, choices=Transport.choices, default=Transport.HTTP)
    url = models.URLField(max_length=500, blank=True, help_text="Streamable HTTP: the endpoint, e.g. /mcp")
    command = models.CharField(max_length=500, blank=True, help_text="stdio: the executable to run")
    args = models.JSONField(default=list, blank=True, help_text="stdio: its arguments, a JSON list")
    availability = models.CharField(max_length=12, choices=Availability.choices, default=Availability.OFF)
    # The server's own names of tools that only read: they run without asking and may be run
    # again after a crash. Every other tool counts as side-effecting (ask first, never re-run).
    # The server's own annotations (readOnlyHint) are not trusted for this: only the admin's say.
    read_only_tools = models.JSONField(default=list, blank=True)
    call_timeout = models.FloatField(default=20.0, help_text="Seconds one call may take")
    # Fernet token of {"headers": {...}, "env": {...}} (agents.mcp.secrets): never shown again,
    # never sent to a client; decrypted only in the worker that connects.
    secrets = models.TextField(blank=True, default="")
    secrets_summary = models.CharField(max_length=200, blank=True, default="")  # names only, no values
    # The last tool list a worker read (names, descriptions, schemas): the admin and the room
    # settings page show it; turns use the live list of their own process.
    catalog = models.JSONField(default=list, blank=True)
    catalog_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)  # a worker reconnects when it changes

    class Meta:
        app_label = "agents"
        verbose_name = "MCP server"
        constraints = [
            models.CheckConstraint(condition=models.Q(call_timeout__gt=0), name="mcpserver_timeout_pos"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.transport == self.Transport.HTTP and not self.url:
            raise ValidationError({"url": "A Streamable HTTP server needs its URL."})
        if self.transport == self.Transport.STDIO and not self.command:
            raise ValidationError({"command": "A stdio server needs the command that starts it."})
        if not isinstance(self.args, list) or not all(isinstance(a, str) for a in self.args):
            raise ValidationError({"args": "A JSON list of strings."})
        if not isinstance(self.read_only_tools, list) or not all(
            isinstance(a, str) for a in self.read_only_tools
        ):
            raise ValidationError({"read_only_tools": "A JSON list of tool names."})


class RoomMcpServer(models.Model):
    """A room owner's choice for one server: on or off in the room, and whether its
    side-effecting tools ask a person first (they do unless the owner says otherwise)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="mcp_choices")
    server = models.ForeignKey(McpServer, on_delete=models.CASCADE, related_name="room_choices")
    on = models.BooleanField(default=True)
    ask_first = models.BooleanField(default=True)

    class Meta:
        app_label = "agents"
        constraints = [models.UniqueConstraint(fields=["room", "server"], name="roommcp_room_server_unique")]

    def __str__(self) -> str:
        return f"{self.server} in room {self.room_id}: {'on' if self.on else 'off'}"
