"""bench/workloads.py: the fleet is deterministic for a seed, decodes through the collector into
exactly the calls it planned, keeps its anomaly share, and re-stamps without re-encoding."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.helpers.bench_workloads import workloads
from toolwatch.collector import otlp
from toolwatch.collector.normalize import Normalizer

T0 = 1_765_000_000_000_000_000
N = 30_000


@pytest.fixture(scope="module")
def wl():
    return workloads()


def decode(bodies):
    norm = Normalizer()
    calls = []
    for body in bodies:
        decoded = otlp.decode_export(body, otlp.PROTOBUF)
        out = norm.normalize(decoded.request)
        assert decoded.rejected == 0 and out.rejected == 0, (decoded.errors, out.errors)
        assert out.spans == len(out.calls)
        calls += out.calls
    return calls


@pytest.fixture(scope="module")
def fleet(wl):
    cfg = wl.FleetConfig(seed=3, anomaly_rate=0.005)
    return wl.Fleet(cfg), wl.fleet_bodies(N, 500, cfg, start_ns=T0, rate=50_000)


def test_same_seed_same_bodies_other_seed_other_bodies(wl, fleet):
    _, bodies = fleet
    again = wl.fleet_bodies(N, 500, wl.FleetConfig(seed=3, anomaly_rate=0.005), start_ns=T0, rate=50_000)
    assert again == bodies
    other = wl.fleet_bodies(N, 500, wl.FleetConfig(seed=4, anomaly_rate=0.005), start_ns=T0, rate=50_000)
    assert other != bodies


def test_bodies_decode_into_the_planned_calls(wl, fleet):
    f, bodies = fleet
    plan = f.calls(N)
    calls = decode(bodies)
    assert len(calls) == N
    for c, p in zip(calls, plan):
        assert (c.agent_id, c.server, c.tool) == (p.agent, p.spec.server, p.tool_name.replace(wl.STAMP, "00000000"))
        assert c.session_id == p.session.replace(wl.STAMP, "00000000")
        assert (c.args_bytes, c.result_bytes, c.duration_ns) == (p.args_bytes, p.result_bytes, p.duration_ns)
        assert (c.args_labels, c.result_labels, c.destinations) == (p.args_labels, p.result_labels,
                                                                    tuple(d.replace(wl.STAMP, "00000000")
                                                                          for d in p.destinations))
        assert c.args_fingerprints == tuple(x.replace(wl.STAMP, "00000000") for x in p.args_fingerprints)
        assert c.result_fingerprints == tuple(x.replace(wl.STAMP, "00000000") for x in p.result_fingerprints)
    # event time advances at the rate from start_ns; every span has its own id
    assert [c.time_ns for c in calls] == [T0 + i * 20_000 for i in range(N)]
    assert len({c.span_id for c in calls}) == N and len({c.trace_id for c in calls}) == N


def test_fleet_agents_tools_and_sessions(wl, fleet):
    f, bodies = fleet
    calls = decode(bodies)
    plan = f.calls(N)
    routines = {r.agent: r for r in f.routines}
    assert {c.agent_id for c in calls} == set(routines)  # all 200 agents take part
    sessions: dict[str, list] = defaultdict(list)
    for c, p in zip(calls, plan):
        sessions[c.session_id].append((c, p))
        if not p.anomaly:
            assert p.spec in routines[c.agent_id].tools  # a routine call uses the agent's own tools
    assert all(len({c.agent_id for c, _ in s}) == 1 for s in sessions.values())
    last = {c.agent_id: c.session_id for c in calls}  # each agent's last session is cut off by the end
    lengths = [len(s) for sid, s in sessions.items() if sid not in set(last.values()) and not any(p.anomaly for _, p in s)]
    assert len(lengths) > 1000 and min(lengths) >= 5 and max(lengths) <= 60
    assert 3 <= min(len(r.tools) for r in f.routines) and max(len(r.tools) for r in f.routines) <= 8
    assert len({t for r in f.routines for t in r.tools}) >= 30  # the fleet uses most of the catalog
    # some calls carry labels, fingerprints and destinations as the instrumentation emits them
    assert sum(bool(c.result_labels) for c in calls) > N // 20
    assert sum(bool(c.args_fingerprints) for c in calls) > N // 50
    assert sum(bool(c.destinations) for c in calls) > N // 50


def test_spans_carry_make_bodys_13_attributes_first(wl, fleet):
    _, bodies = fleet
    keys = [kv.key for kv in ExportTraceServiceRequest.FromString(wl.make_body(1, 0)).resource_spans[0]
            .scope_spans[0].spans[0].attributes]
    assert len(keys) == 13
    for span in ExportTraceServiceRequest.FromString(bodies[0]).resource_spans[0].scope_spans[0].spans:
        assert [kv.key for kv in span.attributes][:13] == keys


@pytest.mark.parametrize("rate", [0.001, 0.01])
def test_anomaly_share_is_the_rate_asked_for(wl, rate):
    n = 200_000
    calls = wl.Fleet(wl.FleetConfig(anomaly_rate=rate, seed=1)).calls(n)
    anomalous = [c for c in calls if c.anomaly]
    # within half the largest anomaly (a burst) of the rate, at any length
    assert abs(len(anomalous) - rate * n) <= wl._BURST[1] / 2
    kinds = Counter(c.anomaly for c in anomalous)
    if rate * n >= 1000:  # enough anomalies (at 0.1 % of 200k, about one burst is expected)
        assert set(kinds) == set(wl.ANOMALY_KINDS)
        for kind in wl.ANOMALY_KINDS:
            assert kinds[kind] >= len(anomalous) / 6, kinds  # each kind about a third of the anomalous calls
    routines = {r.agent: r for r in wl.Fleet(wl.FleetConfig(seed=1)).routines}
    for c in anomalous:
        if c.anomaly == "unusual_tool":
            assert c.spec not in routines[c.agent].tools and wl.STAMP in c.tool_name
    assert not [c for c in wl.Fleet(wl.FleetConfig(anomaly_rate=0.0, seed=1)).calls(20_000) if c.anomaly]


def test_each_pass_of_the_pool_opens_new_sessions_and_restamps_ids_and_times(wl):
    templates = wl.fleet_templates(2_000, 500, config=wl.FleetConfig(seed=5, anomaly_rate=0.01))
    traffic = wl.FleetTraffic(templates, rate=100_000, stamp_base=7)
    first = decode([traffic.body(i, now_ns=T0) for i in range(len(templates))])
    second = decode([traffic.body(len(templates) + i, now_ns=T0) for i in range(len(templates))])
    assert [(c.agent_id, c.server, c.args_bytes) for c in first] == [(c.agent_id, c.server, c.args_bytes) for c in second]
    assert {c.session_id for c in first}.isdisjoint({c.session_id for c in second})
    assert all(c.session_id.endswith("-00000007") for c in first)
    assert all(c.session_id.endswith("-00000008") for c in second)
    assert {c.span_id for c in first}.isdisjoint({c.span_id for c in second})
    times = [c.time_ns for c in first + second]
    assert times == sorted(times) and len(set(times)) == len(times)  # never backwards, even with a stuck clock
    # the anomalies are news again: their tool names and destinations carry the pass number
    unusual = [c.tool for c in first + second if c.tool.endswith(("_00000007", "_00000008"))]
    assert unusual and len(set(unusual)) > 1
    # a pool from two load generators shares the agents out
    a = wl.fleet_templates(1_000, 500, 0, 2)
    b = wl.fleet_templates(1_000, 500, 1, 2)
    agents_a = {c.agent_id for c in decode([t.body for t in a])}
    agents_b = {c.agent_id for c in decode([t.body for t in b])}
    assert agents_a and agents_b and agents_a.isdisjoint(agents_b)


@pytest.mark.parametrize("workload", ["fleet", "routine", "random"])
def test_kafka_records_are_one_agent_each_keyed_by_it(wl, workload):
    records = wl.kafka_records(workload, 6_000, 200)
    total = 0
    for key, value, n in records:
        calls = decode([value])
        assert len(calls) == n
        total += n
        if workload != "random":  # make_body mixes agents in a request
            assert {c.agent_id for c in calls} == {key.decode()}
    assert total == 6_000


def test_kafka_records_from_a_pool_repeat_its_calls_with_new_sessions_ids_and_later_times(wl):
    distinct = wl.kafka_records("fleet", 3_000, 200, start_ns=T0)
    assert wl.kafka_records("fleet", 3_000, 200, start_ns=T0, pool_spans=3_000) == distinct  # one pass: the same
    records = wl.kafka_records("fleet", 7_000, 200, start_ns=T0, pool_spans=3_000)  # 2 passes and a third begun
    assert 7_000 - 200 < sum(n for _k, _v, n in records) <= 7_000  # whole records
    calls = decode([v for _k, v, _n in records])
    passes = [calls[:3_000], calls[3_000:6_000]]
    assert [(c.agent_id, c.server, c.args_bytes) for c in passes[0]] == [(c.agent_id, c.server, c.args_bytes)
                                                                          for c in passes[1]]
    assert {c.session_id for c in passes[0]}.isdisjoint({c.session_id for c in passes[1]})
    assert {c.span_id for c in passes[0]}.isdisjoint({c.span_id for c in passes[1]})
    by_agent: defaultdict[str, list[int]] = defaultdict(list)
    for c in calls:
        by_agent[c.agent_id].append(c.time_ns)
    assert all(t == sorted(t) for t in by_agent.values())  # each agent's calls in order, across passes
    assert min(c.time_ns for c in passes[1]) > max(c.time_ns for c in passes[0])


def test_finding_tally_counts_findings_and_distinct_spans(wl):
    from toolwatch.detectors.events import Finding

    tally = wl.FindingTally()
    tally([Finding("sequence", "high", "a", "x", 1, span_ids=("s1",)), Finding("iforest", "low", "a", "y", 1,
                                                                              span_ids=("s1", "s2"))])
    assert (tally.findings, tally.spans, tally.by_detector["sequence"]) == (2, {"s1", "s2"}, 1)
    assert "findings 2 (1.00 per 100 spans)" in tally.summary(200) and "(1.00%)" in tally.summary(200)
    tally([Finding("exfiltration", "low", "a", "z", 1, evidence={"kind": "sensitive_then_send"}),
           Finding("exfiltration", "low", "b", "z", 1, evidence={"kind": "sensitive_then_send"})])
    assert tally.by_kind["exfiltration/sensitive_then_send"] == 2
    assert "by kind: exfiltration/sensitive_then_send 2 (2 agents)" in tally.summary(200)
    tally.reset()
    assert tally.findings == 0 and not tally.spans and not tally.by_kind and not tally.kind_agents


# A pass number whose hex spells ``db`` (the old stamp was ``%08x``): every unusual tool of that
# pass, e.g. ``git/status_0db00000``, was a ``db`` tool that reads sensitive data.
SPELLS_DB = 0x0DB00000


def test_pass_stamps_are_digits_so_stamped_tools_keep_their_catalog_capabilities(wl):
    from toolwatch.detectors.capabilities import heuristic_capabilities

    assert wl.pass_stamp(7) == b"00000007"
    templates = wl.fleet_templates(4_000, 500, config=wl.FleetConfig(seed=5, anomaly_rate=0.01))
    specs = {(t.server, t.tool) for t in wl.CATALOG}
    for base in (SPELLS_DB, 0x00FEED00, 0xFFFFFFFF):
        traffic = wl.FleetTraffic(templates, rate=100_000, stamp_base=base)
        calls = decode([traffic.body(i, now_ns=T0) for i in range(len(templates))])
        stamped = {(c.server, c.tool) for c in calls} - specs
        assert stamped  # the unusual tools, named anew per pass
        for server, tool in stamped:
            catalog_tool = tool.rsplit("_", 1)[0]
            assert (server, catalog_tool) in specs
            assert heuristic_capabilities(server, tool) == heuristic_capabilities(server, catalog_tool), (base, tool)


def test_a_pass_whose_number_spelled_a_word_raises_no_exfiltration_burst(wl):
    """The fleet bench's one-off 2.3 % of spans as exfiltration findings: the pass's unusual tools
    became sensitive reads, and every later send of those agents a ``sensitive_then_send``."""
    from toolwatch.detectors.events import Batch
    from toolwatch.detectors.exfiltration import ExfiltrationDetector

    templates = wl.fleet_templates(20_000, 500, config=wl.FleetConfig(seed=0, anomaly_rate=0.005))
    traffic = wl.FleetTraffic(templates, rate=100_000, stamp_base=SPELLS_DB)
    det = ExfiltrationDetector()
    kinds = Counter()
    for i in range(2 * len(templates)):  # two passes: the state outlives the pass that made it
        found = det.observe(Batch(calls=decode([traffic.body(i, now_ns=T0)])))
        kinds.update(f.evidence["kind"] for f in found)
    # the injected leaks' reads and sends are the workload's only sensitive_then_send
    assert kinds["sensitive_then_send"] <= kinds["cross_server_flow"], kinds


def test_first_spans_splits_one_stream_of_records_without_losing_or_repeating_one(wl):
    """bench/ingest_kafka.py --warm-spans: the warm-up takes whole records up to its spans, and the
    measured part goes on from the next record of the same traffic."""
    whole = wl.kafka_records("fleet", 7_000, 200, start_ns=T0, pool_spans=3_000)
    stream = wl.iter_kafka_records("fleet", 7_000, 200, start_ns=T0, pool_spans=3_000)
    warm = list(wl.first_spans(stream, 2_500))
    measured = list(wl.first_spans(stream, 3_000))
    rest = list(stream)
    assert 2_500 <= sum(n for _k, _v, n in warm) < 2_500 + 200
    assert 3_000 <= sum(n for _k, _v, n in measured) < 3_000 + 200
    assert warm + measured + rest == whole
    assert list(wl.first_spans(iter(warm), 10**9)) == warm  # a stream that ends first: all of it
