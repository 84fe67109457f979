"""Refits are spread: the retrainer fits at most ``max_models`` keys per run, most urgent first, so
agents that come due together are refitted a few at a time, every one in turn."""

from __future__ import annotations

import random

import numpy as np
import pytest

from toolwatch.collector.config import Config, ConfigError
from toolwatch.collector.retrain import Retrainer
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.iforest import ForestParams
from toolwatch.detectors.iforest_detector import GROUPS, ForestConfig, IsolationForestDetector


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _calls(agents: int, n: int, seed: int = 1) -> list[ToolCall]:
    rnd = random.Random(seed)
    t = 1_780_000_000 * 10**9
    out = []
    for i in range(n):
        a = i % agents
        t += rnd.randrange(1, 2_000_000)
        out.append(ToolCall(agent_id=f"agent-{a:02d}", session_id=f"s{a}-{i // (agents * 5)}", server="srv",
                            tool=rnd.choice(["read", "write", "list"]), time_ns=t,
                            args_bytes=rnd.randrange(10, 400), result_bytes=rnd.randrange(10, 4000)))
    return out


def _feed(det: IsolationForestDetector, calls: list[ToolCall]) -> None:
    for i in range(0, len(calls), 100):
        det.observe(Batch(calls=calls[i : i + 100]))


def _detector() -> IsolationForestDetector:
    return IsolationForestDetector(ForestConfig(forest=ForestParams(n_estimators=5, max_samples=32), min_rows=40,
                                                max_rows=200, retrain_every=60, warm_calls=10, max_open_sessions=2,
                                                auto_retrain=False))


def test_retrain_order_puts_first_models_then_groups_then_the_most_overdue_first() -> None:
    det = _detector()
    _feed(det, _calls(6, 1200))
    due = det.needs_retrain()
    assert {f"agent-{a:02d}" for a in range(6)} <= set(due)
    det.retrain([k for k in due if k not in ("agent-00", GROUPS)])  # agent-00 still has no model
    _feed(det, _calls(6, 900, seed=2))
    for i, a in enumerate(["agent-01", "agent-02", "agent-03", "agent-04", "agent-05"]):
        det._state[a].since_fit = 100 + 10 * i  # agent-05 the most overdue
    order = det.retrain_order(["agent-01", "agent-02", GROUPS, "agent-03", "agent-04", "agent-05", "agent-00"])
    assert order == ["agent-00", GROUPS, "agent-05", "agent-04", "agent-03", "agent-02", "agent-01"]


async def test_agents_due_together_are_fitted_a_few_per_run_each_in_turn() -> None:
    det = _detector()
    clock = Clock()
    runs: list[list[str]] = []
    real = det.retrain

    def retrain(keys: object = None) -> list[str]:
        runs.append(list(keys))  # type: ignore[arg-type]
        clock.now += 0.5  # each run takes half a second of wall time
        return real(keys)  # type: ignore[arg-type]

    det.retrain = retrain  # type: ignore[method-assign]
    rt = Retrainer([det], max_share=0.5, max_models=3, clock=clock)
    calls = _calls(12, 12_000)
    for i in range(0, len(calls), 200):
        det.observe(Batch(calls=calls[i : i + 200]))
        rt(Batch(), [])
        if rt._task is not None:
            await rt._task
        clock.now += 0.2
    assert runs and max(len(r) for r in runs) == 3
    agents = [f"agent-{a:02d}" for a in range(12)]
    assert all(a in det._models for a in agents)
    fits = [k for r in runs for k in r if k != GROUPS]
    counts = [fits.count(a) for a in agents]
    assert min(counts) >= 2 and max(counts) - min(counts) <= 1  # every agent refitted in turn, none starved
    firsts = [k for r in runs[:4] for k in r]  # the first runs make first models, not refits
    assert len(set(firsts) - {GROUPS}) == len([k for k in firsts if k != GROUPS])


async def test_without_a_cap_a_run_fits_every_key_asked_for() -> None:
    det = _detector()
    _feed(det, _calls(8, 2000))
    asked = det.needs_retrain()
    rt = Retrainer([det], max_share=1.0)
    rt(Batch(), [])
    assert rt._task is not None
    await rt._task
    assert rt.fitted >= len(asked) - 1 and all(f"agent-{a:02d}" in det._models for a in range(8))


def test_max_models_outside_its_range_is_a_named_config_error() -> None:
    cfg = Config()
    cfg.pipeline.retrain_max_models = -1
    with pytest.raises(ConfigError, match="pipeline.retrain_max_models"):
        cfg.validate()
    with pytest.raises(ValueError, match="max_models"):
        Retrainer([], max_models=0)
    assert Config().pipeline.retrain_max_models >= 1
    np.testing.assert_equal(Config().pipeline.retrain_max_models, 4)
