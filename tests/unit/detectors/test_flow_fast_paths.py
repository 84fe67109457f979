"""Exfiltration and hijack take shortcuts for common calls inside ``observe``; ``observe_call``
takes none. Both must reach the same findings and the same state on the same calls."""

from __future__ import annotations

import json
import random

from toolwatch.detectors.capabilities import CapabilityMap
from toolwatch.detectors.events import Batch, Finding, ToolCall
from toolwatch.detectors.exfiltration import ExfiltrationConfig, ExfiltrationDetector
from toolwatch.detectors.hijack import HijackConfig, HijackDetector

S = 1_000_000_000
T0 = 1_700_000_000 * S
TOOLS = [("files", "read_file"), ("files", "write_file"), ("web", "fetch"), ("mail", "send"), ("db", "query"),
         ("git", "commit"), ("vault", "get_secret"), ("", "send_email")]


def traffic(seed: int, n: int) -> list[ToolCall]:
    """Mostly bare calls (as the bench sends), with labels, values, destinations and time jumps mixed in."""
    rnd = random.Random(seed)
    t = T0
    calls = []
    for i in range(n):
        t += rnd.choice([1_000, S, 30 * S, 200 * S]) if rnd.random() < 0.98 else 5_000 * S
        server, tool = rnd.choice(TOOLS)
        rich = rnd.random() < 0.3
        calls.append(ToolCall(
            time_ns=t, agent_id=f"a{rnd.randrange(3)}", server=server, tool=tool,
            session_id=rnd.choice(["s1", "s2", "s3"]), trace_id=rnd.choice(["", "t1"]), span_id=f"sp{i}",
            args_bytes=rnd.choice([100, 120, 90, 200_000]),
            args_labels=tuple(rnd.sample(["secret", "pii", "base64", "path"], rnd.randrange(3))),
            result_labels=tuple(rnd.sample(["instructions", "secret", "pii", "url"], rnd.randrange(2))) if rich else (),
            args_fingerprints=(f"fp{rnd.randrange(20)}",) if rich else (),
            result_fingerprints=(f"fp{rnd.randrange(20)}",) if rich else (),
            destinations=(rnd.choice(["https://Evil.example/x", "bob@corp.com", f"new{i}.example"]),) if rich else (),
            result_injection_score=rnd.choice([0.0, 0.0, 0.6, 0.9]) if rich else 0.0,
        ))
    return calls


def as_json(findings: list[Finding]) -> list[str]:
    return [json.dumps(f.to_dict()) for f in findings]


def one_by_one(det, calls: list[ToolCall]) -> list[str]:
    out: list[Finding] = []
    for c in calls:
        found = det.observe_call(c)
        out.extend([found] if isinstance(found, Finding) else found or [])
    return as_json(out)


def in_batches(det, calls: list[ToolCall], size: int) -> list[str]:
    out: list[Finding] = []
    for i in range(0, len(calls), size):
        out.extend(det.observe(Batch(calls=calls[i:i + size])))
    return as_json(out)


def test_exfiltration_batches_find_what_single_calls_find() -> None:
    calls = traffic(1, 3_000)
    for cfg in ({}, {"flow_scope": "session", "session_ttl_s": 100}, {"payload_min_samples": 3, "payload_history": 5}):
        single = ExfiltrationDetector(ExfiltrationConfig.from_dict(cfg), CapabilityMap())
        batched = ExfiltrationDetector(ExfiltrationConfig.from_dict(cfg), CapabilityMap())
        expected = one_by_one(single, calls)
        assert in_batches(batched, calls, 250) == expected
        kinds = {json.loads(f)["evidence"]["kind"] for f in expected}
        assert {"sensitive_then_send", "cross_server_flow", "secret_in_outbound_args",
                "large_outbound_payload", "new_destination"} <= kinds
        assert json.dumps(batched.snapshot()) == json.dumps(single.snapshot())


