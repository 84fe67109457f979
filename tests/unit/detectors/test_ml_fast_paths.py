"""The batch fast paths of the sequence and IsolationForest detectors against the plain code they
replace: inlined Markov lookups and session bookkeeping, ``learn_many``, the staged ring buffer."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.features import N_FEATURES, AgentContext, append_rows, extract, finish
from toolwatch.detectors.iforest import ForestBank, ForestModel, ForestParams, SlotConstants, _low_bytes, _walk, explain_many
from toolwatch.detectors.iforest_detector import ForestConfig, _Agent
from toolwatch.detectors.sequence import LengthStats, MarkovConfig, MarkovModel, fleet_prior
from toolwatch.detectors.sequence_detector import SequenceConfig, SequenceDetector
from toolwatch.detectors.sessions import START, Session, SessionTracker

S = 1_000_000_000
TOOLS = [("mail", "read"), ("mail", "send"), ("web", "fetch"), ("files", "read"), ("", "bare"), ("git", "push")]


def random_calls(rnd: random.Random, n: int, steps: tuple[int, ...] = (0, 1, 10**6, S, 40 * S, 2000 * S)
                 ) -> list[ToolCall]:
    """One agent's calls with everything the features read: out-of-order times, idle gaps,
    many sessions, errors, labels, fingerprints and destinations."""
    calls, t = [], 0
    for _ in range(n):
        t += rnd.choice(steps) - (S if rnd.random() < 0.05 else 0)
        server, tool = rnd.choice(TOOLS)
        calls.append(ToolCall(
            time_ns=t, agent_id="a", tool=tool, server=server, session_id=f"s{rnd.randrange(12)}",
            args_bytes=rnd.randrange(5000), result_bytes=rnd.randrange(50000),
            args_labels=tuple(rnd.sample(["secret", "email", "path"], rnd.randrange(3))),
            result_labels=("instructions",) if rnd.random() < 0.1 else (),
            args_fingerprints=tuple(f"f{rnd.randrange(20)}" for _ in range(rnd.randrange(3))),
            result_fingerprints=tuple(f"f{rnd.randrange(20)}" for _ in range(rnd.randrange(3))),
            result_injection_score=rnd.random() if rnd.random() < 0.1 else 0.0,
            destinations=tuple(f"d{rnd.randrange(8)}.example" for _ in range(rnd.randrange(3))),
            error_type="tool_error" if rnd.random() < 0.1 else ""))
    return calls


def reference_extract(ctx: AgentContext, calls: list[ToolCall], model: MarkovModel,
                      closed: list, prior: MarkovModel | None = None) -> tuple[np.ndarray, list[str]]:
    """``features.extract`` as it was written before the fast path, with its own session bookkeeping
    (``expire`` on every call, ``advance`` spelled out) and surprisal by ``MarkovModel.surprisal``."""
    tracker, known, rows, prevs = ctx.sessions, ctx.destinations, [], []
    for c in calls:
        closed.extend(tracker.expire(c.time_ns))
        s = tracker.open.get(c.session_id)
        if s is None:
            s = tracker.open[c.session_id] = Session(first_ns=c.time_ns, last_ns=c.time_ns)
            while len(tracker.open) > tracker.max_open:
                closed.append(tracker.open.popitem(last=False))
        else:
            tracker.open.move_to_end(c.session_id)
        prev = s.prev
        prevs.append(prev)
        bits = model.surprisal(prev, c.token, prior)
        dests = set(c.destinations)
        new_dest = sum(1 for d in dests if d not in known) if dests else 0
        gap = (c.time_ns - s.last_ns) / 1e9 if s.n else 60.0
        after = 1.0 if s.prev_instructions else 0.0
        reuse = sum(1 for fp in c.args_fingerprints if s.result_fps.get(fp, c.server) != c.server)
        dt = max(0, c.time_ns - s.last_ns) / 1e9 if s.n else math.inf
        s.rate = s.rate * math.exp(-dt / tracker.rate_window_s) + 1.0
        s.prev, s.n, s.last_ns = c.token, s.n + 1, max(s.last_ns, c.time_ns)
        s.errors += int(c.is_error)
        s.prev_instructions = "instructions" in c.result_labels or c.result_injection_score >= 0.5
        if c.server not in s.servers and len(s.servers) < tracker.max_servers:
            s.servers.append(c.server)
        for fp in c.result_fingerprints:
            if len(s.result_fps) >= tracker.max_fingerprints:
                s.result_fps.pop(next(iter(s.result_fps)))
            s.result_fps[fp] = c.server
        rows.append((bits, c.args_bytes, c.result_bytes, len(c.args_labels),
                     1.0 if {"secret", "card", "high_entropy"} & set(c.args_labels) else 0.0,
                     len(c.result_labels), after, len(dests), new_dest, gap, s.rate, s.n, s.errors / s.n,
                     len(s.servers), reuse))
    X = np.array(rows, dtype=np.float64).reshape(len(rows), N_FEATURES)
    X[:, [1, 2, 9, 11]] = np.log1p(np.maximum(X[:, [1, 2, 9, 11]], 0.0))
    return X, prevs


def trained_model(rnd: random.Random) -> MarkovModel:
    m = MarkovModel()
    prev = START
    for _ in range(300):
        server, tool = rnd.choice(TOOLS)
        tok = f"{server}/{tool}" if server else tool
        m.learn(prev, tok)
        prev = START if rnd.random() < 0.2 else tok
    return m


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("max_open", "idle_s", "steps"), [
    (4, 1800.0, (0, 1, 10**6, S, 40 * S, 2000 * S)),
    (32, 1800.0, (0, 1, 10**6, S, 40 * S, 2000 * S)),
    (32, 10.0, (0, 10**6, S, 2 * S, 3 * S)),  # sessions go idle one by one while others are new
])
def test_append_rows_with_inline_surprisal_equals_extract_with_the_model(seed, max_open, idle_s, steps):
    rnd = random.Random(seed)
    model = trained_model(rnd)
    calls = random_calls(rnd, 300, steps)
    slow_ctx = AgentContext(SessionTracker(max_open=max_open, idle_s=idle_s))
    fast_ctx = AgentContext(SessionTracker(max_open=max_open, idle_s=idle_s))
    slow_closed: list = []
    X, prevs = reference_extract(slow_ctx, calls, model, slow_closed)
    rows: list = []
    fast_prevs: list[str] = []
    tokens: list[str] = []
    fast_closed: list = []
    append_rows(fast_ctx, calls, rows, fast_prevs, tokens, fast_closed, model)
    assert np.array_equal(finish(rows), X)  # bit for bit, not approximately
    assert fast_prevs == prevs and tokens == [c.token for c in calls]
    assert [(sid, s.to_dict()) for sid, s in fast_closed] == [(sid, s.to_dict()) for sid, s in slow_closed]
    assert fast_ctx.to_dict() == slow_ctx.to_dict()
    # extract() with a surprise function takes the same path
    again_ctx = AgentContext(SessionTracker(max_open=max_open, idle_s=idle_s))
    X2, prevs2 = extract(again_ctx, calls, lambda p, t: model.surprisal(p, t))
    assert np.array_equal(X2, X) and prevs2 == prevs


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["lazy", "eager", "massless"])
def test_append_rows_with_a_shared_prior_equals_the_models_own_surprisal(seed, kind):
    """Two agents with one fleet prior and one memo of its probabilities (as the IsolationForest
    detector shares them within a batch), rows flat: bit for bit the rows of plain per-call code
    that asks ``MarkovModel.surprisal(prev, token, prior)``."""
    rnd = random.Random(seed)
    peers = [trained_model(rnd) for _ in range(3)]
    peers[0].learn("mail/read", "db/query")  # tokens and transitions the agents never saw
    if kind == "massless":
        prior = MarkovModel()
    else:
        prior = fleet_prior(peers, lazy_rows=kind == "lazy")
    memo: dict = {}
    for agent in range(2):
        model = trained_model(rnd) if agent else MarkovModel()  # a brand-new agent, and a trained one
        calls = random_calls(rnd, 200)
        ref_ctx, fast_ctx = AgentContext(SessionTracker(max_open=8)), AgentContext(SessionTracker(max_open=8))
        ref_closed: list = []
        X, prevs = reference_extract(ref_ctx, calls, model, ref_closed, prior)
        rows: list = []
        fast_prevs: list[str] = []
        fast_closed: list = []
        append_rows(fast_ctx, calls, rows, fast_prevs, [], fast_closed, model, prior, prior_probs=memo, flat=True)
        assert len(rows) == len(calls) * N_FEATURES
        assert finish(rows).tobytes() == X.tobytes() and fast_prevs == prevs
        assert fast_ctx.to_dict() == ref_ctx.to_dict()
    assert memo or kind == "massless"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70), st.booleans()),
                min_size=N_FEATURES, max_size=N_FEATURES * 6).map(lambda v: v[: len(v) // N_FEATURES * N_FEATURES]))
def test_finish_of_flat_rows_equals_numpys_conversion_bit_for_bit(values):
    """``finish`` packs flat rows with ``struct``: every value (NaN, infinities, -0.0, ints beyond
    2**53 and 2**63, bools) must become the double ``np.array`` made of it, then the same log
    transform."""
    expected = np.array(values, dtype=np.float64).reshape(-1, N_FEATURES)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected[:, [1, 2, 9, 11]] = np.log1p(np.maximum(expected[:, [1, 2, 9, 11]], 0.0))
        got = finish(list(values))
    assert got.tobytes() == expected.tobytes() and got.flags.writeable


def test_finish_takes_numpys_path_for_what_struct_refuses_and_for_tuples():
    row = [1.5, 3, 7, 0, 0.0, 1, 0.0, 0, 0, 60.0, 1.0, 2, 0.0, 1, 0]
    odd = [None] + row[1:]  # struct refuses None; np.array makes it NaN
    assert np.isnan(finish(odd)[0, 0]) and finish(odd)[0, 1:].tobytes() == finish(row)[0, 1:].tobytes()
    assert finish([tuple(row), tuple(row)]).tobytes() == finish(row + row).tobytes()
    assert finish([]).shape == (0, N_FEATURES)


def test_a_reloaded_tracker_still_closes_idle_sessions():
    tracker = SessionTracker(max_open=8, idle_s=10)
    for i, t in enumerate([20 * S, 25 * S, 23 * S, 28 * S]):
        tracker.touch(f"s{i}", t, [])
    reloaded = SessionTracker(max_open=8, idle_s=10)
    reloaded.load(tracker.to_dict())
    closed: list = []
    reloaded.touch("new", 34 * S, closed)
    assert [sid for sid, _ in closed] == ["s0"]  # least recently active first: s2 waits behind s1


def reference_sequence(cfg: SequenceConfig, calls: list[ToolCall]) -> tuple[list[tuple], list[float]]:
    """``SequenceDetector`` for one agent without a fleet prior, as written before the fast path."""
    model, tracker, lengths = MarkovModel(cfg.markov), SessionTracker(cfg.max_open_sessions, cfg.session_idle_s), \
        LengthStats()
    n_calls = n_sessions = 0
    mean_bits = 0.0
    found, margins = [], []
    for c in calls:
        scored = n_calls >= cfg.min_calls and n_sessions >= cfg.min_sessions
        closed = tracker.expire(c.time_ns)
        s = tracker.open.get(c.session_id)
        if s is None:
            s = tracker.open[c.session_id] = Session(first_ns=c.time_ns, last_ns=c.time_ns)
            while len(tracker.open) > tracker.max_open:
                closed.append(tracker.open.popitem(last=False))
        else:
            tracker.open.move_to_end(c.session_id)
        for _sid, old in closed:
            lengths.add(old.n)
        n_sessions += s.n == 0
        prev = s.prev
        bits = model.surprisal(prev, c.token)
        thr = cfg.after_instructions_bits if s.prev_instructions else cfg.threshold_bits
        flagged = scored and bits >= thr
        if flagged:
            found.append(("transition", c.session_id, prev, round(bits, 4), round(mean_bits, 4)))
        s.prev, s.n, s.last_ns = c.token, s.n + 1, max(s.last_ns, c.time_ns)
        s.prev_instructions = "instructions" in c.result_labels or c.result_injection_score >= 0.5
        limit = lengths.limit(cfg.length_k, cfg.length_floor) if lengths.n >= 5 else None
        if scored and not s.flagged_length and limit is not None and s.n > limit:
            s.flagged_length = True
            found.append(("length", c.session_id, s.n, limit))
        n_calls += 1
        if not flagged:
            model.learn(prev, c.token)
            mean_bits += (bits - mean_bits) / min(n_calls, 500)
        margins.append(bits - thr if scored else math.nan)
    return found, margins


@pytest.mark.parametrize("seed", range(3))
def test_sequence_detector_equals_the_plain_per_call_code(seed):
    rnd = random.Random(seed)
    calls = random_calls(rnd, 1500, (0, 10**6, S, 2 * S, 3 * S, 40 * S))
    # A few never-seen tools (a new call: ``token`` is set when a call is built).
    calls = [c if rnd.random() > 0.02 else dataclasses.replace(c, tool=f"odd{i % 4}") for i, c in enumerate(calls)]
    cfg = SequenceConfig(min_calls=100, min_sessions=5, use_fleet_prior=False, max_open_sessions=6,
                         session_idle_s=10.0, length_floor=3)
    det = SequenceDetector(cfg)
    findings, margins = [], []
    for lo in range(0, len(calls), 64):
        f, m = det.observe_scored(Batch(calls=calls[lo : lo + 64], watermark_ns=calls[lo].time_ns))
        findings += f
        margins += m.tolist()
    want, want_margins = reference_sequence(cfg, calls)
    got = [("length", f.session_id, int(f.score), f.evidence["explanation"][0]["observed"]) if f.dedup_key.endswith(
        ":length") else ("transition", f.session_id, f.evidence["previous"], f.score,
                         f.evidence["explanation"][0]["baseline"]) for f in findings]
    want = [w if w[0] == "transition" else (w[0], w[1], w[2], w[2]) for w in want]
    assert any(w[0] == "length" for w in want) and any(w[0] == "transition" for w in want)
    assert got == want
    assert np.array_equal(np.array(margins), np.array(want_margins), equal_nan=True)


@pytest.mark.parametrize("cfg", [MarkovConfig(), MarkovConfig(max_mass=50.0, min_count=1.0),
                                 MarkovConfig(max_tokens=4, max_transitions=6)])
def test_learn_many_equals_learn_one_at_a_time(cfg):
    rnd = random.Random(7)
    pairs = [(f"t{rnd.randrange(9)}", f"t{rnd.randrange(9)}") for _ in range(400)]
    one, many = MarkovModel(cfg), MarkovModel(cfg)
    for p, t in pairs:
        one.learn(p, t)
    many.learn_many(iter(pairs))
    assert many.to_dict() == one.to_dict()
    assert (many.mass, many.n_transitions, many.out) == (one.mass, one.n_transitions, one.out)


def order(m: MarkovModel) -> tuple:
    """Every count of a model with its key order (fleet priors sum members' counts in it)."""
    return (list(m.uni.items()), [(p, list(r.items())) for p, r in m.bi.items()], list(m.out.items()),
            m.mass, m.n_transitions)


@pytest.mark.parametrize("cfg", [MarkovConfig(), MarkovConfig(max_mass=50.0, min_count=1.0),
                                 MarkovConfig(max_tokens=4, max_transitions=6),
                                 MarkovConfig(max_mass=30.0, max_tokens=5, max_transitions=9)])
@pytest.mark.parametrize("seed", range(4))
def test_learn_many_in_chunks_keeps_learns_counts_and_key_order(cfg, seed):
    """``learn_many`` checks the bounds only when a pair adds a token or a transition: chunks of
    any size (the iforest detector passes one agent's calls per batch) give what ``learn`` one
    pair at a time gives, counts and key order, also from a model loaded over its bounds (a
    snapshot taken with larger ones), which the first pair prunes as ``learn`` does."""
    rnd = random.Random(seed)
    n_tok = rnd.choice([3, 9, 30])
    pairs = [(f"t{rnd.randrange(n_tok)}", f"t{rnd.randrange(n_tok)}") for _ in range(600)]
    big = MarkovModel(MarkovConfig(max_tokens=64, max_transitions=512))
    for p, t in pairs[:200]:
        big.learn(p, t)
    for start in (MarkovModel(cfg), MarkovModel.from_dict(big.to_dict(), cfg)):
        one, many = MarkovModel.from_dict(start.to_dict(), cfg), MarkovModel.from_dict(start.to_dict(), cfg)
        assert order(one) == order(many)
        i = 200
        while i < len(pairs):
            k = rnd.choice([0, 1, 2, 5, 40])
            for p, t in pairs[i : i + k]:
                one.learn(p, t)
            many.learn_many(iter(pairs[i : i + k]))
            assert order(many) == order(one)
            i += k


class NaiveRing:
    """The window as it was: every row written to the ring buffer one by one."""

    def __init__(self, cap: int) -> None:
        self.buf = np.zeros((cap, N_FEATURES))
        self.head = self.n = 0

    def add(self, rows: np.ndarray) -> None:
        cap = len(self.buf)
        for r in rows[-cap:]:
            self.buf[self.head] = r
            self.head = (self.head + 1) % cap
        self.n = min(cap, self.n + len(rows))

    def window(self) -> np.ndarray:
        if self.n < len(self.buf):
            return self.buf[: self.n].copy()
        return np.concatenate([self.buf[self.head :], self.buf[: self.head]])


def test_staged_window_equals_a_row_by_row_ring_buffer():
    rnd = np.random.default_rng(3)
    cfg = ForestConfig(min_rows=16, max_rows=40)
    st, ref = _Agent(cfg), NaiveRing(40)
    added = 0
    for size in [1, 3, 0, 39, 40, 41, 2, 100, 7, 7, 7, 7, 7, 7, 1, 80] + list(rnd.integers(0, 12, 60)):
        rows = rnd.normal(size=(int(size), N_FEATURES))
        as_lists = rows.tolist() if size % 2 else rows  # both kinds of rows are accepted
        st.add_rows(as_lists)
        ref.add(rows)
        added += int(size)
        assert st.n_buf == ref.n and st.since_fit == added
        assert np.array_equal(st.window(), ref.window())


@pytest.mark.parametrize("block", [1, 7, 64, 8192])
def test_walk_equals_a_plain_level_by_level_walk_bit_for_bit(block):
    """``_walk`` (compare into the low bytes of int64s, blocks, preallocated buffers) against the
    plain walk: the same leaves, so the same leaf values, whole blocks and a partial last one."""
    rnd = np.random.default_rng(11)
    model = ForestModel(rnd.normal(size=(300, N_FEATURES)), ForestParams(n_estimators=12))
    f = model.flat
    X = np.ascontiguousarray(np.concatenate([rnd.normal(size=(50, N_FEATURES)), 4 * rnd.normal(size=(23, N_FEATURES))]),
                             dtype=np.float32)
    inner = np.flatnonzero(f.nodes["child"] != np.arange(len(f.nodes)))
    for i, node in enumerate(rnd.choice(inner, 40)):  # values on a split threshold: ties go left
        X[i, f.nodes["feature"][node]] = f.nodes["threshold"][node]
    n = len(X)
    rows = np.tile(np.arange(n, dtype=np.intp) * N_FEATURES, len(f.roots))
    idx = np.repeat(f.roots, n)
    at = idx.copy()
    for _ in range(f.depth):
        rec = f.nodes[at]
        at = rec["child"] + (X.ravel()[rows + rec["feature"]] > rec["threshold"])
    want = f.leaf_value[at]
    got = _walk(f.nodes, f.leaf_value, X.ravel(), rows, idx.copy(), f.depth, block=block)
    assert got.tobytes() == want.tobytes()
    assert (f.leaf_value[at] != f.leaf_value[np.repeat(f.roots, n)]).any()  # the walk went somewhere


def test_low_bytes_turn_zeroed_int64s_into_zeros_and_ones():
    a = np.zeros(6, dtype=np.int64)
    v = _low_bytes(a)
    v[:] = [True, False, True, True, False, True]
    assert a.tolist() == [1, 0, 1, 1, 0, 1]
    v[:4] = False
    assert a.tolist() == [0, 0, 0, 0, 0, 1]


def test_forest_bank_scores_every_model_like_its_own_flat_forest():
    rnd = np.random.default_rng(5)
    params = ForestParams(n_estimators=20, max_samples=64)
    models = [ForestModel(rnd.normal(loc=i, size=(80 + 40 * i, N_FEATURES)), params) for i in range(4)]
    bank = ForestBank(20, 20 * (2 * 64 - 1), N_FEATURES)
    X = rnd.normal(loc=1.5, scale=2.0, size=(300, N_FEATURES))
    owner = rnd.integers(0, 4, len(X))
    for round_ in range(3):  # later rounds: one model refitted (slot reused), one dropped
        slots = bank.sync([m.flat for m in models])
        paths = bank.path_lengths(X, np.array([slots[o] for o in owner], dtype=np.intp))
        for i, m in enumerate(models):
            rows = owner == i
            s, r, mm = m.margins_from_paths(X[rows], paths[rows])
            want = m.margins(X[rows])
            assert all(np.array_equal(a, b) for a, b in zip((s, r, mm), want)), (round_, i)
        models[1] = ForestModel(rnd.normal(size=(100, N_FEATURES)), params)
        if round_ == 1:
            models, owner = models[:3], owner % 3
    assert not bank.fits(ForestModel(rnd.normal(size=(50, N_FEATURES)), ForestParams(n_estimators=5)).flat)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=6), st.integers(0, 2**32 - 1))
