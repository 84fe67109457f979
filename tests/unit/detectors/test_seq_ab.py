"""A/B: the sequence detector against main's (``tests/helpers/sequence_main.py``) on the benches'
fleet and random traffic. With never-seen tools never learned (``learn_novel_sessions=0``, main's
rule) findings and margins must be identical: the cached peer selection and the one-recount fleet
prior change speed only. With the rule on, only never-seen tools' findings may differ."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import sequence_main
from toolwatch.detectors.events import Batch
from toolwatch.detectors.sequence_detector import SequenceConfig, SequenceDetector

ROOT = Path(__file__).resolve().parents[3]
BATCH = 500


@pytest.fixture(scope="module")
def stages():
    sys.path.insert(0, str(ROOT / "bench"))  # stages.py imports workloads.py from its own folder
    try:
        spec = importlib.util.spec_from_file_location("bench_stages_seq_ab", ROOT / "bench" / "stages.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return mod


def run(det, calls):
    found, margins = [], []
    for i in range(0, len(calls), BATCH):
        chunk = calls[i : i + BATCH]
        f, m = det.observe_scored(Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns))
        found += f
        margins.append(m)
    return found, np.concatenate(margins)


def as_old(f) -> dict:
    """A finding as main's detector writes it: one dedup key per session, no learning evidence."""
    d = f.to_dict()
    if d["evidence"].get("unseen_tool"):
        d["dedup_key"] = f"sequence:{f.agent_id}:{f.session_id}"
    return d


CONFIGS = {
    "default": {},
    # Agents leave learning early and in numbers, so priors, peer selection and maturing all churn.
    "quick": {"min_calls": 40, "min_sessions": 3},
    # Random traffic hops between 6 tools uniformly: nothing reaches 9 bits, so alert lower.
    "low": {"min_calls": 40, "min_sessions": 3, "threshold_bits": 2.9},
}


@pytest.mark.parametrize("workload,n,config", [
    ("fleet", 60_000, "default"), ("fleet", 60_000, "quick"), ("random", 20_000, "default"),
    ("random", 20_000, "low"),
])
def test_same_findings_and_margins_as_main_with_the_novel_rule_off(stages, workload, n, config):
    _, calls = stages.workload(n, BATCH, 75_000, workload)
    new_f, new_m = run(SequenceDetector(SequenceConfig(**CONFIGS[config], learn_novel_sessions=0)), calls)
    old_f, old_m = run(sequence_main.SequenceDetector(sequence_main.SequenceConfig(**CONFIGS[config])), calls)
    if config != "default" or workload == "fleet":  # findings to compare, some against fleet priors
        assert len(old_f) > 20 and any(f.evidence.get("basis") == "fleet_prior" for f in old_f)
    assert [as_old(f) for f in new_f] == [f.to_dict() for f in old_f]
    np.testing.assert_array_equal(new_m, old_m)


@pytest.mark.parametrize("rate", [75_000, 5])
def test_with_the_novel_rule_on_only_never_seen_tools_differ(stages, rate):
    # A never-seen tool is learned only from sessions that have ended: at the benches' 75,000
    # spans/s of event time these 100,000 calls last 1.3 s, so no session idles out (30 min) and
    # nothing is learned; at 5/s they last 5.5 hours.
    _, calls = stages.workload(100_000, BATCH, rate, "fleet")
    new_f, _ = run(SequenceDetector(), calls)
    old_f, _ = run(sequence_main.SequenceDetector(), calls)
    unseen = {(f.agent_id, f.server, f.tool) for f in old_f if f.evidence.get("unseen_tool")}

    def others(found):
        return [f.to_dict() for f in found if (f.agent_id, f.server, f.tool) not in unseen]

    assert others(new_f) == others(old_f)
    assert len(new_f) < len(old_f) if rate < 1000 else len(new_f) <= len(old_f)


@given(st.lists(st.floats(25.0, 1e6), min_size=1, max_size=40))
def test_peer_limit_median_is_numpys(limits):
    """The peers' session-length limit is now ``statistics.median``: the same float as main's np.median."""
    from statistics import median
    assert float(median(limits)) == float(np.median(limits))


