"""MarkovModel, fleet priors and session-length statistics on hand-built sequences."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from toolwatch.detectors.sequence import (
    LengthStats, MarkovConfig, MarkovModel, containment, fleet_prior, select_prior,
)
from toolwatch.detectors.sessions import START


def trained(*pairs: tuple[str, str], config: MarkovConfig | None = None) -> MarkovModel:
    m = MarkovModel(config)
    for p, t in pairs:
        m.learn(p, t)
    return m


ABAB = ((START, "a"), ("a", "b"), ("b", "a"), ("a", "b"))


def test_probabilities_match_the_formula_by_hand():
    m = trained(*ABAB)  # uni a:2 b:2, mass 4, V=2; alpha=2, beta=1
    assert m.p_unigram("a") == pytest.approx(7 / 15)
    assert m.p_unigram("zzz") == pytest.approx(1 / 15)
    assert m.prob("a", "b") == pytest.approx(11 / 15)
    assert m.prob("a", "zzz") == pytest.approx(1 / 30)
    assert m.surprisal("a", "zzz") == pytest.approx(math.log2(30))


def test_unseen_tool_is_more_surprising_than_unseen_transition_than_habit():
    m = trained(*(ABAB * 20))
    habit = m.surprisal("a", "b")
    odd_transition = m.surprisal("a", "a")
    unseen_tool = m.surprisal("a", "evil/x")
    assert habit < 1.0 < odd_transition < unseen_tool
    assert m.expected("a") == ["b"]


def test_decay_halves_counts_when_mass_is_exceeded():
    m = trained(*ABAB, config=MarkovConfig(max_mass=4.0))
    assert m.mass == 4.0
    m.learn("b", "a")
    assert m.uni == {"a": 1.5, "b": 1.0}
    assert m.mass == 2.5 and m.out["a"] == 1.0


def test_bounds_hold_with_ever_new_tokens():
    cfg = MarkovConfig(max_tokens=8, max_transitions=12)
    m = MarkovModel(cfg)
    prev = START
    for i in range(500):
        m.learn(prev, f"t{i}")
        prev = f"t{i}"
        assert len(m.uni) <= 8 and m.n_transitions <= 12


def test_round_trip_keeps_every_probability():
    m = trained(*(ABAB * 3), ("b", "c"))
    m2 = MarkovModel.from_dict(m.to_dict())
    for p in (START, "a", "b", "c", "x"):
        for t in ("a", "b", "c", "x"):
            assert m2.prob(p, t) == m.prob(p, t)


def test_fleet_prior_averages_members_and_informs_an_empty_model():
    a = trained(*(ABAB * 10))
    b = trained(*(((START, "a"), ("a", "c")) * 5))
    prior = fleet_prior([a, b])
    assert prior is not None
    assert prior.mass == pytest.approx((a.mass + b.mass) / 2)
    empty = MarkovModel()
    assert empty.surprisal("a", "evil") == 0.0  # no data, no opinion: why learning agents stay silent
    assert empty.surprisal("a", "b", prior) < 2.0 < 8.0 < empty.surprisal("a", "evil", prior)
    assert fleet_prior([]) is None


def test_select_prior_uses_only_agents_with_the_same_tools():
    mail = trained(("^", "mail/read"), ("mail/read", "mail/send"))
    code = trained(("^", "fs/read"), ("fs/read", "fs/write"))
    prior = select_prior({"mail/read"}, {"m": mail, "c": code}, 0.6)
    assert prior is not None and set(prior.uni) == {"mail/read", "mail/send"}
    assert select_prior({"db/query"}, {"m": mail, "c": code}, 0.6) is None
    assert select_prior(set(), {"m": mail}, 0.6) is None
    assert containment(["a", "b"], {"a"}) == 0.5 and containment([], {"a"}) == 0.0


def test_length_stats_limit_tracks_usual_lengths():
    ls = LengthStats()
    for n in [5, 6, 7, 5, 6, 7, 5, 6, 7] * 5:
        ls.add(n)
    assert math.expm1(ls.mean) == pytest.approx(6, rel=0.1)
    assert 6 < ls.limit(3.0, 1) < 20
    assert ls.limit(3.0, 45) == 45
    assert LengthStats.from_dict(ls.to_dict()) == ls


@pytest.mark.parametrize("field,value", [("alpha", 0), ("beta", -1), ("prior_weight", -1), ("max_tokens", 1)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MarkovConfig(**{field: value}).validate()


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.sampled_from("abcdef")), min_size=1, max_size=60),
       st.sampled_from("abcdefz"), st.sampled_from("abcdefz"))
def test_probabilities_are_proper(pairs, prev, tok):
    m = trained(*pairs, config=MarkovConfig(max_mass=30.0, max_tokens=4, max_transitions=6))
    p = m.prob(prev, tok)
    assert 0.0 < p <= 1.0
    vocab = set(m.uni) | {"z-unseen"}
    # Over the known vocabulary plus one unseen token the distribution never exceeds 1.
    assert sum(m.prob(prev, t) for t in vocab) <= 1.0 + 1e-9


def test_fleet_prior_with_some_rows_reads_exactly_as_the_full_one():
    a = trained(*(ABAB * 10), ("b", "c"))
    b = trained(*(((START, "a"), ("a", "c")) * 5))
    c = trained(("c", "a"), ("a", "a"))
    full = fleet_prior([a, b, c])
    rows = (START, "a", "x")  # "x": a row no member has
    part = fleet_prior([a, b, c], rows=rows)
    assert part.uni == full.uni and part.mass == full.mass
    assert set(part.bi) == {START, "a"} and all(part.bi[p] == full.bi[p] for p in part.bi)
    agent = trained(*ABAB)
    for p in rows:
        assert part.expected(p) == full.expected(p)
        for t in ("a", "b", "c", "x"):
            assert part.prob(p, t) == full.prob(p, t)
            assert agent.surprisal(p, t, part) == agent.surprisal(p, t, full)
    # A row it was not asked for is an error, not an unseen row's smaller probability.
    with pytest.raises(LookupError, match="'b'"):
        part.prob("b", "c")
    with pytest.raises(LookupError, match="'b'"):
        agent.surprisal("b", "c", part)