def test_slot_constants_margins_equal_each_models_own_margins_in_any_row_order(sizes, seed):
    """Rows in batch order, each taking its slot's constants, give the same bits as each run of
    rows through its own model's ``margins_from_paths``."""
    rnd = np.random.default_rng(seed)
    pool = [ForestModel(rnd.normal(loc=i, size=(40, N_FEATURES)),
                        ForestParams(n_estimators=5, max_samples=32, range_k=float(rnd.uniform(0.2, 2.0))))
            for i in range(3)]
    slot_of = [7, 2, 4]  # slots in a bank of 9; the others are free
    consts = SlotConstants(pool, slot_of, 9, N_FEATURES)
    picks = [int(i) for i in rnd.integers(0, 3, len(sizes))]
    X = rnd.normal(loc=1.0, scale=3.0, size=(sum(sizes), N_FEATURES))
    X[rnd.random(X.shape) < 0.05] = np.nan
    paths = rnd.uniform(0, 60, len(X))
    runs = [pool[i].margins_from_paths(X[off : off + k], paths[off : off + k])
            for i, k, off in zip(picks, sizes, np.cumsum([0, *sizes]))]
    want = [np.concatenate([run[part] for run in runs]) for part in range(3)]
    perm = rnd.permutation(len(X))  # batch order is not model order
    slots = np.repeat(np.array([slot_of[i] for i in picks], dtype=np.intp), sizes)
    got = consts.margins(slots[perm], X[perm], paths[perm])
    for g, w in zip(got, want):
        assert g.tobytes() == w[perm].tobytes()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_explain_many_of_one_model_equals_explain_row_by_row(n, k, seed):
    """Explanations of a batch's hits of one model in one pass: the same dicts, bit for bit, as one
    ``explain`` per row, with ties, rows at the median (no deviation), huge and non-finite values."""
    rnd = np.random.default_rng(seed)
    sample = np.round(rnd.normal(size=(60, N_FEATURES)) * rnd.uniform(0.1, 50, N_FEATURES))
    model = ForestModel(sample, ForestParams(n_estimators=3, max_samples=16))
    X = np.round(rnd.normal(size=(n, N_FEATURES)) * 30, int(rnd.integers(0, 4)))
    X[rnd.random(X.shape) < 0.05] = 1e300
    X[rnd.random(X.shape) < 0.03] = np.nan
    X[0] = model.median
    names = [f"f{i}" for i in range(N_FEATURES)]
    got = explain_many(X, np.tile(model.median, (n, 1)), np.tile(model.spread, (n, 1)), names, k)
    want = [model.explain(x, names, k) for x in X]
    assert repr(got) == repr(want)  # repr: NaN compares unequal to itself, its repr does not
    assert got[0] == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["learn", "learn", "learn", "scale", "prune", "reload", "swap", "groups",
                                           "models"]),
                          st.lists(st.integers(0, 11), min_size=1, max_size=12)), min_size=1, max_size=30),
       st.floats(0.5, 6.0))
