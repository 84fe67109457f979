"""setup_tracing honours the standard OTEL_* variables; instrument_session wraps one instance."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redactor_double import RedactorDouble
from toolwatch.instrumentation import semconv as sc
from toolwatch.instrumentation.mcp_client import instrument_session, setup_tracing


def exporter_of(provider):
    (processor,) = provider._active_span_processor._span_processors
    return processor._batch_processor._exporter


@pytest.mark.parametrize(("endpoint", "environ", "expected"), [
    (None, {}, "http://127.0.0.1:4318/v1/traces"),
    ("http://collector:4318/", {}, "http://collector:4318/v1/traces"),
    ("http://collector:4318/v1/traces", {}, "http://collector:4318/v1/traces"),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"}, "http://env:4318/v1/traces"),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:9999/custom"}, "http://env:9999/custom"),
])
def test_endpoint_resolution(monkeypatch, endpoint, environ, expected):
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    provider = setup_tracing("svc", endpoint=endpoint)
    try:
        assert exporter_of(provider)._endpoint == expected
    finally:
        provider.shutdown()


def test_service_name_default_and_env_override(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    provider = setup_tracing("my-agent", environ={})
    assert provider.resource.attributes["service.name"] == "my-agent"
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    provider = setup_tracing("my-agent")
    assert provider.resource.attributes["service.name"] == "from-env"
    provider.shutdown()


class FakeSession:
    """Just enough of ClientSession for the wrapper: the real one is exercised in integration tests."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.server_info = None
        self.protocol_version = None

    async def send_request(self, *a, **k):  # marks it as a ClientSession-like object
        raise NotImplementedError

    async def call_tool(self, name, arguments=None, **kwargs):
        if self.fail:
            raise self.fail
        return {"content": [{"type": "text", "text": "ok"}], "isError": False}

    async def list_tools(self, **kwargs):
        return {"tools": [{"name": "t"}]}


def provider_and_spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_jsonrpc_error_and_exceptions_become_error_spans_and_still_raise():
    from mcp.shared.exceptions import MCPError

    provider, exporter = provider_and_spans()
    session = FakeSession(fail=MCPError(-32602, "bad params"))
    instrument_session(session, agent_id="a", tracer_provider=provider, redactor=RedactorDouble())
    with pytest.raises(MCPError):
        await session.call_tool("t", {"x": 1})
    session.fail = TimeoutError()
    with pytest.raises(TimeoutError):
        await session.call_tool("t", {})
    mcp_error, timeout = exporter.get_finished_spans()
    assert mcp_error.attributes[sc.ERROR_TYPE] == "-32602" and mcp_error.status.description == "bad params"
    assert timeout.attributes[sc.ERROR_TYPE] == "TimeoutError"


def test_agent_id_is_required():
    with pytest.raises(ValueError, match="agent_id is required"):
        instrument_session(FakeSession(), agent_id="", redactor=RedactorDouble())
