"""A worker connection's value table (worker_frames.ValueTable / TableMirror): frames built with it
give back the calls frames without it give, and a mirror that lost track is told, not misled."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.bench_workloads import fleet_calls
from toolwatch.collector.normalize import Normalized
from toolwatch.collector.receivers import worker_frames as wf
from toolwatch.detectors.events import ToolCall, ToolDefinition, ToolListing

# Few distinct values, so requests repeat each other's (what the table is for), of both text types.
names = st.sampled_from(["a", "b", "c", "", "é", "\udcff", "a/b"])
name_tuples = st.lists(names, max_size=3).map(tuple)
calls = st.builds(
    ToolCall, time_ns=st.integers(0, 5), agent_id=names, tool=names, server=names, session_id=names,
    args_json=names, args_labels=name_tuples, result_labels=name_tuples, args_fingerprints=name_tuples,
    result_fingerprints=name_tuples, destinations=name_tuples, source=names, span_id=names,
)  # fmt: skip


def _read(data: bytes, canon: wf.Canon | None, mirror: wf.TableMirror | None) -> list[ToolCall]:
    return wf.read_ingest(wf.unframe(data[wf.HEADER.size :]), canon, mirror)[2].calls


def _frame(calls: list[ToolCall], table: wf.ValueTable | None, **kw) -> bytes:
    return wf.ingest_frame(1, "otlp_http", Normalized(calls, [], len(calls), 0, []), 0, (), table=table, **kw)


def _assert_same_calls(got: list[ToolCall], want: list[ToolCall]) -> None:
    assert got == want
    for a, b in zip(got, want):
        assert a.token == b.token
        assert [type(getattr(a, f.name)) for f in dataclasses.fields(a)] == [
            type(getattr(b, f.name)) for f in dataclasses.fields(b)
        ]


@given(st.lists(st.lists(calls, max_size=6), max_size=6), st.integers(1, 12))
def test_requests_through_a_table_give_the_calls_and_objects_of_requests_without_one(requests, limit):
    """However small the table (new generations), each request's calls are equal to its own, and every
    canonical value is the very object the untabled path's ``Canon`` gives."""
    table, mirror = wf.ValueTable(limit), wf.TableMirror()
    canon_tabled, canon_plain = wf.Canon(), wf.Canon()
    for cs in requests:
        tabled = _read(_frame(cs, table), canon_tabled, mirror)
        plain = _read(_frame(cs, None), canon_plain, None)
        _assert_same_calls(tabled, cs)
        _assert_same_calls(plain, cs)
    # One object per equal value across requests, as with Canon alone: one among the lasting columns
    # (agents, tools, tokens...), one among the others (sessions...), Canon having a table for each.
    lasting = {wf._CALL_COLUMNS[i] for i in wf._LASTING}
    seen: dict[object, object] = {}
    for call in [c for cs in requests for c in _read(_frame(cs, table), canon_tabled, mirror)]:
        for name in ("agent_id", "tool", "server", "session_id", "args_labels", "destinations", "token"):
            value = getattr(call, name)
            assert seen.setdefault((name in lasting, type(value), value), value) is value


def test_fleet_requests_send_each_value_once_per_connection():
    calls = fleet_calls(3000)
    requests = [calls[i : i + 500] for i in range(0, 3000, 500)]
    table, mirror, canon = wf.ValueTable(), wf.TableMirror(), wf.Canon()
    defined = []
    for cs in requests:
        data = _frame(cs, table, rows=False)
        msg = wf.unframe(data[wf.HEADER.size :])
        n, entries, (generation, base, new, _lasting) = msg[3]
        assert generation == 0 and base == len(mirror.values)
        assert {entries[i][0] for i in wf._TABLE_COLUMNS} <= {wf.TABLED, wf.SAME}
        defined += new
        _assert_same_calls(wf.read_ingest(msg, canon, mirror)[2].calls, cs)
    assert len(defined) == len(set(map(repr, defined))) == len(mirror.values)  # no value defined twice
    # The same request again: nothing new to define, and smaller than its first frame.
    again = _frame(requests[0], table, rows=False)
    assert wf.unframe(again[wf.HEADER.size :])[3][2][2] == ()
    assert len(again) < len(_frame(requests[0], None))


