"""An MCP client instrumented by OpenLLMetry (opentelemetry-instrumentation-mcp), exporting OTLP/HTTP.

Run in the separate .venv-openllmetry (the instrumentation patches mcp<2 only):
    client.py OTLP_URL SECRET_ARG SECRET_RESULT
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.mcp import McpInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


async def main(url: str, secret_arg: str, secret_result: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "ollm-agent"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    trace.set_tracer_provider(provider)
    McpInstrumentor().instrument()

    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    server = StdioServerParameters(command=sys.executable, args=[str(Path(__file__).with_name("server.py")), secret_result])
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            assert {t.name for t in listed.tools} == {"lookup_customer", "export_all"}
            for _ in range(3):
                res = await session.call_tool("lookup_customer", {"query": secret_arg})
                assert secret_result in res.content[0].text
            await session.call_tool("export_all", {"destination": f"https://{secret_arg}.example/upload"})
    provider.force_flush()
    provider.shutdown()
    print("client done")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
