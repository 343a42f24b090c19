"""The MCP servers of a room, as the worker's connections need them (credentials opened)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.mcp.models import McpServer, RoomMcpServer
from agents.mcp.secrets import secrets_open
from rooms.models import Room


@dataclass(frozen=True)
class ServerConfig:
    """One server's connection settings; `version` changes whenever the admin edits the row."""

    id: int
    name: str
    transport: str
    url: str
    command: str
    args: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict, hash=False, compare=False, repr=False)
    env: dict[str, str] = field(default_factory=dict, hash=False, compare=False, repr=False)
    call_timeout: float = 20.0
    read_only: frozenset[str] = frozenset()
    version: str = ""

    @classmethod
    def of(cls, server: McpServer) -> ServerConfig:
        opened = secrets_open(server.secrets)
        return cls(
            id=server.pk,
            name=server.name,
            transport=server.transport,
            url=server.url,
            command=server.command,
            args=tuple(server.args or ()),
            headers=opened["headers"],
            env=opened["env"],
            call_timeout=server.call_timeout,
            read_only=frozenset(server.read_only_tools or ()),
            version=server.updated_at.isoformat() if server.updated_at else "",
        )


@dataclass(frozen=True)
class RoomServer:
    """A server on in a room, and whether its side-effecting tools ask first there."""

    config: ServerConfig
    ask_first: bool


def room_servers(*, room: Room) -> list[RoomServer]:
    """The servers on in the room: the admin's default ones unless the owner switched them off,
    and the optional ones the owner switched on."""
    choices = {c.server_id: c for c in RoomMcpServer.objects.filter(room=room)}
    out = []
    for server in McpServer.objects.exclude(availability=McpServer.Availability.OFF).order_by("name"):
        choice = choices.get(server.pk)
        on = choice.on if choice is not None else server.availability == McpServer.Availability.DEFAULT
        if on:
            out.append(RoomServer(ServerConfig.of(server), ask_first=choice.ask_first if choice else True))
    return out
