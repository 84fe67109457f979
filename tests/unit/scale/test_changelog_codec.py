"""The state changelog's record format: what a member writes, the next owner reads back exactly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolwatch.collector.receivers.state_changelog import AgentRecord, decode_state, encode_state

json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
states = st.dictionaries(st.text(min_size=1, max_size=12), st.dictionaries(st.text(max_size=8), json_value, max_size=4), max_size=4)


@given(agent=st.text(max_size=40), detectors=states, offset=st.none() | st.integers(0, 2**62))
def test_a_record_round_trips_with_its_offset(agent, detectors, offset):
    assert decode_state(encode_state(agent, detectors, offset)) == (agent, AgentRecord(detectors, offset))


def test_a_record_from_an_older_writer_has_no_offset():
    old = json.dumps({"agent": "a", "detectors": {"new_tool": {"calls": 3}}}).encode()
    assert decode_state(old) == ("a", AgentRecord({"new_tool": {"calls": 3}}, None))


@pytest.mark.parametrize("value, says", [
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "agent: str"),
    (b'{"agent": 1, "detectors": {}}', "agent: str"),
    (b'{"agent": "a", "detectors": []}', "detectors"),
    (b'{"agent": "a", "detectors": {}, "offset": -1}', "offset"),
    (b'{"agent": "a", "detectors": {}, "offset": true}', "offset"),
    (b'{"agent": "a", "detectors": {}, "offset": "7"}', "offset"),
])
def test_a_foreign_record_is_refused_with_what_is_wrong(value, says):
    with pytest.raises(ValueError, match=says):
        decode_state(value)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_value_error_only(value):
    try:
        agent, record = decode_state(value)
    except ValueError:
        return
    assert isinstance(agent, str) and isinstance(record.detectors, dict)
