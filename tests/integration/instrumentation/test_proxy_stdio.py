"""The stdio proxy in front of a real MCP server: every byte passes unchanged, spans arrive."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from mcp_test_support import demo_server, proxy_command
from toolwatch.instrumentation import semconv as sc

from toolwatch.demo.servers import SECRET_AWS_KEY, SECRET_NOTE, build_notes_server

pytestmark = pytest.mark.timeout(60)

RAW_SESSION = [
    {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    {"jsonrpc": "2.0", "id": "two", "method": "tools/call", "params": {"name": "read_note", "arguments": {"name": "todo"}}},
    "{this is not json",  # a misbehaving client line: forwarded as-is (this server ignores it)
    {"jsonrpc": "2.0", "id": 3, "method": "ping"},
    {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "read_note", "arguments": {"name": "nope"}}},
]
EXPECTED_ANSWERS = 5


def proxy_env(sink_url: str) -> dict[str, str]:
    return {**os.environ, "TOOLWATCH_FINGERPRINT_KEY": "integration-key", "TOOLWATCH_PROXY_STATS": "1",
            "OTEL_BSP_SCHEDULE_DELAY": "50"}


async def raw_exchange(argv: list[str], env: dict[str, str]) -> tuple[list[bytes], bytes]:
    """Send RAW_SESSION line by line; return the answer lines and stderr."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    answers: list[bytes] = []
    for message in RAW_SESSION:
        line = message.encode() if isinstance(message, str) else json.dumps(message).encode()
        proc.stdin.write(line + b"\n")
        await proc.stdin.drain()
        if isinstance(message, dict) and "id" in message:
            answers.append(await asyncio.wait_for(proc.stdout.readline(), 20))
    proc.stdin.close()
    rest = await asyncio.wait_for(proc.stdout.read(), 20)
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert rest == b""
    return answers, stderr


async def test_raw_bytes_through_the_proxy_equal_direct(sink):
    env = proxy_env(sink.url)
    (direct, _), (proxied, stderr) = await asyncio.gather(
        raw_exchange(demo_server("notes"), env),
        raw_exchange(proxy_command("--agent-id", "raw-agent", "--otlp-endpoint", sink.url,
                                   "--", *demo_server("notes")), env),
    )
    assert proxied == direct
    assert len(direct) == EXPECTED_ANSWERS and json.loads(direct[3]) == {"jsonrpc": "2.0", "id": 3, "result": {}}
    assert b"invalid JSON c2s=1" in stderr
    spans = await sink.wait_for(lambda s: len(s) >= 3)
    by_id = {s.attributes.get(sc.JSONRPC_REQUEST_ID): s for s in spans}
    assert by_id["1"].name == "tools/list" and by_id["two"].name == "tools/call read_note"
    assert by_id["4"].attributes[sc.ERROR_TYPE] == "tool_error"
    for span in spans:
        assert span.attributes[sc.GEN_AI_AGENT_ID] == "raw-agent" and span.attributes[sc.TW_EMITTER] == "proxy"
        assert span.attributes[sc.TW_SERVER_NAME] == "demo-notes" and span.attributes[sc.NETWORK_TRANSPORT] == "pipe"
        assert span.attributes[sc.MCP_PROTOCOL_VERSION] == "2025-11-25" and span.resource["service.name"] == "toolwatch-proxy"
        assert span.end_ns >= span.start_ns


CALLS = [("read_note", {"name": SECRET_NOTE}), ("list_notes", {}), ("write_note", {"name": "n", "text": "t"}),
         ("search_notes", {"query": "pr"}), ("read_note", {"name": "missing"})]


async def call_all(session) -> list[str]:
    out = [(await session.list_tools()).model_dump_json()]
    for name, args in CALLS:
        out.append((await session.call_tool(name, args)).model_dump_json())
    return out


async def test_mcp_client_sees_identical_results_through_the_proxy(sink):
    # direct: the same server in-process (the raw-bytes test above compares two subprocesses)
    async with Client(build_notes_server(), mode="legacy") as client:
        direct = await call_all(client.session)
    argv = proxy_command("--agent-id", "coder-1", "--agent-name", "Coder", "--otlp-endpoint", sink.url,
                         "--", *demo_server("notes"))
    async with stdio_client(StdioServerParameters(command=argv[0], args=argv[1:], env=proxy_env(sink.url))) as (r, w):
        async with ClientSession(r, w) as session:
            await session.initialize()
            proxied = await call_all(session)
    assert proxied == direct
    spans = await sink.wait_for(lambda s: len(s) >= 6)
    read, missing = sink.named("tools/call read_note")
    assert missing.attributes[sc.ERROR_TYPE] == "tool_error"
    assert read.attributes[sc.GEN_AI_AGENT_NAME] == "Coder"
    assert "secret" in read.attributes[sc.TW_RESULT_LABELS] and read.attributes[sc.TW_RESULT_FINGERPRINTS]
    assert all(SECRET_AWS_KEY.encode() not in body for body in sink.raw_bodies)
    assert len({s.attributes[sc.MCP_SESSION_ID] for s in spans}) == 1
