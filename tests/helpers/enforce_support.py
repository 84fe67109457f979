"""Shared pieces of the enforcement integration tests and the enforcement benchmark."""

from __future__ import annotations

import contextlib
import os
import socket

TOKEN = "enforce-token"
HOOK_SECRET = "hold-hook-secret"
POLICY = {
    "subjects": [{"agents": ["itest-*"], "deny_tools": ["demo-notes/search_notes"]}],
    "arguments": [{"tools": ["*"], "deny_patterns": ["<secret:"], "action": "deny"}],
    "destructive": {"tools": ["demo-notes/write_note"], "action": "hold"},
}


def proxy_env() -> dict[str, str]:
    return {**os.environ, "TOOLWATCH_FINGERPRINT_KEY": "integration-key", "TOOLWATCH_PROXY_STATS": "1",
            "OTEL_BSP_SCHEDULE_DELAY": "50"}


def closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was just released)."""
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
