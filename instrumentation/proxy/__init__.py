"""Transparent MCP proxy (stdio and streamable HTTP) that emits a span per tool call."""
