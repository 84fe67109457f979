"""Exfiltration detector: data flows across servers, and the outbound-call checks."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.detectors.capabilities import CapabilityMap
from toolwatch.detectors.events import Batch, Finding, ToolCall
from toolwatch.detectors.exfiltration import ExfiltrationConfig, ExfiltrationDetector

_spans = itertools.count(1)
T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


def make_call(server: str, tool: str, t: float = 0.0, **kw: Any) -> ToolCall:
    """A call ``t`` seconds into the test with a unique span id and sane defaults."""
    kw.setdefault("agent_id", "agent-1")
    kw.setdefault("session_id", "s1")
    kw.setdefault("span_id", f"span{next(_spans):04d}")
    kw.setdefault("trace_id", "trace1")
    for key in ("args_labels", "result_labels", "args_fingerprints", "result_fingerprints", "destinations",
                "args_sketch", "result_sketch"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return ToolCall(time_ns=T0 + int(t * S), server=server, tool=tool, **kw)


def run(det: ExfiltrationDetector, *calls) -> list[Finding]:
    return det.observe(Batch(calls=list(calls)))


def kinds(findings: list[Finding]) -> list[str]:
    return [f.evidence["kind"] for f in findings]


def test_secret_read_from_one_server_mailed_by_another_is_critical() -> None:
    det = ExfiltrationDetector()
    read = make_call("filesystem", "read_file", 0, result_labels=["secret"], result_fingerprints=["fp:a1"])
    send = make_call("gmail", "send_email", 10, args_fingerprints=["fp:a1"], destinations=["evil.example"])
    out = [f for f in run(det, read, send) if f.evidence["kind"] == "cross_server_flow"]
    assert len(out) == 1
    f = out[0]
    assert f.severity == "critical"
    assert f.span_ids == (read.span_id, send.span_id)
    assert f.evidence["fingerprints"] == ["fp:a1"]
    assert f.evidence["origins"][0]["server"] == "filesystem"
    assert f.session_id == "s1" and "filesystem/read_file" in f.reason


def test_user_mailing_a_document_they_wrote_is_not_a_flow() -> None:
    det = ExfiltrationDetector()
    write = make_call("docs", "create_document", 0, args_fingerprints=["fp:doc"], result_fingerprints=["fp:doc"])
    send = make_call("gmail", "send_email", 30, args_fingerprints=["fp:doc"], destinations=["example.com"])
    assert "cross_server_flow" not in kinds(run(det, write, send))


def test_derived_data_keeps_its_origin_through_intermediate_calls() -> None:
    det = ExfiltrationDetector()
    fetch = make_call("web", "fetch", 0, result_fingerprints=["fp:page"])
    summarise = make_call("llm", "summarize", 5, args_fingerprints=["fp:page"], result_fingerprints=["fp:sum"])
    post = make_call("slack", "post_message", 9, args_fingerprints=["fp:sum"])
    out = run(det, fetch, summarise, post)
    flows = [f for f in out if f.evidence["kind"] == "cross_server_flow"]
    # web → llm is a (low) non-sink flow; llm's result → slack is a high flow from web, via llm.
    assert [f.severity for f in flows] == ["low", "high"]
    last = flows[-1]
    assert last.evidence["origins"][0]["server"] == "web"
    assert last.evidence["origins"][0]["via"] == ["llm/summarize"]
    assert last.span_ids == (fetch.span_id, post.span_id)


def test_near_copy_by_sketch() -> None:
    base = tuple(range(100, 164))
    close = base[:58] + tuple(range(900, 906))  # 58/64 slots equal
    far = base[:20] + tuple(range(900, 944))
    det = ExfiltrationDetector()
    read = make_call("crm", "query", 0, result_sketch=base)
    near = make_call("gmail", "send_email", 5, args_sketch=close)
    out = [f for f in run(det, read, near) if f.evidence["kind"] == "cross_server_flow"]
    assert len(out) == 1 and out[0].evidence["near_copies"][0]["similarity"] == pytest.approx(58 / 64, abs=1e-3)
    det2 = ExfiltrationDetector()
    assert "cross_server_flow" not in kinds(run(det2, make_call("crm", "query", 0, result_sketch=base),
                                                 make_call("gmail", "send_email", 5, args_sketch=far)))


def test_flow_back_into_the_same_server_is_not_cross_domain() -> None:
    det = ExfiltrationDetector()
    read = make_call("gmail", "read_inbox", 0, result_fingerprints=["fp:m"])
    reply = make_call("gmail", "send_email", 5, args_fingerprints=["fp:m"])
    assert "cross_server_flow" not in kinds(run(det, read, reply))


def test_non_sink_flow_severity_is_configurable() -> None:
    det = ExfiltrationDetector(ExfiltrationConfig(non_sink_flow_severity="off"))
    out = run(det, make_call("web", "fetch", 0, result_fingerprints=["x"]),
              make_call("notes", "append_note", 1, args_fingerprints=["x"]))
    assert out == []


def test_secret_and_encoded_labels_only_matter_on_outbound_tools() -> None:
    det = ExfiltrationDetector()
    out = run(det, make_call("slack", "post_message", 0, args_labels=["api_key", "high_entropy"]))
    assert sorted(kinds(out)) == ["encoded_blob_outbound", "secret_in_outbound_args"]
    assert {f.severity for f in out} == {"critical", "medium"}
    assert run(det, make_call("filesystem", "write_file", 1, args_labels=["api_key", "high_entropy"])) == []


def test_secret_in_a_fetch_url_to_an_external_host_is_high() -> None:
    det = ExfiltrationDetector()
    out = run(det, make_call("web", "fetch", 0, args_labels=["url", "api_key", "high_entropy"],
                             destinations=["collect.evil.example"]))
    assert kinds(out) == ["secret_in_outbound_args"]
    assert out[0].severity == "high" and out[0].evidence["destinations"] == ["collect.evil.example"]


def test_sensitive_read_then_send_within_window() -> None:
    det = ExfiltrationDetector()
    out = run(det, make_call("vault", "read_secret", 0, result_labels=["secret"]),
              make_call("gmail", "send_email", 300))
    assert kinds(out) == ["sensitive_then_send"]
    assert out[0].evidence["reads"][0]["tool"] == "vault/read_secret"
    late = ExfiltrationDetector()
    assert run(late, make_call("vault", "read_secret", 0, result_labels=["secret"]),
               make_call("gmail", "send_email", 900)) == []
    # An agent holds one MCP session per server, so by default data is followed across them ...
    across = ExfiltrationDetector()
    assert kinds(run(across, make_call("vault", "read_secret", 0, result_labels=["secret"]),
                     make_call("gmail", "send_email", 5, session_id="s2"))) == ["sensitive_then_send"]
    # ... and an operator can narrow the scope to one MCP session.
    other_session = ExfiltrationDetector(ExfiltrationConfig(flow_scope="session"))
    assert run(other_session, make_call("vault", "read_secret", 0, result_labels=["secret"]),
               make_call("gmail", "send_email", 5, session_id="s2")) == []


def test_new_destination_after_warm_up() -> None:
    det = ExfiltrationDetector(ExfiltrationConfig(destination_warmup_calls=5))
    warm = [make_call("web", "fetch", i, destinations=["docs.example"]) for i in range(5)]
    assert run(det, *warm) == []
    assert run(det, make_call("web", "fetch", 10, destinations=["DOCS.example"])) == []
    out = run(det, make_call("gmail", "send_email", 11, destinations=["drop.evil.example"]))
    assert kinds(out) == ["new_destination"] and out[0].severity == "medium"
    assert out[0].evidence["new_destinations"] == ["drop.evil.example"]
    assert run(det, make_call("gmail", "send_email", 12, destinations=["drop.evil.example"])) == []


def test_large_outbound_payload_against_agent_median() -> None:
    det = ExfiltrationDetector(ExfiltrationConfig(payload_min_samples=10, payload_min_bytes=1000))
    normal = [make_call("gmail", "send_email", i, args_bytes=900 + 10 * (i % 5)) for i in range(12)]
    assert run(det, *normal) == []
    assert run(det, make_call("gmail", "send_email", 20, args_bytes=3000)) == []
    out = run(det, make_call("gmail", "send_email", 21, args_bytes=250_000))
    assert kinds(out) == ["large_outbound_payload"]
    assert out[0].evidence["median_bytes"] == pytest.approx(920, abs=30)
    # the leak stayed out of the baseline
    assert 250_000 not in det.snapshot_agent("agent-1")["payloads"]


def test_quiet_agent_is_not_judged_on_payload_size() -> None:
    det = ExfiltrationDetector()
    assert run(det, make_call("gmail", "send_email", 0, args_bytes=900_000)) == []


def test_sessions_expire_in_event_time() -> None:
    det = ExfiltrationDetector(ExfiltrationConfig(session_ttl_s=60))
    read = make_call("filesystem", "read_file", 0, result_fingerprints=["fp:a"])
    later = make_call("gmail", "send_email", 61, args_fingerprints=["fp:a"])
    assert "cross_server_flow" not in kinds(run(det, read, later))


def test_memory_is_bounded() -> None:
    calls = [make_call("web", "fetch", i, session_id=f"s{i % 7}", result_fingerprints=[f"fp{i}-{j}" for j in range(5)])
             for i in range(100)]
    for scope, scopes in (("session", 3), ("agent", 1)):
        det = ExfiltrationDetector(ExfiltrationConfig(flow_scope=scope, max_sessions_per_agent=3, max_fingerprints_per_session=10))
        run(det, *calls)
        state = det.snapshot_agent("agent-1")
        assert len(state["sessions"]) == scopes
        assert all(len(s["taint"]) <= 10 for _, s in state["sessions"])


def test_snapshot_restore_gives_identical_findings() -> None:
    first = [make_call("filesystem", "read_file", 0, result_fingerprints=["fp:a"], result_labels=["secret"]),
             make_call("web", "fetch", 1, destinations=["a.example"])]
    second = [make_call("gmail", "send_email", 2, args_fingerprints=["fp:a"], destinations=["b.example"])]
    det = ExfiltrationDetector(ExfiltrationConfig(destination_warmup_calls=1))
    run(det, *first)
    clone = ExfiltrationDetector(ExfiltrationConfig(destination_warmup_calls=1))
    clone.restore(json.loads(json.dumps(det.snapshot())))
    a, b = run(det, *second), run(clone, *second)
    assert [f.to_dict() for f in a] == [f.to_dict() for f in b]
    assert sorted(kinds(a)) == ["cross_server_flow", "new_destination"]


def test_findings_never_carry_argument_text() -> None:
    det = ExfiltrationDetector()
    out = run(det, make_call("filesystem", "read_file", 0, result_fingerprints=["fp:a"], result_labels=["secret"]),
              make_call("gmail", "send_email", 1, args_fingerprints=["fp:a"], args_labels=["secret"],
                        args_json='{"body": "AKIAABCDEFGHIJKLMNOP"}'))
    assert out
    assert "AKIA" not in json.dumps([f.to_dict() for f in out])


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"sketch_similarity": 0}, "exfiltration.sketch_similarity"),
        ({"non_sink_flow_severity": "loud"}, "exfiltration.non_sink_flow_severity"),
        ({"max_sessions_per_agent": 0}, "exfiltration.max_sessions_per_agent"),
        ({"secret_labels": "secret"}, "exfiltration.secret_labels"),
        ({"sesion_ttl_s": 5}, "exfiltration: unknown key sesion_ttl_s"),
        ({"payload_history": 5, "payload_min_samples": 10}, "exfiltration.payload_history"),
    ],
)
def test_config_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(key)):
        ExfiltrationConfig.from_dict(data)


def test_snapshot_restore_keeps_the_payload_baseline() -> None:
    cfg = ExfiltrationConfig(payload_min_samples=10, payload_min_bytes=100)
    det = ExfiltrationDetector(cfg)
    run(det, *[make_call("gmail", "send_email", i, args_bytes=500 + i) for i in range(27)])
    clone = ExfiltrationDetector(cfg)
    clone.restore(json.loads(json.dumps(det.snapshot())))
    probe = [make_call("gmail", "send_email", 100 + i, args_bytes=b) for i, b in enumerate([600, 6000, 520, 90_000])]
    a, b = run(det, *probe), run(clone, *probe)
    assert [f.to_dict() for f in a] == [f.to_dict() for f in b]
    assert [f.evidence["args_bytes"] for f in a] == [6000, 90_000]


SERVERS = [("web", "fetch"), ("filesystem", "read_file"), ("llm", "summarize"), ("gmail", "send_email")]


@st.composite
def sessions(draw):
    """A session of calls drawing fingerprints from a small pool, so flows happen by chance."""
    n = draw(st.integers(1, 12))
    calls = []
    for i in range(n):
        server, tool = draw(st.sampled_from(SERVERS))
        calls.append(make_call(server, tool, i,
                               args_fingerprints=draw(st.lists(st.sampled_from("abcdef"), max_size=2)),
                               result_fingerprints=draw(st.lists(st.sampled_from("abcdef"), max_size=2))))
    return calls


def _reference_flows(calls: list[ToolCall]) -> set[str]:
    """An unbounded, dictionary-only model of the documented semantics: a value's origin is the
    server whose result first carried it; a result inherits the origin of tainted arguments
    (sensitive origins first, then the earliest); values the agent wrote first have no origin;
    a call is a flow when an argument's origin is another server."""
    caps = CapabilityMap()
    origin: dict[str, tuple[str, bool, int]] = {}
    authored: set[str] = set()
    flagged = set()
    for c in calls:
        tainted = [origin[fp] for fp in c.args_fingerprints if fp in origin]
        if any(o[0] != c.server for o in tainted):
            flagged.add(c.span_id)
        authored.update(fp for fp in c.args_fingerprints if fp not in origin)
        own = (c.server, "reads_sensitive" in caps.of(c.server, c.tool), c.time_ns)
        inherited = min(tainted, key=lambda o: (not o[1], o[2])) if tainted else own
        for fp in c.result_fingerprints:
            if fp not in authored and fp not in origin:
                origin[fp] = inherited
    return flagged