@pytest.mark.parametrize("seed,start_tool", [(s, False) for s in range(6)] + [(s, True) for s in range(3)])
def test_learning_agents_sessions_ending_inside_a_batch_read_the_same_prior_as_main(seed, start_tool):
    """A learning agent's prior holds only the rows its calls in the batch can read (``_reachable_prevs``):
    here sessions begin, idle out, are pushed out and come back under the same id inside batches
    (at most 3 open, 60 s idle), and every score must still be main's (a row left out would raise)."""
    import conformance as C
    from toolwatch.detectors.events import ToolCall

    rng = np.random.default_rng(seed)
    cfg = {"min_calls": 60, "min_sessions": 8, "max_open_sessions": 3, "session_idle_s": 60.0,
           "threshold_bits": 4.0}
    peers = [c for k, name in enumerate(("p1", "p2", "p3")) for c in C.routine_traffic(name, 30, seed=k)]
    peers.sort(key=lambda c: c.time_ns)
    # start_tool: a tool named like the session-start token ("^"), which a vocabulary leaves out
    # unless a call of the batch names it.
    toks = list(C.TOKENS) + ["evil/exfiltrate"] + (["^"] * 3 if start_tool else [])
    t = C.T0 + 10**6 * C.S
    newcomers = []
    for i in range(1200):
        # Phases: quiet (1 s apart: nothing idles out; sessions end by being pushed out), slow
        # (90 s apart, two sessions per agent: they idle out and come back under the same id, with
        # no new session id in the batch) and mixed.
        phase = (i // 150) % 3
        t += int((1 if phase == 0 else 90 if phase == 1 else rng.choice([1, 5, 30, 90])) * C.S)
        tok = toks[int(rng.integers(len(toks)))]
        server, tool = tok.split("/", 1) if "/" in tok else ("", tok)
        if phase == 1:
            sid = f"s{int(rng.integers(2))}"
        else:
            sid = f"s{int(rng.integers(6))}" if rng.random() < 0.7 else f"fresh{i}"
        newcomers.append(ToolCall(time_ns=t, agent_id=f"n{i % 4}", tool=tool, server=server,
                                  session_id=sid, span_id=f"x{i}", trace_id="x"))
    new = SequenceDetector(SequenceConfig(**cfg, learn_novel_sessions=0))
    old = sequence_main.SequenceDetector(sequence_main.SequenceConfig(**cfg))
    for det in (new, old):
        C.feed(det, peers)
    assert set(new.agent_states().values()) == {"active"}
    sizes = rng.integers(1, 40, size=200)
    found = {"new": [], "old": []}
    i = 0
    for size in sizes:
        chunk = newcomers[i : i + int(size)]
        if not chunk:
            break
        i += int(size)
        for name, det in (("new", new), ("old", old)):
            f, m = det.observe_scored(Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns))
            found[name].append(([as_old(x) if name == "new" else x.to_dict() for x in f], m))
    assert any(x["evidence"]["basis"] == "fleet_prior" for f, _ in found["old"] for x in f)
    for (fn, mn), (fo, mo) in zip(found["new"], found["old"]):
        assert fn == fo
        np.testing.assert_array_equal(mn, mo)
    # main keeps no never-seen-tool bookkeeping ("novel", "dirty"): the rest must be the same
    mine = {a: {k: v for k, v in new.snapshot_agent(a).items() if k not in ("novel", "dirty")} for a in new.agents()}
    assert mine == {a: old.snapshot_agent(a) for a in old.agents()}


@pytest.mark.parametrize("config", ["default", "quick"])
def test_restored_midway_it_goes_on_as_without_the_restart(stages, config):
    """A snapshot restored into a new detector (JSON in between, as the store keeps it) goes on
    with the same findings, margins (bit for bit) and state as the detector that was never
    stopped: the restored keys are re-made with the new detector's token objects (``_tokens``)."""
    import json

    _, calls = stages.workload(40_000, BATCH, 75_000, "fleet")
    cfg = SequenceConfig(**CONFIGS[config])
    kept = SequenceDetector(cfg)
    first, rest = calls[:24_000], calls[24_000:]
    run(kept, first)
    restored = SequenceDetector(cfg)
    restored.restore(json.loads(json.dumps(kept.snapshot())))
    assert restored.snapshot() == kept.snapshot()
    got_f, got_m = run(restored, rest)
    want_f, want_m = run(kept, rest)
    assert len(want_f) > 5 and [f.to_dict() for f in got_f] == [f.to_dict() for f in want_f]
    assert got_m.tobytes() == want_m.tobytes()
    assert json.dumps(restored.snapshot()) == json.dumps(kept.snapshot())  # key order too
    own = restored._tokens
    for a in restored.agents():
        m = restored._state[a].model
        keys = list(m.uni) + list(m.bi) + list(m.out) + [t for r in m.bi.values() for t in r]
        assert all(own.get(k) is k for k in keys if k != "^")


def test_a_full_token_table_starts_over_and_nothing_else_changes(stages, monkeypatch):
    """``_tokens`` is bounded: when it is full it starts over, so a model keeps keys made with an
    older object; lookups then compare characters. Findings and margins stay main's."""
    from toolwatch.detectors import sequence_detector

    monkeypatch.setattr(sequence_detector, "_TOKENS_MAX", 7)
    _, calls = stages.workload(30_000, BATCH, 75_000, "fleet")
    det = SequenceDetector(SequenceConfig(**CONFIGS["quick"], learn_novel_sessions=0))
    new_f, new_m = run(det, calls)
    old_f, old_m = run(sequence_main.SequenceDetector(sequence_main.SequenceConfig(**CONFIGS["quick"])), calls)
    assert len(det._tokens) <= 7
    assert len(old_f) > 20 and [as_old(f) for f in new_f] == [f.to_dict() for f in old_f]
    assert new_m.tobytes() == old_m.tobytes()


@pytest.mark.parametrize("config", ["default", "quick"])
def test_observe_finds_and_learns_what_observe_scored_does(stages, config):
    """``observe`` builds no margins (the daemon reads none): its findings, batch by batch, and the
    state it leaves must be ``observe_scored``'s, novel rule on (its default)."""
    import json

    _, calls = stages.workload(40_000, BATCH, 75_000, "fleet")
    plain, scored = SequenceDetector(SequenceConfig(**CONFIGS[config])), SequenceDetector(SequenceConfig(**CONFIGS[config]))
    n = 0
    for i in range(0, len(calls), BATCH):
        chunk = calls[i : i + BATCH]
        got = plain.observe(Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns))
        want, margins = scored.observe_scored(Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns))
        assert [f.to_dict() for f in got] == [f.to_dict() for f in want] and len(margins) == len(chunk)
        n += len(got)
    assert n > 20
    assert json.dumps(plain.snapshot()) == json.dumps(scored.snapshot())
