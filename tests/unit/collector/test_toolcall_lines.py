"""The plain tool-call JSON-lines format: round trip, and every bad input gets a ValueError naming the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.collector.toolcall_lines import toolcall_from_dict, toolcall_to_dict
from toolwatch.detectors.events import ToolCall

names = st.text(min_size=1, max_size=20)
calls = st.builds(
    ToolCall,
    time_ns=st.integers(0, 2**63 - 1),
    agent_id=names,
    tool=names,
    server=st.text(max_size=10),
    session_id=st.text(max_size=10),
    duration_ns=st.integers(0, 10**12),
    args_json=st.text(max_size=30),
    args_bytes=st.integers(0, 10**9),
    args_labels=st.lists(st.text(max_size=8), max_size=3).map(tuple),
    args_sketch=st.lists(st.integers(-(2**31), 2**31), max_size=4).map(tuple),
    result_injection_score=st.floats(0, 1),
    destinations=st.lists(st.text(max_size=8), max_size=3).map(tuple),
)


@given(calls)
def test_round_trip_through_json(call):
    line = json.dumps(toolcall_to_dict(call))
    assert toolcall_from_dict(json.loads(line)) == call


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(json_values, st.dictionaries(st.sampled_from(["time_ns", "agent_id", "tool", "args_labels", "redacted", "score"]), json_values))
def test_arbitrary_json_is_a_call_or_a_value_error(value, mapping):
    for data in (value, mapping, {"time_ns": 1, "agent_id": "a", "tool": "t", **mapping}):
        try:
            call = toolcall_from_dict(data)
        except ValueError as exc:
            assert str(exc)
        else:
            assert isinstance(call, ToolCall) and call.agent_id and call.tool


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"agent_id": "a", "tool": "t"}, "'time_ns'"),
        ({"time_ns": "1", "agent_id": "a", "tool": "t"}, "'time_ns' must be a whole number"),
        ({"time_ns": True, "agent_id": "a", "tool": "t"}, "'time_ns' must be a whole number"),
        ({"time_ns": 1, "agent_id": "", "tool": "t"}, "'agent_id' must not be empty"),
        ({"time_ns": 1, "agent_id": "a", "tool": "t", "args_labels": "secret"}, "'args_labels' must be a JSON array"),
        ({"time_ns": 1, "agent_id": "a", "tool": "t", "colour": "red"}, "unknown field(s) 'colour'"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_errors_name_the_field(data, needle):
    with pytest.raises(ValueError, match=None) as info:
        toolcall_from_dict(data)
    assert needle in str(info.value)


def test_unredacted_arguments_are_dropped():
    raw = {"time_ns": 1, "agent_id": "a", "tool": "t", "args_json": '{"password": "hunter2"}'}
    assert toolcall_from_dict(raw).args_json == ""
    assert toolcall_from_dict({**raw, "redacted": True}).args_json == '{"password": "hunter2"}'
