"""OpenInference TOOL spans (Arize openinference-semantic-conventions)."""

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
    destinations: tuple[str, ...] = ("evil.example",)
    sketch: tuple[int, ...] = ()


def test_tool_span_reads_name_and_input_value_not_parameters():
    seen = []
    req = request("svc")
    add_span(
        req,
        {
            "openinference.span.kind": "TOOL",
            "tool.name": "send_email",
            "tool.parameters": json.dumps({"type": "object", "properties": {"to": {"type": "string"}}}),
            "input.value": json.dumps({"to": "a@evil.example"}),
            "input.mime_type": "application/json",
            "session.id": "sess-9",
        },
    )
    out = Normalizer(lambda t: seen.append(t) or Red({"to": "<email>"})).normalize(req)
    (call,) = out.calls
    assert (call.tool, call.session_id, call.source) == ("send_email", "sess-9", "openinference")
    assert seen == [json.dumps({"to": "a@evil.example"})]
    assert call.destinations == ("evil.example",) and "a@evil" not in call.args_json


def test_kind_is_case_insensitive_and_other_kinds_are_skipped():
    req = request()
    add_span(req, {"openinference.span.kind": "tool", "tool.name": "x"})
    add_span(req, {"openinference.span.kind": "LLM", "tool.name": "y", "input.value": "hi"})
    out = Normalizer().normalize(req)
    assert [c.tool for c in out.calls] == ["x"] and out.rejected == 0


def test_tool_span_without_name_is_rejected():
    req = request()
    add_span(req, {"openinference.span.kind": "TOOL"})
    out = Normalizer().normalize(req)
    assert out.rejected == 1 and "tool.name" in out.errors[0]
