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
    # Field types survive too (tuples stay tuples: detectors hash them), and the token each call was built with.
    for a, b in zip(got.calls, cs):
        assert [type(getattr(a, f.name)) for f in dataclasses.fields(a)] == [type(getattr(b, f.name)) for f in dataclasses.fields(b)]
        assert type(a) is ToolCall and a.token == b.token
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
    unshared = (3, tuple((wf.PLAIN, col) for col in zip(*map(wf._call_columns, calls))))
    assert len(data) < len(wf.frame((wf.INGEST, 1, "otlp_http", unshared, [], 3, 0, (), 0, ())))


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


def _fleet_requests(n_requests: int) -> list[Normalized]:
    """Normalised requests of the benches' fleet workload (bench/workloads.py), as a worker makes them."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
    import workloads as wl

    from toolwatch.collector import otlp
    from toolwatch.collector.normalize import Normalizer

    normalizer = Normalizer()
    bodies = wl.bodies("fleet", 500 * n_requests, 500, anomaly_rate=0.01, rate=75_000)
    return [normalizer.normalize(otlp.decode_export(b, otlp.PROTOBUF).request) for b in bodies[:n_requests]]


def test_fleet_requests_arrive_as_the_calls_the_in_process_path_builds():
    """Calls equal to the normaliser's, field types and tokens included, however their columns travel."""
    canon = wf.Canon()
    requests = _fleet_requests(6)
    encodings = set()
    for norm in requests:
        data = wf.ingest_frame(7, "otlp_http", norm, 0, ())
        encodings.add(tuple(entry[0] for entry in wf.unframe(data[wf.HEADER.size :])[3][1]))
        got = wf.read_ingest(_through_the_wire(data), canon)[2]
        assert got == norm and len(got.calls) == 500
        for a, b in zip(got.calls, norm.calls):
            assert type(a) is ToolCall and a.token == b.token
            assert [type(getattr(a, f.name)) for f in dataclasses.fields(a)] == [
                type(getattr(b, f.name)) for f in dataclasses.fields(b)
            ]
    kinds = set().union(*map(set, encodings))
    assert kinds == {wf.SAME, wf.INDEXED, wf.PLAIN, wf.INTS}  # every encoding is exercised


def test_canon_makes_equal_agents_tools_and_sessions_of_two_requests_one_object():
    canon = wf.Canon()
    calls = [ToolCall(time_ns=i, agent_id="".join(["ag", "ent"]), tool="".join(["t", "1"]), server="s" + "v",
                      session_id="".join(["se", "ss"]), trace_id="".join(["tr", "ace"])) for i in range(2)]  # fmt: skip
    firsts = [wf.read_ingest(_through_the_wire(wf.ingest_frame(i, "r", Normalized(calls, [], 2, 0, []), 0, ())), canon)[2].calls[0] for i in range(2)]  # fmt: skip
    a, b = firsts
    assert a == b
    for name in ("agent_id", "tool", "server", "session_id", "token"):
        assert getattr(a, name) is getattr(b, name), name
    assert a.trace_id is not b.trace_id  # trace ids are not kept across requests
    without = [wf.read_ingest(_through_the_wire(wf.ingest_frame(i, "r", Normalized(calls, [], 2, 0, []), 0, ())))[2].calls[0] for i in range(2)]  # fmt: skip
    assert without[0] == without[1] and without[0].agent_id is not without[1].agent_id


def test_canon_is_bounded():
    canon = wf.Canon(limit=10)
    first = canon(tuple(f"v{i}" for i in range(5)))
    assert canon(("".join(["v", "3"]),))[0] is first[3]
    canon(tuple(f"w{i}" for i in range(6)))  # 11 kept: over the limit
    again = canon(("".join(["v", "3"]),))[0]  # the full table was dropped before this one was kept
    assert again == "v3" and again is not first[3] and len(canon._objects) == 1


def test_agents_and_tools_stay_one_object_when_sessions_fill_the_canon():
    """Sessions keep coming and fill their table; dropping it keeps agents, tools and tokens."""
    canon = wf.Canon(limit=10)

    def first_call(i: int) -> ToolCall:
        call = ToolCall(time_ns=i, agent_id="".join(["ag", "ent"]), tool="".join(["t", "1"]), server="s" + "v",
                        session_id=f"session-{i}")  # fmt: skip
        frame = wf.ingest_frame(i, "r", Normalized([call], [], 1, 0, []), 0, ())
        return wf.read_ingest(_through_the_wire(frame), canon)[2].calls[0]

    first = first_call(0)
    for i in range(1, 30):  # 29 more sessions: their table is dropped twice
        got = first_call(i)
        for name in ("agent_id", "tool", "server", "token"):
            assert getattr(got, name) is getattr(first, name), (i, name)
    assert len(canon._objects) <= 11 and set(canon._lasting) == {"agent", "t1", "sv", "sv/t1", "", ()}


