"""MCP servers' tools for the assistant: config, connections, tools (docs/mcp.md)."""