def test_cached_habitual_servers_equal_a_fresh_computation(steps, habit_calls):
    """``_servers``, the vocabulary and the group model chosen (cached per agent) always equal
    what is recomputed from the model, the groups and the models."""
    from toolwatch.detectors.iforest_detector import IsolationForestDetector

    tokens = ["mail/read", "mail/send", "web/fetch", "files/read", "bare", "git/push", "git/pull",
              "db/query", "db/write", "x/y", "mail/list", "web/post"]
    det = IsolationForestDetector(ForestConfig(habit_calls=habit_calls,
                                               markov=MarkovConfig(max_mass=40.0, max_tokens=6, min_count=0.25)))
    agent = det.state_for("a")

    def fresh() -> frozenset[str]:
        return frozenset(t.split("/", 1)[0] for t, c in agent.markov.uni.items() if c >= habit_calls and "/" in t)

    servers = sorted({t.split("/", 1)[0] for t in tokens if "/" in t})

    def fresh_key() -> str | None:
        mine, best, best_cover = fresh(), None, 0.0
        for key, group in det._groups.items():
            cover = len(mine & group) / len(mine) if mine else 0.0
            if cover >= det.config.prior_min_containment and cover > best_cover:
                best, best_cover = key, cover
        return best if best in det._models else None

    prev = START
    for op, toks in steps:
        if op == "groups":  # refitted groups: a new dict, never changed in place
            det._groups = {f"group:{i}": frozenset(servers[t % len(servers)] for t in toks[i:]) for i in range(len(toks))}
            det._models.update((k, None) for k in det._groups)
        elif op == "models":  # group models dropped
            for i in toks:
                det._models.pop(f"group:{i}", None)
        elif op == "learn":
            pairs = []
            for i in toks:
                pairs.append((prev, tokens[i]))
                prev = tokens[i]
            agent.markov.learn_many(pairs)
        elif op == "scale":
            agent.markov._scale(0.5)
        elif op == "prune":
            agent.markov._prune()
        elif op == "reload":
            agent.markov = MarkovModel.from_dict(agent.markov.to_dict(), agent.markov.config)
        else:  # another agent's state restored over this one
            det.restore_agent("a", det.snapshot_agent("a") or {})
            agent = det.state_for("a")
        assert det._servers(agent) == fresh()
        assert det._servers(agent) == fresh()  # and from the cache
        for _ in range(2):
            assert det._model_key("a", agent) == fresh_key()
            assert det._vocab(agent, []) == agent.markov.vocab
            assert det._vocab(agent, ["new/tool"]) == agent.markov.vocab | {"new/tool"}


