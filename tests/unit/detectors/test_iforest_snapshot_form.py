"""IsolationForest snapshots: pending session rows as one matrix, windows and model samples with
byte-valued columns apart, model dicts built once. Round trips through JSON, and state in the older
form (a float64 matrix per session, every matrix plain float64) restores to the same detector."""

from __future__ import annotations

import dataclasses
import json

from tests.helpers.iforest_state import main_form
from tests.unit.detectors.test_iforest_ab import SETTINGS, many_agents_batches
from toolwatch.detectors.iforest import ForestParams
from toolwatch.detectors.iforest_detector import ForestConfig, IsolationForestDetector


def make() -> IsolationForestDetector:
    return IsolationForestDetector(ForestConfig(forest=ForestParams(n_estimators=12, max_samples=48), **SETTINGS))


def trained() -> tuple[IsolationForestDetector, list]:
    batches = many_agents_batches()
    det = make()
    cut = len(batches) * 2 // 3
    for b in batches[:cut]:
        det.observe(b)
        for key in det.needs_retrain():
            det.retrain(key)
    return det, batches[cut:]


def findings(det: IsolationForestDetector, batches: list) -> list:
    return [dataclasses.asdict(f) for b in batches for f in det.observe(b)]


def test_new_form_round_trips_and_restores_the_same_detector() -> None:
    det, rest = trained()
    state = det.snapshot()
    agent = next(iter(state["agents"].values()))
    assert {"pending_sessions", "pending_counts", "pending_rows"} <= set(agent) and "pending" not in agent
    assert sum(sum(a["pending_counts"]) for a in state["agents"].values()) > 0  # pending rows were written
    assert any("u1_cols" in a["rows"] for a in state["agents"].values())  # windows were narrowed
    back = make()
    back.restore(json.loads(json.dumps(state)))
    assert json.dumps(back.snapshot()) == json.dumps(state)
    assert findings(back, rest) == findings(det, rest)
    assert json.dumps(back.snapshot()) == json.dumps(det.snapshot())


def test_older_form_restores_the_same_detector() -> None:
    det, rest = trained()
    state = json.loads(json.dumps(det.snapshot()))
    older = main_form(state)
    assert "pending" in next(iter(older["agents"].values()))
    back = make()
    back.restore(older)
    assert json.dumps(back.snapshot()) == json.dumps(_without_tallies(state))  # older forms have none
    assert findings(back, rest) == findings(det, rest)
    agent = next(iter(older["agents"]))
    fresh = make()
    fresh.restore_agent(agent, main_form(json.loads(json.dumps(det.snapshot_agent(agent)))))
    assert json.dumps(fresh.snapshot_agent(agent)) == json.dumps(_without_tallies(det.snapshot_agent(agent)))


def _without_tallies(state: dict) -> dict:
    """``state`` (a snapshot or one agent's) without the group-fit tallies, which older forms lack."""
    state = json.loads(json.dumps(state))
    for agent in state.get("agents", {"": state}).values():
        agent.pop("group_tally", None)
    return state


def test_model_dict_is_built_once() -> None:
    det, _ = trained()
    model = next(iter(det._models.values()))
    assert model.to_dict() is model.to_dict()
    assert json.dumps(model.to_dict()) == json.dumps(model._to_dict())