@given(sessions())
@settings(max_examples=100, deadline=None)
def test_flows_match_a_simple_reference_model(calls: list[ToolCall]) -> None:
    det = ExfiltrationDetector()
    reported = {f.span_ids[-1] for f in run(det, *calls) if f.evidence["kind"] == "cross_server_flow"}
    assert reported == _reference_flows(calls)


@given(sessions())
@settings(max_examples=100, deadline=None)
def test_no_flow_without_a_value_from_another_servers_result(calls: list[ToolCall]) -> None:
    # Rename every result value so nothing returned can ever reappear in arguments.
    for c in calls:
        c.result_fingerprints = tuple(f"r-{fp}" for fp in c.result_fingerprints)
    det = ExfiltrationDetector()
    assert [f for f in run(det, *calls) if f.evidence["kind"] == "cross_server_flow"] == []


def test_capability_only_sensitive_read_is_low_and_labelled_read_is_medium() -> None:
    det = ExfiltrationDetector()
    (weak,) = run(det, make_call("filesystem", "read_file", 0), make_call("gmail", "send_email", 10))
    assert weak.severity == "low"
    det = ExfiltrationDetector()
    (strong,) = run(det, make_call("filesystem", "read_file", 0, result_labels=["secret"]),
                    make_call("gmail", "send_email", 10))
    assert strong.severity == "medium" and strong.evidence["reads"][0]["labels"] == ["secret"]
