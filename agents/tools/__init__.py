"""Server tools: one module per tool, one registry (`agents.tools.registry`)."""
