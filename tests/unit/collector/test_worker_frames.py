"""The OTLP worker frames: ToolCall / ToolListing -> frame -> equal objects, whatever the field values."""

from __future__ import annotations

import dataclasses
import marshal
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolwatch.collector.normalize import Normalized
from toolwatch.collector.receivers import worker_frames as wf
from toolwatch.detectors.events import ToolCall, ToolDefinition, ToolListing

# Any str, lone surrogates included (what a span's attribute may carry after surrogateescape-like decoding).
texts = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()), max_size=40)
ints = st.integers(min_value=-(2**70), max_value=2**70)
str_tuples = st.lists(texts, max_size=4).map(tuple)
int_tuples = st.lists(ints, max_size=6).map(tuple)
floats = st.floats(allow_nan=False)
json_values = st.recursive(
    st.none() | st.booleans() | ints | floats | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)

calls = st.builds(
    ToolCall,
    time_ns=ints, agent_id=texts, tool=texts, server=texts, session_id=texts, duration_ns=ints, trace_id=texts,
    span_id=texts, request_id=texts, agent_name=texts, server_address=texts, error_type=texts, args_json=texts,
    args_bytes=ints, result_bytes=ints, args_labels=str_tuples, result_labels=str_tuples,
    args_fingerprints=str_tuples, result_fingerprints=str_tuples, args_sketch=int_tuples, result_sketch=int_tuples,
    result_injection_score=floats, destinations=str_tuples, definition_sha256=texts, source=texts,
)  # fmt: skip
definitions = st.builds(
    ToolDefinition, name=texts, description=texts, input_schema=json_values, output_schema=json_values,
    annotations=json_values, title=texts,
)  # fmt: skip
listings = st.builds(
    ToolListing, time_ns=ints, agent_id=texts, server=texts, tools=st.lists(definitions, max_size=3).map(tuple),
    session_id=texts, server_version=texts, instructions_sha256=texts, trace_id=texts, span_id=texts,
    after_list_changed=st.booleans(), source=texts,
)  # fmt: skip


def _through_the_wire(data: bytes) -> tuple:
    (length,) = wf.HEADER.unpack(data[: wf.HEADER.size])
    assert length == len(data) - wf.HEADER.size
    return wf.unframe(data[wf.HEADER.size :])


@given(st.lists(calls, max_size=5), st.lists(listings, max_size=3), st.integers(0, 10**6), st.integers(0, 10**6),
       st.lists(texts, max_size=5), st.integers(0, 1000), st.lists(texts, max_size=3), st.integers(0, 2**62), texts)
def test_an_ingest_frame_gives_back_equal_calls_listings_and_counts(cs, ls, spans, rejected, errors, drej, derr, rid, recv):
    norm = Normalized(cs, ls, spans, rejected, errors)
    got_id, got_receiver, got, got_drej, got_derr = wf.read_ingest(
        _through_the_wire(wf.ingest_frame(rid, recv, norm, drej, tuple(derr)))
    )
    assert (got_id, got_receiver, got_drej, got_derr) == (rid, recv, drej, tuple(derr))
    assert got == norm
    # Field types survive too (tuples stay tuples: detectors hash them).
    for a, b in zip(got.calls, cs):
        assert [type(getattr(a, f.name)) for f in dataclasses.fields(a)] == [type(getattr(b, f.name)) for f in dataclasses.fields(b)]
    assert all(type(t) is ToolDefinition for listing in got.listings for t in listing.tools)


def test_equal_values_of_a_request_arrive_as_one_object_each():
    """The worker shares equal agents, tools, servers, sessions and arguments: the daemon unmarshals each once."""
    calls = [
        ToolCall(time_ns=i, agent_id="".join(["agent-", "7"]), tool="".join(["read_", "file"]), session_id="s" + "1",
                 server="".join(["fi", "les"]), args_json="".join(['{"p"', ':1}']), trace_id=f"{i:032x}",
                 span_id=f"{i:016x}", source="genai")
        for i in range(3)
    ]  # fmt: skip
    assert calls[0].agent_id is not calls[1].agent_id  # built apart, as the normaliser builds them
    norm = Normalized(calls, [], 3, 0, [])
    data = wf.ingest_frame(1, "otlp_http", norm, 0, ())
    got = wf.read_ingest(_through_the_wire(data))[2]
    assert got == norm
    a, b, c = got.calls
    for name in ("agent_id", "tool", "server", "session_id", "args_json"):
        assert getattr(a, name) is getattr(b, name) is getattr(c, name), name
    assert a.trace_id != b.trace_id
    unshared = wf.frame((wf.INGEST, 1, "otlp_http", list(map(wf._call_values, calls)), [], 3, 0, (), 0, ()))
    assert len(data) < len(unshared)


def test_huge_strings_and_empty_tuples_round_trip():
    call = ToolCall(time_ns=2**63 - 1, agent_id="a" * 5_000_000, tool="\udcff\ud800", args_json="x" * 3_000_000)
    listing = ToolListing(time_ns=0, agent_id="", server="", tools=())
    norm = Normalized([call], [listing], 1, 0, [])
    got = wf.read_ingest(_through_the_wire(wf.ingest_frame(1, "otlp_http", norm, 0, ())))[2]
    assert got == norm and got.calls[0].args_sketch == () and got.listings[0].tools == ()


def test_nan_score_round_trips_as_nan():
    norm = Normalized([ToolCall(time_ns=1, agent_id="a", tool="t", result_injection_score=math.nan)], [], 1, 0, [])
    got = wf.read_ingest(_through_the_wire(wf.ingest_frame(1, "r", norm, 0, ())))[2]
    assert math.isnan(got.calls[0].result_injection_score)


def test_a_frame_is_never_unpickled_arbitrary_objects():
    class Evil:
        pass

    with pytest.raises(ValueError):  # marshal refuses what is not a primitive
        wf.frame((wf.REJECTED, Evil()))
    with pytest.raises(ValueError):
        wf.unframe(b"\x00\x01garbage")
    with pytest.raises(ValueError):
        wf.unframe(marshal.dumps(None))  # not a tuple: not a frame