def test_the_group_choice_follows_refitted_groups_and_new_habits():
    from toolwatch.detectors.iforest_detector import IsolationForestDetector

    det = IsolationForestDetector(ForestConfig(habit_calls=2.0))
    agent = det.state_for("a")
    agent.markov.learn_many([(START, "mail/read"), ("mail/read", "web/fetch")] * 3)
    det._groups = {"group:mail,web": frozenset({"mail", "web"})}
    det._models = {"group:mail,web": None}
    assert det._model_key("a", agent) == "group:mail,web"
    det._groups = {"group:mail,web,x": frozenset({"mail", "web", "x"})}  # refitted: a new dict
    assert det._model_key("a", agent) is None  # its model is not fitted yet
    det._models["group:mail,web,x"] = None
    assert det._model_key("a", agent) == "group:mail,web,x"
    agent.markov.learn_many([(START, "db/query")] * 2)  # a third habitual server: 2/3 covered
    det._groups = {"group:mail,web,x": frozenset({"mail", "web", "x"}), "group:db": frozenset({"db"})}
    assert det._model_key("a", agent) == "group:mail,web,x"
    agent.markov.learn_many([(START, "files/read")] * 2)  # 2/4 covered: under prior_min_containment
    assert det._model_key("a", agent) is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["learn", "learn", "new_token", "scale", "prune", "mature", "retire"]),
                          st.integers(0, 5), st.lists(st.integers(0, 11), min_size=1, max_size=8)),
                min_size=1, max_size=25),
       st.floats(0.2, 1.0))
