"""MCP tools as the agent loop's tools, namespaced `server__tool`. Each counts as side-effecting
(asks first by default, never run again after a crash) unless the admin marked it read-only."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from agents.mcp.config import RoomServer, ServerConfig, room_servers
from agents.mcp.manager import McpCallFailed, McpManager, McpOutcomeUnknown, McpUnavailable, mcp_manager
from agents.tools.base import Tool, ToolContext, ToolError, ToolOutcomeUnknown
from rooms.models import Room

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
NAME_MAX = 64  # what the model's tool names may be (and ToolCall.name holds)
DESCRIPTION_MAX = 1024


def tool_name(server: str, tool: str) -> str:
    """The name the model sees: `server__tool`, in the characters tool names allow."""
    return f"{server}__{_UNSAFE.sub('_', tool)}"[:NAME_MAX]


class McpTool(Tool):
    """One tool of an MCP server, called through the process's connection manager."""

    def __init__(
        self, config: ServerConfig, entry: dict[str, Any], manager: McpManager | None = None
    ) -> None:
        self.config = config
        self.manager = manager
        self.remote_name = entry["name"]
        self.name = tool_name(config.name, self.remote_name)
        description = (entry.get("description") or "").strip()
        self.description = f"[{config.name}] {description}"[:DESCRIPTION_MAX]
        schema = entry.get("input_schema") or {}
        self.parameters = schema if isinstance(schema, dict) and schema.get("type") == "object" else {
            "type": "object", "properties": {}}  # fmt: skip
        read_only = self.remote_name in config.read_only
        self.side_effects = not read_only
        self.idempotent = read_only

    def run(self, ctx: ToolContext, args: dict[str, Any]) -> Any:
        """Call the tool; its result as JSON, or ToolError / ToolOutcomeUnknown."""
        try:
            result = (self.manager or mcp_manager()).call(
                self.config, self.remote_name, args, retry_lost=self.idempotent
            )
        except McpUnavailable as exc:
            raise ToolError(
                f"the MCP server {self.config.name} is unavailable ({exc}); the call was not sent"
            ) from None
        except McpCallFailed as exc:
            raise ToolError(f"the MCP server {self.config.name} refused the call: {exc}") from None
        except McpOutcomeUnknown as exc:
            if self.side_effects:
                raise ToolOutcomeUnknown(f"{exc}: it may or may not have taken effect") from None
            raise ToolError(str(exc)) from None
        output = result_output(result)
        if result.is_error:
            raise ToolError(output if isinstance(output, str) else str(output)[:2000] or "the tool failed")
        return output


def result_output(result: Any) -> Any:
    """A CallToolResult as stored JSON: its structured content if it has some, its text if it
    is only text, else its content blocks (binary data replaced by its size)."""
    if result.structured_content is not None and not result.is_error:
        return result.structured_content
    blocks = list(result.content or [])
    if all(getattr(b, "type", "") == "text" for b in blocks):
        return "\n".join(b.text for b in blocks)
    out = []
    for block in blocks:
        data = block.model_dump(mode="json", by_alias=True, exclude_none=True)
        for key in ("data", "blob"):
            if isinstance(data.get(key), str):
                data[key] = f"<{len(data[key]) * 3 // 4} bytes, not shown>"
        out.append(data)
    return out


@dataclass
class RoomMcpTools:
    """The MCP tools of a room for one turn, and what the model is told about missing ones."""

    tools: dict[str, McpTool] = field(default_factory=dict)
    ask_first: set[str] = field(default_factory=set)
    notices: list[str] = field(default_factory=list)


def mcp_tools_for_turn(
    *, room: Room, taken: set[str], heartbeat: Callable[[], None] | None = None
) -> RoomMcpTools:
    """The tools of the room's servers that are up, waiting MCP_CONNECT_WAIT at most for one
    that is starting; a server that is down is left out and the model is told."""
    out = RoomMcpTools()
    servers: list[RoomServer] = room_servers(room=room)
    if not servers:
        return out
    catalogs = mcp_manager().catalogs(
        [s.config for s in servers], wait=settings.MCP_CONNECT_WAIT, heartbeat=heartbeat
    )
    by_name = {s.config.name: s for s in servers}
    for catalog in catalogs:
        server = by_name[catalog.name]
        if catalog.tools is None:
            out.notices.append(
                f"The tools of the MCP server {catalog.name!r} are unavailable in this turn "
                f"(the server cannot be reached: {catalog.error}). Do not try to call them; tell the "
                "person if they needed them."
            )
            continue
        for entry in catalog.tools:
            tool = McpTool(server.config, entry)
            if tool.name in taken or tool.name in out.tools:
                log.warning("MCP tool %s left out: its name is taken", tool.name)
                continue
            out.tools[tool.name] = tool
            if server.ask_first and tool.side_effects:
                out.ask_first.add(tool.name)
    return out