def test_a_table_full_starts_a_new_generation_that_the_mirror_follows():
    table, mirror = wf.ValueTable(limit=7), wf.TableMirror()  # 4 values (tools, tokens), then 6 more
    first = [ToolCall(time_ns=1, agent_id="a", tool=t, server="s") for t in ("t1", "t2")]
    second = [ToolCall(time_ns=2, agent_id="b", tool=t, server="s") for t in ("t3", "t4", "t5")]
    _assert_same_calls(_read(_frame(first, table), None, mirror), first)
    old = mirror.values
    data = _frame(second, table)
    assert wf.unframe(data[wf.HEADER.size :])[3][2][:2] == (1, 0)  # generation 1, from slot 0
    _assert_same_calls(_read(data, None, mirror), second)
    assert mirror.generation == 1 and mirror.values is not old


def test_a_request_with_more_distinct_values_than_the_table_holds_goes_as_values():
    table, mirror = wf.ValueTable(limit=3), wf.TableMirror()
    cs = [ToolCall(time_ns=1, agent_id=f"a{i}", tool=f"t{i}") for i in range(4)]
    data = _frame(cs, table)
    assert len(wf.unframe(data[wf.HEADER.size :])[3]) == 2  # no definitions: INDEXED as without a table
    _assert_same_calls(_read(data, None, mirror), cs)


def test_a_mirror_that_missed_a_frame_is_out_of_step():
    table, mirror = wf.ValueTable(), wf.TableMirror()
    _frame([ToolCall(time_ns=1, agent_id="a", tool="t1"), ToolCall(time_ns=1, agent_id="b", tool="t2")], table)
    later = _frame([ToolCall(time_ns=2, agent_id="c", tool="t1"), ToolCall(time_ns=2, agent_id="d", tool="t3")], table)
    with pytest.raises(wf.OutOfStep):
        _read(later, None, mirror)


def test_a_tabled_frame_without_a_mirror_is_refused():
    data = _frame([ToolCall(time_ns=1, agent_id="a", tool="t1"), ToolCall(time_ns=1, agent_id="b", tool="t2")],
                  wf.ValueTable())  # fmt: skip
    with pytest.raises(ValueError, match="value table"):
        _read(data, wf.Canon(), None)


def test_a_frame_that_cannot_be_built_is_forgotten_and_the_next_one_starts_over():
    """A frame whose listing cannot be marshalled is never sent: the next frame must not rely on its values."""
    table, mirror = wf.ValueTable(), wf.TableMirror()
    cs = [ToolCall(time_ns=1, agent_id="a", tool="t1"), ToolCall(time_ns=1, agent_id="b", tool="t2")]
    bad = ToolListing(time_ns=1, agent_id="a", server="s", tools=(ToolDefinition(name="x", input_schema=object()),))
    with pytest.raises(ValueError):
        wf.ingest_frame(1, "otlp_http", Normalized(cs, [bad], 3, 0, []), 0, (), table=table)
    _assert_same_calls(_read(_frame(cs, table), None, mirror), cs)
    assert mirror.generation == table.generation == 1


def test_a_table_holds_at_most_what_two_byte_slots_address():
    with pytest.raises(ValueError):
        wf.ValueTable(limit=(1 << 16) + 1)


def test_a_mirror_never_holds_more_than_a_table_may():
    mirror = wf.TableMirror()
    with pytest.raises(wf.OutOfStep):
        mirror.define((0, 0, tuple(f"v{i}" for i in range((1 << 16) + 1)), 0), None)


def test_agents_and_tools_defined_through_tables_stay_one_object_when_sessions_fill_the_canon():
    """Each request on a new connection (a restarted worker, a new table generation) defines its
    values again; sessions fill their Canon table, and dropping it keeps agents, tools and tokens."""
    canon = wf.Canon(limit=10)

    def first_call(i: int) -> ToolCall:
        calls = [ToolCall(time_ns=i, agent_id="".join(["ag", "ent", k]), tool="".join(["t", "1", k]), server="s" + "v" + k,
                          session_id=f"session-{i}{k}") for k in ("", "2")]  # fmt: skip
        data = _frame(calls, wf.ValueTable(), rows=False)
        assert wf.unframe(data[wf.HEADER.size :])[3][1][wf._CALL_COLUMNS.index("agent_id")][0] == wf.TABLED
        return _read(data, canon, wf.TableMirror())[0]

    first = first_call(0)
    for i in range(1, 30):  # 29 more sessions: their table is dropped twice
        got = first_call(i)
        for name in ("agent_id", "tool", "server", "token"):
            assert getattr(got, name) is getattr(first, name), (i, name)
    assert len(canon._objects) <= 11 and {"agent", "t1", "sv", "sv/t1"} <= set(canon._lasting)
