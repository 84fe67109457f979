"""The peer selections of learning agents' fleet priors (``_PeerCache``) follow agents maturing
without being made again: each must list exactly the mature agents that qualify, in mature order,
as one made from scratch does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import conformance as C
from tests.helpers import sequence_main
from toolwatch.detectors.sequence import LengthStats
from toolwatch.detectors.sequence_detector import (
    SequenceConfig, SequenceDetector, _Agent, _joined, _keeps_own_limit, _PeerCache)

NEED = 0.6


def agent(*tokens: str) -> _Agent:
    a = _Agent(SequenceConfig())
    for t in tokens:
        a.model.learn("^", t)
    return a


def select(cache: _PeerCache, vocab: frozenset[str]) -> list[_Agent]:
    """What ``SequenceDetector._fleet`` does with the cache (made when missing)."""
    got = cache.similar.get(vocab)
    if got is None:
        if cache.vocabs is None:
            cache.vocabs = [(p, frozenset(p.model.vocab)) for p in cache.mature]
        similar = [p for p, v in cache.vocabs if len(vocab & v) / len(vocab) >= NEED]
        got = cache.similar[vocab] = (similar, [p.model for p in similar])
    return got[0]


def fresh(mature: list[_Agent], vocab: frozenset[str]) -> list[_Agent]:
    cache = _PeerCache()
    cache.check_mature(mature, NEED)
    return select(cache, vocab)


def test_a_joining_agent_keeps_the_selections_it_does_not_qualify_for_and_redoes_the_others():
    fs, git = agent("fs/read", "fs/write"), agent("git/commit", "git/push")
    cache = _PeerCache()
    cache.check_mature([fs, git], NEED)
    v_fs, v_git = frozenset({"fs/read", "fs/write"}), frozenset({"git/commit", "git/push"})
    assert select(cache, v_fs) == [fs] and select(cache, v_git) == [git]
    kept = cache.similar[v_git]
    fs2 = agent("fs/write", "fs/read", "fs/stat")
    mature = [fs, fs2, git]  # joins in the middle: mature order is the detector's agent order
    cache.check_mature(mature, NEED)
    assert v_fs not in cache.similar and cache.similar[v_git] is kept
    assert select(cache, v_fs) == [fs, fs2] == fresh(mature, v_fs)
    assert [a for a, _ in cache.vocabs] == mature


def test_any_other_change_of_the_mature_agents_forgets_every_selection():
    a, b = agent("x/1", "x/2"), agent("x/1", "x/3")
    cache = _PeerCache()
    cache.check_mature([a, b], NEED)
    select(cache, frozenset({"x/1"}))
    cache.check_mature([b, a], NEED)  # reordered (an agent state replaced, say)
    assert cache.similar == {} and cache.vocabs is None
    select(cache, frozenset({"x/1"}))
    cache.check_mature([b], NEED)  # one left
    assert cache.similar == {} and cache.vocabs is None


@given(st.lists(st.booleans(), max_size=12), st.lists(st.integers(0, 11), max_size=6))
def test_joined_is_the_agents_added_in_order_or_none(in_old, shuffle):
    new = [agent() for _ in in_old]
    old = [a for a, keep in zip(new, in_old) if keep]
    assert _joined(old, new) == [a for a, keep in zip(new, in_old) if not keep]
    swapped = list(old)
    for i in shuffle:
        if len(swapped) > 1:
            j = i % (len(swapped) - 1)
            swapped[j], swapped[j + 1] = swapped[j + 1], swapped[j]
    if swapped != old:
        assert _joined(swapped, new) is None
    if new:
        assert _joined(old + [agent()], new) is None  # one that is not there any more


@given(st.floats(5.0, 1e6), st.floats(0.8, 1.0), st.lists(st.integers(0, 10_000), max_size=60))
def test_an_agent_with_its_own_length_limit_keeps_one(n, decay, lengths):
    """``_keeps_own_limit``: from 5 sessions on (decay >= 0.8) ``n`` never falls under 5 again,
    so the agent's own limit is never ``None`` and its peers' limit is never read."""
    stats = LengthStats(n=n, decay=decay)
    assert _keeps_own_limit(stats)
    for x in lengths:
        stats.add(x)
        assert stats.n >= 5 and _keeps_own_limit(stats)
    assert not _keeps_own_limit(LengthStats(n=4.99)) and not _keeps_own_limit(LengthStats(n=50, decay=0.79))


@pytest.mark.parametrize("own_sessions,at", [(2, 13), (6, 33)])
def test_a_learning_agent_reads_its_peers_length_limit_until_it_has_its_own(own_sessions, at):
    """A newcomer with 2 ended sessions is held to its peers' session-length limit (short
    sessions: reported at 13 calls), one with 6 (a decayed count over 5) to its own (long
    sessions: at 33), as main's detector does; the prior does not work the peers' limit out for
    the latter."""
    cfg = dict(min_calls=60, min_sessions=8, length_floor=10, session_idle_s=60)
    routine = ["fs/list_dir", "fs/read_file", "fs/write_file", "shell/run_tests"]
    calls = C.routine_traffic("p1", 30) + C.routine_traffic("p2", 30, seed=1)
    start = C.T0 + 10**5 * C.S
    for k in range(own_sessions):
        calls += C.session_calls("n", f"n-s{k}", (routine * 4)[:15], start + k * 600 * C.S)
    calls += C.session_calls("n", "n-long", ["fs/list_dir"] + ["fs/read_file"] * 40,
                             start + own_sessions * 600 * C.S, gap_s=0.1)
    new = SequenceDetector(SequenceConfig(**cfg))
    old = sequence_main.SequenceDetector(sequence_main.SequenceConfig(**cfg))
    found = [f for f in C.feed(new, calls) if f.dedup_key.endswith(":length")]
    assert new.agent_states()["n"] == "learning"
    assert [(f.agent_id, f.score, f.reason) for f in found] == [
        (f.agent_id, f.score, f.reason) for f in C.feed(old, calls) if f.dedup_key.endswith(":length")]
    assert [f.score for f in found if f.session_id == "n-long"] == [float(at)]
