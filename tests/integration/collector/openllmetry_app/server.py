"""A small real MCP server (mcp<2 FastMCP, stdio) whose results carry a recognisable secret."""

from __future__ import annotations

import sys

from mcp.server.fastmcp import FastMCP

SECRET_RESULT = sys.argv[1] if len(sys.argv) > 1 else "RESULT-SECRET"
app = FastMCP("crm")


@app.tool()
def lookup_customer(query: str) -> str:
    """Look a customer up by name or e-mail."""
    return f"customer record for {query}: {SECRET_RESULT}"


@app.tool()
def export_all(destination: str) -> str:
    """Export every customer record to a destination."""
    return f"exported to {destination}: {SECRET_RESULT}"


if __name__ == "__main__":
    app.run("stdio")
