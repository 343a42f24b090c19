"""The room owner's page for the room's MCP servers: which of the admin's servers are on, and
whether their side-effecting tools ask a person first."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from agents.mcp.models import McpServer, RoomMcpServer
from rooms.models import Room


def room_mcp_rows(*, room: Room) -> list[dict[str, Any]]:
    """The servers a room may use (availability not off), with the room's choice for each."""
    choices = {c.server_id: c for c in RoomMcpServer.objects.filter(room=room)}
    rows = []
    for server in McpServer.objects.exclude(availability=McpServer.Availability.OFF).order_by("name"):
        choice = choices.get(server.pk)
        on = choice.on if choice else server.availability == McpServer.Availability.DEFAULT
        read_only = set(server.read_only_tools or ())
        tools = [{"name": t.get("name", ""), "description": t.get("description", ""),
                  "read_only": t.get("name") in read_only} for t in server.catalog or []]  # fmt: skip
        rows.append({"server": server, "on": on, "ask_first": choice.ask_first if choice else True,
                     "tools": tools})  # fmt: skip
    return rows


def room_mcp_save(*, room: Room, on: set[int], ask_first: set[int]) -> None:
    """Save the owner's choices (only for servers a room may use: nothing else can be saved)."""
    allowed = McpServer.objects.exclude(availability=McpServer.Availability.OFF).values_list("pk", flat=True)
    with transaction.atomic():
        for server_id in allowed:
            RoomMcpServer.objects.update_or_create(
                room=room, server_id=server_id,
                defaults={"on": server_id in on, "ask_first": server_id in ask_first},
            )  # fmt: skip


def _ids(values: list[str]) -> set[int]:
    return {int(v) for v in values if v.isdigit() and len(v) < 18}


@login_required
def room_mcp(request: HttpRequest, slug: str) -> HttpResponse:
    """The owner's MCP servers page of a room."""
    room = get_object_or_404(Room, slug=slug)
    if room.owner_id != request.user.pk:
        return render(request, "forbidden.html", {"room_title": room.title}, status=403)
    if request.method == "POST":
        room_mcp_save(
            room=room, on=_ids(request.POST.getlist("on")), ask_first=_ids(request.POST.getlist("ask_first"))
        )
        messages.success(request, "MCP servers saved.")
        return redirect("room_mcp", slug=slug)
    return render(request, "room_mcp.html", {"room": room, "rows": room_mcp_rows(room=room)})
