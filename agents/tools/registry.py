"""The registry of server tools: every tool a room may switch on, by name."""

from __future__ import annotations

import functools

from django.conf import settings
from django.utils.module_loading import import_string

from agents.tools.base import Tool


@functools.cache
def server_tools() -> dict[str, Tool]:
    """The tools named in settings.AGENT_TOOLS (dotted paths of Tool classes), by name."""
    tools: dict[str, Tool] = {}
    for path in settings.AGENT_TOOLS:
        tool = import_string(path)()
        if tool.name in tools:
            raise ValueError(f"two tools are named {tool.name!r}")
        tools[tool.name] = tool
    return tools


def server_tool(name: str) -> Tool | None:
    return server_tools().get(name)
