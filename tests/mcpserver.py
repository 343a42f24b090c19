"""A real MCP server for the tests and the chaos run, built with the SDK's server side.

    python tests/mcpserver.py http PORT     # Streamable HTTP on 127.0.0.1:PORT/mcp
    python tests/mcpserver.py stdio         # over stdin/stdout

Tools: `add` (reads only), `register` (a schema with nested objects), `fail` (answers with an
error), `slow` (sleeps), `grow` (adds the tool `fresh` and sends tools/list_changed), and
`launch` (a side effect: after `seconds` it appends its label to the file MCP_TEST_LOG, so a test
counts how many times each call really ran).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

server = MCPServer("roomchat-test")


class Address(BaseModel):
    city: str
    postcode: str = Field(min_length=1, max_length=12)


class Person(BaseModel):
    name: str
    address: Address


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def register(person: Person, tags: list[str]) -> dict[str, object]:
    """Register a person (an object with a nested address object) with tags."""
    return {"registered": person.name, "city": person.address.city, "tags": tags}


@server.tool()
def fail(why: str) -> str:
    """Always fails, with the reason given."""
    raise ToolError(why)


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the tool `fresh` and tell the client the tool list changed."""
    server.add_tool(lambda: "fresh!", name="fresh", description="A tool that appeared later.")
    await ctx.session.send_tool_list_changed()
    return "grown"


@server.tool()
async def launch(label: str, seconds: float = 0) -> str:
    """Launch something: after `seconds`, record the launch (a side effect)."""
    await asyncio.sleep(seconds)
    log = os.environ.get("MCP_TEST_LOG")
    if log:
        with Path(log).open("a") as f:
            f.write(label + "\n")
    return f"launched {label}"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
