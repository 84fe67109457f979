"""With the daemon unreachable, the configured fail mode decides, and the proxy says so loudly."""

from __future__ import annotations

import asyncio
import tempfile

import pytest
from enforce_support import closed_port_url, proxy_env
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_test_support import demo_server, proxy_command

from toolwatch.instrumentation.proxy.enforce import ERROR_CODES

pytestmark = pytest.mark.timeout(90)

LOCAL_POLICY = """\
policy:
  subjects:
    - agents: ["down-*"]
      deny_tools: ["search_notes"]
"""


async def run(sink_url: str, *mode: str) -> tuple[list, str]:
    """list_notes then search_notes through an enforcing proxy whose daemon is down; outcomes and stderr."""
    argv = proxy_command("--agent-id", "down-agent", "--otlp-endpoint", sink_url, "--enforce",
                         "--daemon-url", closed_port_url(), *mode, "--", *demo_server("notes"))
    outcomes: list = []
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(StdioServerParameters(command=argv[0], args=argv[1:], env=proxy_env()),
                                errlog=errlog) as (r, w):
            async with ClientSession(r, w, read_timeout_seconds=20) as session:
                await session.initialize()
                await session.list_tools()
                for tool, args in (("list_notes", {}), ("search_notes", {"query": "a"})):
                    try:
                        outcomes.append((await session.call_tool(tool, args)).is_error)
                    except MCPError as exc:
                        outcomes.append(exc.error)
        errlog.seek(0)
        return outcomes, errlog.read()


async def test_fail_open_closed_and_local_policy(sink, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(LOCAL_POLICY)
    (open_out, open_log), (closed_out, closed_log), (local_out, local_log) = await asyncio.gather(
        run(sink.url), run(sink.url, "--fail-closed"), run(sink.url, "--fail-closed", "--policy", str(policy)))

    assert open_out == [False, False]
    assert "unreachable" in open_log and "FAIL-OPEN: calls are allowed WITHOUT enforcement" in open_log
    assert "degraded_decisions: fail-open=2" in open_log

    assert [e.code for e in closed_out] == [ERROR_CODES["unavailable"]] * 2
    assert "fails closed" in closed_out[0].message and closed_out[0].data["decidedBy"] == "fail-closed"
    assert "FAIL-CLOSED: calls are denied" in closed_log and "degraded_decisions: fail-closed=2" in closed_log

    assert local_out[0] is False
    assert local_out[1].code == ERROR_CODES["denied"] and local_out[1].data["decidedBy"] == "local-policy"
    assert f"local policy file {policy}" in local_log and "local-policy=2" in local_log
