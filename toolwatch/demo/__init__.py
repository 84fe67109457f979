"""The `toolwatch demo`: real MCP servers, simulated agents, the daemon, live in the terminal."""
