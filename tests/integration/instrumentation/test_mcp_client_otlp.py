"""A real MCP server and a real ClientSession instrumented with ``instrument_session``, exporting
over real OTLP/HTTP to an in-process receiver: the spans arrive with the schema's attributes."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_test_support import flush
from toolwatch.instrumentation import semconv as sc
from toolwatch.instrumentation.mcp_client import instrument_session

from toolwatch.demo.servers import SECRET_AWS_KEY, SECRET_NOTE, build_notes_server, serve_http

pytestmark = pytest.mark.timeout(60)


def server_params(name: str, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "toolwatch.demo.servers", name, *extra])


async def exercise(session: ClientSession) -> None:
    await session.initialize()
    await session.list_tools()
    await session.call_tool("read_note", {"name": SECRET_NOTE})
    await session.call_tool("read_note", {"name": "missing"})  # tool error (isError)
    unknown = await session.call_tool("no_such_tool", {})  # this SDK answers with isError
    assert unknown.is_error


def check_spans(spans, *, transport: str) -> None:
    lists = [s for s in spans if s.name == "tools/list"]
    calls = [s for s in spans if s.name == "tools/call read_note"]
    (unknown,) = [s for s in spans if s.name == "tools/call no_such_tool"]
    assert len(lists) == 1 and len(calls) == 2
    ok, failed = calls
    for span in (*calls, lists[0], unknown):
        a = span.attributes
        assert span.kind == 3  # SPAN_KIND_CLIENT
        assert a[sc.GEN_AI_AGENT_ID] == "coder-1" and a[sc.GEN_AI_AGENT_NAME] == "Coder"
        assert a[sc.TW_SERVER_NAME] == "demo-notes" and a[sc.TW_SERVER_VERSION] == "1.2.0"
        assert a[sc.MCP_PROTOCOL_VERSION] and a[sc.MCP_SESSION_ID] == lists[0].attributes[sc.MCP_SESSION_ID]
        assert a[sc.NETWORK_TRANSPORT] == transport and a[sc.TW_EMITTER] == "client"
        assert span.resource["service.name"] == "itest-agent"
    defs = json.loads(lists[0].attributes[sc.GEN_AI_TOOL_DEFINITIONS])
    assert {d["name"] for d in defs} == {"list_notes", "read_note", "write_note", "search_notes"}
    assert len(lists[0].attributes[sc.TW_TOOLS_DEFINITION_SHA256]) == 4
    a = ok.attributes
    assert a[sc.MCP_METHOD_NAME] == "tools/call" and a[sc.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert a[sc.GEN_AI_TOOL_NAME] == "read_note" and json.loads(a[sc.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"name": SECRET_NOTE}
    assert a[sc.TW_RESULT_BYTES] > len(SECRET_AWS_KEY) and "secret" in a[sc.TW_RESULT_LABELS]
    assert a[sc.TW_RESULT_FINGERPRINTS] and len(a[sc.TW_TOOL_DEFINITION_SHA256]) == 64
    assert sc.ERROR_TYPE not in a and ok.status_code != 2
    assert failed.attributes[sc.ERROR_TYPE] == "tool_error" and failed.status_code == 2
    assert unknown.status_code == 2 and unknown.attributes[sc.ERROR_TYPE] == "tool_error"
    for span in spans:
        assert SECRET_AWS_KEY not in json.dumps(span.attributes)


async def test_instrumented_stdio_session_exports_schema_spans(sink, provider, redactor):
    async with stdio_client(server_params("notes")) as (r, w):
        async with ClientSession(r, w) as session:
            instrument_session(session, agent_id="coder-1", agent_name="Coder",
                               tracer_provider=provider, redactor=redactor)
            await exercise(session)
    await flush(provider)
    spans = await sink.wait_for(lambda s: len(s) >= 4)
    check_spans(spans, transport="pipe")
    assert all(SECRET_AWS_KEY.encode() not in body for body in sink.raw_bodies)


async def test_instrumented_http_session_exports_schema_spans(sink, provider, redactor):
    async with serve_http(build_notes_server()) as url:
        async with streamable_http_client(url) as (r, w):
            async with ClientSession(r, w) as session:
                inst = instrument_session(session, agent_id="coder-1", agent_name="Coder",
                                          tracer_provider=provider, redactor=redactor)
                inst.info.transport = "tcp"
                assert instrument_session(session, agent_id="other", redactor=redactor) is inst
                await exercise(session)
    await flush(provider)
    spans = await sink.wait_for(lambda s: len(s) >= 4)
    check_spans(spans, transport="tcp")


async def test_uninstrument_restores_the_session(sink, provider, redactor):
    async with serve_http(build_notes_server()) as url:
        async with streamable_http_client(url) as (r, w):
            async with ClientSession(r, w) as session:
                await session.initialize()
                inst = instrument_session(session, agent_id="a", tracer_provider=provider, redactor=redactor)
                await session.call_tool("list_notes", {})
                inst.uninstrument()
                await session.call_tool("list_notes", {})
    await flush(provider)
    await sink.wait_for(lambda s: len(s) >= 1)
    await asyncio.sleep(0)
    assert len(sink.named("tools/call")) == 1


async def test_setup_tracing_honours_standard_otel_environment(sink, monkeypatch, redactor):
    from mcp import Client
    from toolwatch.instrumentation.mcp_client import setup_tracing

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret,x-tenant=blue")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "env-named-agent")
    provider = setup_tracing("ignored-default")
    async with Client(build_notes_server(), mode="legacy") as client:
        instrument_session(client, agent_id="a", tracer_provider=provider, redactor=redactor)
        await client.call_tool("list_notes", {})
    await flush(provider)
    await sink.wait_for(lambda s: any(x.name == "tools/call list_notes" for x in s))
    await asyncio.to_thread(provider.shutdown)
    (span,) = sink.named("tools/call list_notes")
    assert span.resource["service.name"] == "env-named-agent" and span.name == "tools/call list_notes"
    assert sink.headers[0]["authorization"] == "Bearer s3cret" and sink.headers[0]["x-tenant"] == "blue"
