"""A deliberately misbehaving MCP stdio server (no SDK) for proxy robustness tests.

Modes: ``invalid`` writes a non-JSON line before every answer; ``crash`` dies with exit code 3
in the middle of writing its ``tools/call`` answer; ``oversized`` answers ``tools/call`` with a
result of ``BIG`` bytes of text.
"""

import json
import os
import sys

MODE = sys.argv[1]
BIG = 1_000_000


def send(obj) -> None:
    if MODE == "invalid":
        sys.stdout.write("}{ this line is not JSON\n")
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    method, mid = msg.get("method"), msg.get("id")
    if mid is None:
        continue
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {
            "protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
            "serverInfo": {"name": f"bad-{MODE}", "version": "0"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [
            {"name": "echo", "inputSchema": {"type": "object"}}]}})
    elif method == "tools/call":
        if MODE == "crash":
            sys.stdout.write('{"jsonrpc": "2.0", "id": ')
            sys.stdout.flush()
            os._exit(3)
        text = "x" * BIG if MODE == "oversized" else json.dumps(msg["params"].get("arguments"))
        send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": text}]}})
    else:
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