def test_cached_prior_choices_equal_select_prior(steps, need):
    """``_Peers`` (choices remembered while the mature vocabularies stay the same, one prior per
    choice and batch) gives every learning agent the prior ``select_prior`` gives it: the same
    probabilities, bit for bit."""
    from toolwatch.detectors.iforest_detector import _Peers
    from toolwatch.detectors.sequence import select_prior

    tokens = ["mail/read", "mail/send", "web/fetch", "files/read", "bare", "git/push", "git/pull",
              "db/query", "db/write", "x/y", "mail/list", "web/post"]
    cfg = MarkovConfig(max_mass=60.0, max_tokens=8, min_count=0.25)
    agents = [MarkovModel(cfg) for _ in range(6)]
    for i, m in enumerate(agents):
        m.learn_many([(START, tokens[(i + k) % 12]) for k in range(3)])
    mature: dict[str, MarkovModel] = {"m0": agents[0], "m1": agents[1]}
    peers = _Peers()
    vocabs = [frozenset(tokens[i:i + 3]) for i in range(0, 12, 2)] + [frozenset(), frozenset(tokens)]
    for op, who, toks in steps:
        m = agents[who]
        if op == "learn":
            m.learn_many([(tokens[a], tokens[b]) for a, b in zip(toks, toks[1:] + toks[:1])])
        elif op == "new_token":
            m.learn(START, f"new/{len(m.uni)}")
        elif op == "scale":
            m._scale(0.5)
        elif op == "prune":
            m._prune()
        elif op == "mature":
            mature[f"m{who}"] = m
        else:
            mature.pop(f"m{who}", None)
        peers.check(mature)  # a new batch
        for vocab in vocabs + [frozenset(tokens[t] for t in toks)]:
            for _ in range(2):  # the second time from the caches
                got, _memo = peers.prior(vocab, need, cfg)
                want = select_prior(set(vocab), mature, need, cfg)
                assert (got is None) == (want is None)
                if want is not None:
                    for prev in [START, *tokens, "never/seen"]:
                        for tok in [*tokens, "never/seen"]:
                            assert got.prob(prev, tok) == want.prob(prev, tok)
                            assert got.p_unigram(tok) == want.p_unigram(tok)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 30), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_explain_many_equals_each_rows_own_models_explain(n, k, seed):
    """A batch's hits of several models explained in one pass (``explain_many`` with per-row baselines,
    as the detector does): each row's explanation is its own model's ``explain``, bit for bit."""
    rnd = np.random.default_rng(seed)
    models = [ForestModel(np.round(rnd.normal(size=(40, N_FEATURES)) * rnd.uniform(0.1, 50, N_FEATURES), 1),
                          ForestParams(n_estimators=2, max_samples=16)) for _ in range(3)]
    pick = [models[i] for i in rnd.integers(0, 3, n)]
    X = np.round(rnd.normal(size=(n, N_FEATURES)) * 30, int(rnd.integers(0, 5)))
    X[rnd.random(X.shape) < 0.05] = 1e300
    X[rnd.random(X.shape) < 0.03] = np.nan
    X[0] = pick[0].median
    names = [f"f{i}" for i in range(N_FEATURES)]
    got = explain_many(X, np.array([m.median for m in pick]), np.array([m.spread for m in pick]), names, k)
    want = [m.explain(x, names, k) for m, x in zip(pick, X)]
    assert repr(got) == repr(want)
    assert got[0] == []
