"""Agents with only 10-30 sessions of history: fleet priors from agents with the same tools."""

from __future__ import annotations

import pytest

from toolwatch.detectors.iforest_detector import IsolationForestDetector
from toolwatch.detectors.sequence_detector import SequenceConfig, SequenceDetector
from toolwatch.simulate.evaluate import replay
from toolwatch.simulate.traffic import generate

KINDS = ("sequence_hijack", "exfiltration", "tool_shadowing")


@pytest.fixture(scope="module")
def traffic():
    return generate(seed=77, agents_per_archetype=2, sessions_per_agent=80, attack_rate=0.5, clean_sessions=40,
                    kinds=KINDS, new_agents_per_archetype=2, new_agent_sessions=16)


def newcomer_attacks(traffic):
    return [a for a in traffic.attacks if "-new" in a.agent_id]


def test_new_agents_detect_with_a_fleet_prior_and_not_without(traffic):
    attacks = newcomer_attacks(traffic)
    assert len(attacks) >= 10
    reps_with = replay([SequenceDetector()], traffic)["sequence"]
    reps_without = replay([SequenceDetector(SequenceConfig(use_fleet_prior=False))], traffic)["sequence"]
    r_with, r_without = reps_with.recall_where(attacks), reps_without.recall_where(attacks)
    print(f"newcomer recall: with prior {r_with:.2f}, without {r_without:.2f}; FPR {reps_with.fpr:.4f}")
    assert r_with >= 0.85
    assert r_without <= r_with - 0.3
    assert reps_with.fpr <= 0.005


def test_states_of_newcomers_are_learning_yet_scored(traffic):
    det = SequenceDetector()
    replay([det], traffic)
    states = det.agent_states()
    assert {a for a, s in states.items() if s == "active"} >= {a for a in states if "-new" not in a}
    assert any(s == "learning" for a, s in states.items() if "-new" in a)


def test_forest_group_models_cover_newcomers(traffic):
    det = IsolationForestDetector()
    rep = replay([det], traffic)["iforest"]
    newcomers = [a for a in det.agent_states() if "-new" in a]
    covered = [a for a in newcomers if det._model_key(a, det._state[a]) is not None]
    assert len(covered) == len(newcomers)
    exfil = rep.recall_where([a for a in newcomer_attacks(traffic) if a.kind == "exfiltration"])
    print(f"iforest newcomer exfiltration recall {exfil:.2f}")
    # A floor only: with attacks in half the sessions, peers' baselines absorb some of them
    # (documented in docs/baselines.md); the sequence detector carries newcomers.
    assert exfil >= 0.2