def test_hijack_batches_find_what_single_calls_find() -> None:
    calls = traffic(2, 3_000)
    for cfg in ({}, {"arm_scope": "session", "window_calls": 4}, {"session_kind": "agent", "max_items_per_kind": 3}):
        single = HijackDetector(HijackConfig.from_dict(cfg), CapabilityMap())
        batched = HijackDetector(HijackConfig.from_dict(cfg), CapabilityMap())
        expected = one_by_one(single, calls)
        assert in_batches(batched, calls, 250) == expected
        assert len(expected) > 20
        assert json.dumps(batched.snapshot()) == json.dumps(single.snapshot())


def test_bare_calls_keep_the_agent_scope_alive() -> None:
    """A call with nothing to follow still counts as use: a value read an hour and a half ago
    is still followed when the agent kept working in between."""
    def calls(keep_alive: bool) -> list[ToolCall]:
        out = [ToolCall(time_ns=T0, agent_id="a", server="files", tool="read_file", span_id="r",
                        result_fingerprints=("fp:x",))]
        if keep_alive:
            out.append(ToolCall(time_ns=T0 + 3_000 * S, agent_id="a", server="git", tool="commit", span_id="k"))
        out.append(ToolCall(time_ns=T0 + 5_400 * S, agent_id="a", server="mail", tool="send", span_id="s",
                            args_fingerprints=("fp:x",)))
        return out

    for keep_alive in (True, False):
        det = ExfiltrationDetector()
        found = [f for f in det.observe(Batch(calls=calls(keep_alive))) if f.evidence["kind"] == "cross_server_flow"]
        assert len(found) == (1 if keep_alive else 0)


def test_sensitive_then_send_cites_every_recent_read_and_shares_nothing_mutable_by_accident() -> None:
    det = ExfiltrationDetector()
    reads = [ToolCall(time_ns=T0 + i * S, agent_id="a", server="db", tool="query", span_id=f"r{i}") for i in range(20)]
    sends = [ToolCall(time_ns=T0 + (30 + i) * S, agent_id="a", server="mail", tool="send", span_id=f"s{i}")
             for i in range(2)]
    found = det.observe(Batch(calls=reads + sends))
    assert [f.evidence["kind"] for f in found] == ["sensitive_then_send"] * 2
    first = found[0]
    assert [r["span_id"] for r in first.evidence["reads"]] == [f"r{i}" for i in range(4, 20)]
    assert first.span_ids == tuple(f"r{i}" for i in range(4, 20)) + ("s0",)
    assert first.reason == "outbound call mail/send 26s after a sensitive read from db/query in the same session"
    assert first.dedup_key == "exfiltration:sensitive_then_send:a::mail/send"
    assert first.evidence["reads"] == found[1].evidence["reads"]
    # The read entries are not stored: a snapshot restores into a detector that finds the same.
    restored = ExfiltrationDetector()
    restored.restore(json.loads(json.dumps(det.snapshot())))
    again = ToolCall(time_ns=T0 + 40 * S, agent_id="a", server="mail", tool="send", span_id="s9")
    assert as_json(restored.observe(Batch(calls=[again]))) == as_json(det.observe(Batch(calls=[again])))


def test_destination_memo_stays_bounded_when_fed_one_call_at_a_time() -> None:
    """``observe`` clears its per-batch memo of destinations; ``observe_call`` never does, so the memo
    has a bound of its own, and what it answers after being cleared is what batches of one call find."""
    cfg = {"destination_warmup_calls": 3}
    fed, batched = (ExfiltrationDetector(ExfiltrationConfig(**cfg), CapabilityMap()) for _ in range(2))
    kinds = set()
    for i in range(5_000):
        call = ToolCall(time_ns=T0 + i * S, agent_id="a", server="mail", tool="send", span_id=f"sp{i}",
                        destinations=(f"https://Host{i % 4_500}.example/p", f"bob{i}@corp.com"))
        got = [f.to_dict() for f in fed.observe_call(call)]
        assert got == [f.to_dict() for f in batched.observe(Batch(calls=[call]))]
        assert len(fed._dest_memo) <= 4_096
        kinds.update(f["evidence"]["kind"] for f in got)
    assert "new_destination" in kinds
    assert json.dumps(fed.snapshot()) == json.dumps(batched.snapshot())