def test_equal_values_of_other_types_or_signs_are_never_merged():
    """Only identical objects travel once, except str and tuples of str (equal means same type there)."""
    calls = [
        ToolCall(time_ns=1, agent_id="a", tool="t", result_injection_score=0.0, args_bytes=1, args_sketch=(1,)),
        ToolCall(time_ns=1, agent_id="a", tool="t", result_injection_score=-0.0, args_bytes=True, args_sketch=(1.0,)),  # type: ignore[arg-type]
        ToolCall(time_ns=1, agent_id=1, tool="t", result_injection_score=0.0, args_bytes=1, args_sketch=(True,)),  # type: ignore[arg-type]
        ToolCall(time_ns=1, agent_id=1.0, tool="t", args_labels=(1,), destinations=("x",)),  # type: ignore[arg-type]
        ToolCall(time_ns=1, agent_id=True, tool="t", args_labels=(1.0,), destinations=("x",)),  # type: ignore[arg-type]
    ]
    got = wf.read_ingest(_through_the_wire(wf.ingest_frame(1, "r", Normalized(calls, [], 5, 0, []), 0, ())), wf.Canon())[2]
    for name in ("agent_id", "result_injection_score", "args_bytes", "args_sketch", "args_labels", "destinations"):
        want = [getattr(c, name) for c in calls]
        have = [getattr(c, name) for c in got.calls]
        assert repr(have) == repr(want), name
        assert [type(v) for v in have] == [type(v) for v in want], name


@pytest.mark.parametrize(
    "mangle, error",
    [
        (lambda n, cols: (n, cols[:-1]), ValueError),  # a column missing
        (lambda n, cols: (n, (*cols[:3], (9, "x"), *cols[4:])), ValueError),  # an unknown encoding
        (lambda n, cols: (n + 1, cols), ValueError),  # fewer values than calls
        (lambda n, cols: (n, (*cols[:3], (wf.INDEXED, ("s",), (0, 5)), *cols[4:])), IndexError),  # an index past the values
        (lambda n, cols: (n, (*cols[:3], (wf.PLAIN,), *cols[4:])), ValueError),  # a malformed entry
        (lambda n, cols: (n, ((wf.INTS, b"\x00" * 15), *cols[1:])), ValueError),  # ints of 7.5 bytes
        (lambda n, cols: (n, ((wf.INTS, b"\x00" * 24), *cols[1:])), ValueError),  # three ints for two calls
    ],
)
def test_call_columns_that_do_not_fit_together_are_refused(mangle, error):
    calls = [ToolCall(time_ns=i, agent_id="a", tool=f"t{i}", server="s" * (i + 1)) for i in range(2)]
    n, cols = wf.calls_to_columns(calls)
    with pytest.raises(error):
        wf.columns_to_calls(mangle(n, cols), wf.Canon())


def test_canon_never_merges_values_of_other_types_across_requests():
    canon = wf.Canon()
    for agent in (1, 1.0, True, "1", ("1",)):
        calls = [ToolCall(time_ns=i, agent_id=agent, tool="t") for i in range(3)]  # type: ignore[arg-type]
        got = wf.read_ingest(_through_the_wire(wf.ingest_frame(1, "r", Normalized(calls, [], 3, 0, []), 0, ())), canon)[2]
        assert [type(c.agent_id) for c in got.calls] == [type(agent)] * 3 and got.calls[0].agent_id == agent


def test_int_columns_keep_big_negative_and_bool_values():
    big = [2**63 - 1, -(2**63), 0, 2**63, True]
    for values in ([big[0], big[1], 7], [big[0], big[3]], [1, big[4]], [5, -5]):
        calls = [ToolCall(time_ns=v, agent_id="a", tool="t", duration_ns=v) for v in values]
        got = wf.read_ingest(_through_the_wire(wf.ingest_frame(1, "r", Normalized(calls, [], 2, 0, []), 0, ())))[2]
        assert [(c.time_ns, type(c.time_ns)) for c in got.calls] == [(v, type(v)) for v in values]


