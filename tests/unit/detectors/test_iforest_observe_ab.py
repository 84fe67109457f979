"""A/B: the IsolationForest detector's per-call pass (features, grouping by agent, priors, the learning
loop) against main's before the batch-level feature pass (``tests/helpers/iforest_observe_main.py``
with ``features_main.py``), on the bench's fleet traffic and on the simulator's.

Scoring (``_score``, ``_bank_margins``, ``_hits``, ``_bank_for``) is not what this compares (the other
A/B tests do): the reference borrows the live methods, so it stays a reference of the per-call pass
whatever the scoring code becomes. Findings (every field, in order), margins (bit for bit), agent
states and snapshots must be identical: agents with models of their own, agents scored by group
models with fleet priors, sessions closed by the open-session bound and by idleness, destinations,
fingerprints, frozen agents, a restore mid-stream.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from tests.helpers import iforest_observe_main as main_det
from tests.helpers.bench_workloads import fleet_calls
from tests.helpers.iforest_state import main_form
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.iforest import ForestParams
from toolwatch.detectors.iforest_detector import ForestConfig, IsolationForestDetector
from toolwatch.simulate.traffic import generate

SETTINGS = {"min_rows": 40, "max_rows": 300, "retrain_every": 120, "group_retrain_every": 400, "warm_calls": 20,
            "max_pending_rows": 8, "group_max_alert_rate": 1.0}
"""``group_max_alert_rate`` 1: main's pass has no group misfit check, and a rate of 1 never retires a group."""
SCORING = ("_score", "_bank_margins", "_hits", "_bank_for")


def _pair(**over: Any) -> tuple[IsolationForestDetector, Any]:
    cfg = ForestConfig(forest=ForestParams(n_estimators=8, max_samples=32), **{**SETTINGS, **over})
    new = IsolationForestDetector(cfg)
    ref = main_det.IsolationForestDetector(cfg)
    for name in SCORING:
        setattr(ref, name, getattr(IsolationForestDetector, name).__get__(ref))
    return new, ref


def _batches(calls: list[ToolCall], seed: int) -> list[Batch]:
    rnd = random.Random(seed)
    out, i = [], 0
    while i < len(calls):
        chunk = calls[i : i + rnd.choice([1, 3, 40, 250, 500, 500])]
        out.append(Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns))
        i += len(chunk)
    return out


def _same_findings(f_new: list[Any], f_ref: list[Any], i: int) -> int:
    assert [dataclasses.asdict(f) for f in f_new] == [dataclasses.asdict(f) for f in f_ref], f"batch {i}"
    return len(f_new)


def _run(calls: list[ToolCall], seed: int, **over: Any) -> tuple[int, int]:
    new, ref = _pair(**over)
    batches = _batches(calls, seed)
    n_findings = max_models = 0
    for i, b in enumerate(batches):
        if i % 3 == 2:  # the daemon's call: bounded walk, no margins
            n_findings += _same_findings(new.observe(b), ref.observe(b), i)
        else:
            (f_new, m_new), (f_ref, m_ref) = new.observe_scored(b), ref.observe_scored(b)
            n_findings += _same_findings(f_new, f_ref, i)
            assert m_new.tobytes() == m_ref.tobytes(), f"batch {i}: margins differ"
        assert new.agent_states() == ref.agent_states(), f"batch {i}"
        max_models = max(max_models, len(new._models))
        if i % 25 == 24:
            assert json.dumps(main_form(new.snapshot())) == json.dumps(main_form(ref.snapshot())), f"batch {i}: snapshots differ"
        if i == len(batches) // 4:
            agents = sorted(new.agent_states())
            new.freeze(agents[0])
            ref.freeze(agents[0])
        if i == len(batches) // 2:
            state = json.loads(json.dumps(new.snapshot()))
            new, ref = _pair(**over)
            new.restore(state)
            ref.restore(main_form(json.loads(json.dumps(state))))
    assert json.dumps(main_form(new.snapshot())) == json.dumps(main_form(ref.snapshot()))
    return n_findings, max_models


@pytest.mark.parametrize("over", [{"max_open_sessions": 8}, {"max_open_sessions": 3}, {"session_idle_s": 0.02}],
                         ids=["open-sessions-8", "open-sessions-3", "idle-sessions"])
def test_fleet_findings_margins_and_snapshots_equal_mains(over: dict[str, Any]) -> None:
    calls = fleet_calls(24_000, seed=5, anomaly_rate=0.01, rate=20_000.0)
    n_findings, n_models = _run(calls, 5, **over)
    assert n_findings > 20 and n_models > 20  # real findings, agents with models of their own and groups


@pytest.mark.parametrize("seed", [1, 2])
def test_simulated_traffic_equals_mains(seed: int) -> None:
    traffic = generate(seed, agents_per_archetype=2, sessions_per_agent=30, clean_sessions=12,
                       new_agents_per_archetype=2, new_agent_sessions=10)
    n_findings, n_models = _run(traffic.calls, seed)
    assert n_findings > 5 and n_models > 3


def test_equal_tokens_become_one_object_in_the_models_and_sessions() -> None:
    """Each call brings its own copy of its token; the detector keeps one object per token (so its
    dict lookups match by identity), in what it learns and in what it restores."""
    det = IsolationForestDetector(ForestConfig(**SETTINGS))
    t0 = 1_780_000_000 * 10**9

    def call(i: int) -> ToolCall:
        c = ToolCall(agent_id="a", session_id="s", server="fs", tool="read", time_ns=t0 + i * 10**6)
        c.token = "".join(["fs/", "read"])  # a fresh, equal string: as every decoded request brings
        return c

    for i in range(3):
        det.observe(Batch([call(2 * i), call(2 * i + 1)]))
    m = det._state["a"].markov
    (key,) = [t for t in m.uni]
    assert all(k is key for k in m.bi["fs/read"]) and [k for k in m.out if k == key][0] is key
    assert det._state["a"].ctx.sessions.open["s"].prev is key
    state = json.loads(json.dumps(det.snapshot()))
    again = IsolationForestDetector(ForestConfig(**SETTINGS))
    again.restore(state)
    m2 = again._state["a"].markov
    keys = [*m2.uni, *m2.bi, *m2.bi["fs/read"], *m2.out, again._state["a"].ctx.sessions.open["s"].prev]
    assert len({id(k) for k in keys if k == "fs/read"}) == 1
