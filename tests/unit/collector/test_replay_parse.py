"""Replay's line parser and progress bar."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.otlp_calls import Call, request, to_otlp_json
from toolwatch.collector.normalize import Normalizer
from toolwatch.collector.replay import LineError, Parsed, Progress, parse_line

N = Normalizer()


def test_otlp_json_line_and_tool_call_line():
    line = to_otlp_json(request([Call("a", "files", "read_file", 1), Call("a", "files", "list_dir", 2)])).decode()
    got = parse_line(line, N)
    assert [(c.agent_id, c.tool) for c in got.calls] == [("a", "read_file"), ("a", "list_dir")] and got.spans == 2
    got = parse_line(json.dumps({"time_ns": 5, "agent_id": "b", "tool": "t", "server": "s"}), N)
    assert [(c.agent_id, c.token, c.time_ns) for c in got.calls] == [("b", "s/t", 5)]


@pytest.mark.parametrize(
    "line, needle",
    [("{oops", "not valid JSON"), ("[1]", "expected a JSON object"), ('{"resourceSpans": "x"}', "OTLP"),
     ('{"agent_id": "a"}', "missing required field 'time_ns'")],
)
def test_bad_lines_say_why(line, needle):
    with pytest.raises(LineError) as info:
        parse_line(line, N)
    assert needle in str(info.value)


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_any_text_is_parsed_or_a_line_error(text):
    try:
        assert isinstance(parse_line(text, N), Parsed)
    except LineError as exc:
        assert str(exc)


def test_progress_bar_is_plain_text_and_rate_limited():
    t = [0.0]
    out = io.StringIO()
    bar = Progress(1000, out, interval_s=1.0, clock=lambda: t[0])
    t[0] = 0.5
    bar.update(500, 10_000, force=True)
    bar.update(600, 12_000)  # within the interval: not drawn
    t[0] = 2.0
    bar.finish(1000, 40_000)
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert " 50.0%" in text and "100.0%" in text and "20,000 spans/s" in text
    assert "#" * 30 in text
