"""IBM ContextForge gateway spans (tools_telemetry_exporter plugin, ``tool.pre_invoke``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from helpers.otlp_build import add_span, request

from toolwatch.collector.normalize import Normalizer


@dataclass
class Red:
    value: object
    labels: tuple[str, ...] = ()
    fingerprints: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    sketch: tuple[int, ...] = ()


def _span(req, **extra):
    attrs = {
        "request_id": "r-1",
        "user": "alice@example.com",
        "target_mcp_server.id": "gw-42",
        "target_mcp_server.name": "github",
        "target_mcp_server.url": "https://mcp.github.example/mcp",
        "tool.name": "github-create-issue",
        "tool.target_tool_name": "create_issue",
        "tool.description": "Create an issue",
        "tool.invocation.args": json.dumps({"title": "hello", "body": "ghp_secret123"}),
        "headers": json.dumps({"Authorization": "Bearer gw-token"}),
    }
    attrs.update(extra)
    add_span(req, attrs, name="tool.pre_invoke")


def test_pre_invoke_span_maps_tool_server_and_redacts_args():
    seen = []
    req = request("mcpgateway")
    _span(req)
    (call,) = Normalizer(lambda t: seen.append(t) or Red({"title": "hello", "body": "<secret>"})).normalize(req).calls
    assert (call.tool, call.server, call.server_address, call.source) == (
        "create_issue",
        "github",
        "https://mcp.github.example/mcp",
        "contextforge",
    )
    assert seen == [json.dumps({"title": "hello", "body": "ghp_secret123"})]
    assert "ghp_secret" not in repr(call) and "gw-token" not in repr(call)


def test_gateway_tool_name_and_server_id_are_fallbacks():
    req = request()
    _span(req, **{"tool.target_tool_name": "", "target_mcp_server.name": ""})
    (call,) = Normalizer().normalize(req).calls
    assert (call.tool, call.server) == ("github-create-issue", "gw-42")


def test_post_invoke_span_is_not_a_call():
    req = request()
    add_span(req, {"request_id": "r-1", "tool.invocation.result": "secret output", "tool.invocation.has_error": False})
    out = Normalizer().normalize(req)
    assert (out.calls, out.rejected) == ([], 0)
