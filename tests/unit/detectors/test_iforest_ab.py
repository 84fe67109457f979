"""A/B: the IsolationForest detector against main's (``tests/helpers/iforest_detector_main.py`` with
``iforest_main.py``), same traffic, same batches.

Findings (order, every field), margins (bit for bit), agent states and snapshots (byte for byte,
once this detector's base64 matrices are written as main's nested lists) must be identical: models refitted inline many times (so bank slots are reused), batches of one
row up to hundreds, agents scored by a group model, a restored model of another geometry (scored
outside the bank beside banked ones), per-agent save/restore/drop and freeze mid-stream.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from tests.helpers import iforest_detector_main as main_det
from tests.helpers import iforest_main
from tests.helpers.iforest_state import main_form
from toolwatch.detectors.array_codec import decode_matrix
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.iforest import ForestParams
from toolwatch.detectors.iforest_detector import ForestConfig, IsolationForestDetector
from toolwatch.simulate.traffic import generate

SETTINGS = {"min_rows": 60, "max_rows": 400, "retrain_every": 150, "group_retrain_every": 500, "warm_calls": 30}


def _pair(n_estimators: int, max_samples: int) -> tuple[IsolationForestDetector, Any]:
    # main's detector has no group misfit check: a rate of 1 never retires a group.
    new = IsolationForestDetector(ForestConfig(forest=ForestParams(n_estimators=n_estimators, max_samples=max_samples),
                                               group_max_alert_rate=1.0, **SETTINGS))
    ref = main_det.IsolationForestDetector(main_det.ForestConfig(
        forest=iforest_main.ForestParams(n_estimators=n_estimators, max_samples=max_samples), **SETTINGS))
    return new, ref


def _batches(calls: list[ToolCall], seed: int) -> list[Batch]:
    rnd = random.Random(seed)
    out, i = [], 0
    while i < len(calls):
        size = rnd.choice([1, 1, 2, 7, 40, 133, 300, 512])
        chunk = calls[i : i + size]
        out.append(Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns))
        i += size
    return out


def _same_findings(a: list[Any], b: list[Any]) -> None:
    assert [dataclasses.asdict(f) for f in a] == [dataclasses.asdict(f) for f in b]


def _plain(state: Any) -> Any:
    """A snapshot with every base64 matrix (``array_codec``) written as nested lists, as main writes them."""
    return main_form(state, lambda m: decode_matrix(m, "test").tolist())


def _same_snapshot(new: Any, ref: Any) -> bool:
    return json.dumps(_plain(new)) == json.dumps(ref)


def _other_geometry(d: dict[str, Any]) -> dict[str, Any]:
    """An agent's snapshot whose model has fewer trees: it no longer fits the forest bank."""
    d = json.loads(json.dumps(d))
    d["model"]["params"]["n_estimators"] = 7
    return d


@pytest.mark.parametrize("seed", [1, 2])
def test_findings_margins_and_snapshots_equal_mains(seed: int) -> None:
    traffic = generate(seed, agents_per_archetype=2, sessions_per_agent=40, clean_sessions=15,
                       new_agents_per_archetype=1, new_agent_sessions=12)
    calls = traffic.calls
    new, ref = _pair(12, 48)
    batches = _batches(calls, seed)
    n_findings = 0
    for i, b in enumerate(batches):
        f_new, m_new = new.observe_scored(b)
        f_ref, m_ref = ref.observe_scored(b)
        _same_findings(f_new, f_ref)
        assert m_new.tobytes() == m_ref.tobytes(), f"batch {i}: margins differ"
        n_findings += len(f_new)
        assert new.agent_states() == ref.agent_states()
        if i % 37 == 36:
            assert _same_snapshot(new.snapshot(), ref.snapshot()), f"batch {i}: snapshots differ"
        agents = sorted(new.agent_states())
        if i == len(batches) // 3 and agents:
            odd = next(a for a in agents if a in new._models)  # a model outside the bank from now on
            new.restore_agent(odd, _other_geometry(new.snapshot_agent(odd)))
            ref.restore_agent(odd, _other_geometry(ref.snapshot_agent(odd)))
            moved = agents[-1]
            snap_new, snap_ref = new.snapshot_agent(moved), ref.snapshot_agent(moved)
            assert _same_snapshot(snap_new, snap_ref)
            new.drop_agent(moved)
            ref.drop_agent(moved)
            new.restore_agent(moved, snap_ref)  # each restores the other's state
            ref.restore_agent(moved, _plain(snap_new))
            new.freeze(agents[0])
            ref.freeze(agents[0])
        if i == 2 * len(batches) // 3:
            state = json.loads(json.dumps(ref.snapshot()))  # main's nested lists: state saved before base64
            new, ref = _pair(12, 48)
            new.restore(state)
            ref.restore(json.loads(json.dumps(state)))
    assert n_findings > 20 and len(new._models) > 5  # the comparison saw real findings and models
    assert _same_snapshot(new.snapshot(), ref.snapshot())


def many_agents_batches() -> list[Batch]:
    """Fifty agents' traffic with rare far-out-of-range calls, in batches (also test_iforest_bounded_walk's)."""
    rnd = random.Random(7)
    t = 1_780_000_000 * 10**9
    calls = []
    for i in range(12_000):
        a = rnd.randrange(50)
        t += rnd.randrange(1, 3_000_000)
        tool = rnd.choice(["read", "write", "list", "search"]) if rnd.random() > 0.002 else "exfil"
        calls.append(ToolCall(agent_id=f"agent-{a}", session_id=f"s{a}-{i // 40}", server=f"srv{a % 3}", tool=tool,
                              time_ns=t, args_bytes=rnd.randrange(10, 400) * (50 if tool == "exfil" else 1),
                              result_bytes=rnd.randrange(10, 4000)))
    return _batches(calls, 3)


def test_many_agents_scored_in_the_bank_equal_mains() -> None:
    """Fifty agents, every row scored in the bank (the daemon's case once models are fitted)."""
    new, ref = _pair(10, 32)
    for b in many_agents_batches():
        f_new, m_new = new.observe_scored(b)
        f_ref, m_ref = ref.observe_scored(b)
        _same_findings(f_new, f_ref)
        assert m_new.tobytes() == m_ref.tobytes()
    assert sum(a in new._models for a in new.agent_states()) >= 40
    assert _same_snapshot(new.snapshot(), ref.snapshot())


def test_observe_equals_mains_observe() -> None:
    """``observe`` itself (the daemon's call: bounded walk, no margins put back in batch order) finds
    what main's ``observe`` finds, every field, and leaves the same state."""
    new, ref = _pair(10, 32)
    n_findings = 0
    for b in many_agents_batches():
        f_new, f_ref = new.observe(b), ref.observe(b)
        _same_findings(f_new, f_ref)
        n_findings += len(f_new)
    assert n_findings > 5
    assert new.agent_states() == ref.agent_states()
    assert _same_snapshot(new.snapshot(), ref.snapshot())