def test_more_than_256_distinct_values_of_a_column_round_trip():
    """Indexes go as bytes up to 256 distinct values and as ints past that."""
    for distinct in (256, 257, 700):
        calls = [ToolCall(time_ns=i, agent_id=f"agent-{i % distinct}", tool="t", session_id=f"s{i % 3}") for i in range(800)]
        n, columns = wf.calls_to_columns(calls)
        kind, values, indexes = columns[wf._CALL_COLUMNS.index("agent_id")]
        assert kind == wf.INDEXED and len(values) == distinct
        assert type(indexes) is (bytes if distinct <= 256 else tuple)
        got = wf.read_ingest(_through_the_wire(wf.ingest_frame(1, "r", Normalized(calls, [], 800, 0, []), 0, ())), wf.Canon())[2]
        assert got.calls == calls and [c.token for c in got.calls] == ["t"] * 800


# Calls whose values repeat across a request (as agents, tools and sessions do), of any type the
# fields may wrongly hold too: the encodings that look for repeats all run.
few_texts = st.sampled_from(["", "a", "b", "ab", "\udcff"])
few_values = few_texts | st.sampled_from([0, 1, True, 1.0, -0.0, 0.0, 2**63, -(2**63), 2**64, ("a",), (), (1,)])
few_tuples = st.lists(few_texts, max_size=2).map(tuple) | st.sampled_from([(), ("a",), (1,), ("a", 1.0)])
repeating_calls = st.builds(
    ToolCall,
    time_ns=st.sampled_from([0, 1, 2**63 - 1, 2**63, -(2**63), True]) | ints, agent_id=few_values, tool=few_texts,
    server=few_texts, session_id=few_values, duration_ns=few_values, trace_id=few_texts | texts, span_id=few_values,
    request_id=few_texts, agent_name=few_texts, server_address=few_texts, error_type=few_texts, args_json=few_values,
    args_bytes=few_values, result_bytes=ints, args_labels=few_tuples, result_labels=few_tuples,
    args_fingerprints=few_tuples | few_values, result_fingerprints=few_tuples, args_sketch=int_tuples | few_tuples,
    result_sketch=int_tuples, result_injection_score=few_values, destinations=few_tuples, definition_sha256=few_texts,
    source=few_texts,
)  # fmt: skip


@given(st.lists(repeating_calls | calls, min_size=1, max_size=12))
def test_columns_are_mains_encoding_but_span_ids_are_never_searched_for_repeats(cs):
    """A/B against main's encoder (frozen in helpers/worker_frames_main.py): the same entry for every
    column, except that span ids, one per span, go as they are (equal values either way)."""
    from helpers import worker_frames_main as main

    n, got = wf.calls_to_columns(cs)
    ref_n, ref = main.calls_to_columns(cs)
    span_id = wf._CALL_COLUMNS.index("span_id")
    assert n == ref_n and len(got) == len(ref)
    for i, (a, b) in enumerate(zip(got, ref)):
        if i != span_id:
            assert repr(a) == repr(b), wf._CALL_COLUMNS[i]  # repr: 1 and True, 0.0 and -0.0 differ
            assert [type(v) for v in a[1:]] == [type(v) for v in b[1:]]
    assert got[span_id][0] in (wf.SAME, wf.PLAIN)
    back = wf.columns_to_calls(_through_the_wire(wf.frame((n, got))), wf.Canon())
    assert repr(back) == repr(cs) and [c.token for c in back] == [c.token for c in cs]


odd_tokens = st.builds(ToolCall, time_ns=ints, agent_id=few_texts, tool=few_values | texts, server=few_values | texts)


@given(st.lists(repeating_calls | calls | odd_tokens, min_size=1, max_size=12))
def test_rows_give_the_entries_of_their_calls_tokens_included(cs):
    """A worker's rows carry no token: the token entry worked out from the server and tool entries
    is the one the calls' own tokens give (servers or tools of other types too)."""
    rows = [wf._call_columns(c)[:-1] for c in cs]
    assert repr(wf.rows_to_columns(rows)) == repr(wf.calls_to_columns(cs))


def test_rows_of_another_length_are_refused():
    row = wf._call_columns(ToolCall(time_ns=1, agent_id="a", tool="t"))
    with pytest.raises(ValueError, match="rows of 26 values"):
        wf.rows_to_columns([row])
