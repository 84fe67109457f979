"""A misbehaving server behind the stdio proxy: the client is told, never left hanging."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_test_support import HELPERS, proxy_command
from toolwatch.instrumentation import semconv as sc

pytestmark = pytest.mark.timeout(60)


def params(sink_url: str, mode: str, *extra: str) -> StdioServerParameters:
    argv = proxy_command("--agent-id", "a", "--otlp-endpoint", sink_url, *extra, "--",
                         sys.executable, str(HELPERS / "bad_server.py"), mode)
    env = {**os.environ, "TOOLWATCH_PROXY_STATS": "1", "TOOLWATCH_FINGERPRINT_KEY": "k"}
    return StdioServerParameters(command=argv[0], args=argv[1:], env=env)


async def test_invalid_json_lines_are_forwarded_and_counted(sink):
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params(sink.url, "invalid"), errlog=errlog) as (r, w):
            async with ClientSession(r, w, read_timeout_seconds=15) as session:
                await session.initialize()
                result = await session.call_tool("echo", {"v": 1})
        assert result.content[0].text == '{"v": 1}'
        await sink.wait_for(lambda s: any(x.name == "tools/call echo" for x in s))
        errlog.seek(0)
        counts = re.search(r"messages c2s=\d+ s2c=(\d+), invalid JSON c2s=(\d+) s2c=(\d+)", errlog.read())
    # every answer of the server was preceded by one garbage line: half of what it sent is invalid
    assert counts and counts.group(2) == "0" and int(counts.group(3)) * 2 == int(counts.group(1)) >= 4
    assert sc.ERROR_TYPE not in sink.named("tools/call echo")[0].attributes


async def test_server_crash_mid_call_gives_the_client_an_error_and_a_clear_exit(sink):
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params(sink.url, "crash"), errlog=errlog) as (r, w):
            async with ClientSession(r, w, read_timeout_seconds=15) as session:
                await session.initialize()
                with pytest.raises(MCPError) as caught:
                    await asyncio.wait_for(session.call_tool("echo", {}), 15)
        await sink.wait_for(lambda s: any(x.name == "tools/call echo" for x in s))
        errlog.seek(0)
        log = errlog.read()
    assert "exited with code 3" in str(caught.value)
    assert "exited with code 3" in log and "answered 1 in-flight request(s)" in log
    (span,) = sink.named("tools/call echo")
    assert span.attributes[sc.ERROR_TYPE] == "server_exited" and span.status_code == 2


async def test_oversized_result_passes_through_whole_and_is_measured(sink):
    async with stdio_client(params(sink.url, "oversized", "--max-message-bytes", "65536")) as (r, w):
        async with ClientSession(r, w, read_timeout_seconds=15) as session:
            await session.initialize()
            result = await session.call_tool("echo", {})
    assert result.content[0].text == "x" * 1_000_000
    await sink.wait_for(lambda s: any(x.name == "tools/call echo" for x in s))
    (span,) = sink.named("tools/call echo")
    assert span.attributes[sc.TW_RESULT_BYTES] > 1_000_000
    assert span.attributes[sc.TW_RESULT_LABELS] == ["oversized"]


async def test_server_command_that_cannot_start_is_reported(sink):
    argv = proxy_command("--agent-id", "a", "--otlp-endpoint", sink.url, "--", "/nonexistent/mcp-server")
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(b""), 20)
    assert proc.returncode == 127 and out == b""
    assert b"cannot start the MCP server `/nonexistent/mcp-server`" in err
