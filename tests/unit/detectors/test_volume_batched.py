"""The slot-array volume detector must leave exactly the state main's (dict per window) detector leaves.

The reference, ``tests/helpers/volume_main.py``, is main's ``detectors/volume.py`` frozen before the
slot arrays; its batches under 32 calls ran call by call (``CallByCall`` forces that path always).
"""

from __future__ import annotations

import json
import random

import pytest

from tests.helpers import volume_main
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.volume import VolumeConfig, VolumeSpikeDetector

TOOLS = [("files", "read"), ("web", "fetch"), ("", "calc"), ("", "a/b"), ("a", "b"), ("db", "query")]


class CallByCall(volume_main.VolumeSpikeDetector):
    def _add_batch(self, calls: list[ToolCall]) -> bool:
        return False


def traffic(seed: int, n: int = 6000) -> list[ToolCall]:
    rnd = random.Random(seed)
    t, out, burst = 1_700_000_000_000_000_000, [], 0
    for i in range(n):
        step = rnd.expovariate(200.0) * 1e9 / (25 if burst else 1)
        burst = max(0, burst - 1) if burst else (rnd.randrange(100, 800) if rnd.random() < 0.002 else 0)
        t += int(step)
        late = rnd.randrange(-2_000_000_000, 1) if rnd.random() < 0.05 else 0
        late -= 60_000_000_000 if rnd.random() < 0.002 else 0
        server, tool = rnd.choice(TOOLS)
        out.append(ToolCall(
            time_ns=t + late, agent_id=f"a{rnd.randrange(3) if burst else rnd.randrange(6)}", server=server, tool=tool,
            session_id=rnd.choice(["", f"s{rnd.randrange(40)}"]), span_id="" if rnd.random() < 0.05 else f"{i:x}",
            error_type="e" if rnd.random() < (0.3 if burst else 0.02) else "",
            args_bytes=rnd.randrange(-3, 300) + (2_000_000 if rnd.random() < 0.01 else 0),
            result_bytes=rnd.randrange(0, 3000) * (40 if burst else 1)))
    return out


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("cfg", [
    {"window_s": 2, "allowed_lateness_s": 1, "min_calls_agent": 5, "min_calls_tool": 3, "min_calls_fleet": 5,
     "min_bytes": 1000, "min_calls_bytes": 2, "min_errors": 1, "min_history": 3},
    {"window_s": 3, "per_tool": False, "history_windows": 3, "min_history": 2, "idle_windows": 3,
     "min_calls_agent": 5, "min_calls_fleet": 5, "min_errors": 1},
    {"window_s": 5, "max_keys": 12, "history_windows": 4, "idle_windows": 4, "min_history": 2},
])
def test_batched_ingest_matches_call_by_call(seed: int, cfg: dict) -> None:
    calls = traffic(seed)
    rnd = random.Random(seed)
    batched, reference = VolumeSpikeDetector(VolumeConfig(**cfg)), CallByCall(volume_main.VolumeConfig(**cfg))
    found = 0
    i = 0
    while i < len(calls):
        chunk = calls[i:i + rnd.choice([1, 40, 300, 900])]
        i += len(chunk)
        wm = rnd.choice([0, chunk[-1].time_ns])
        got = [f.to_dict() for f in batched.observe(Batch(calls=list(chunk), watermark_ns=wm))]
        want = [f.to_dict() for f in reference.observe(Batch(calls=list(chunk), watermark_ns=wm))]
        assert got == want
        found += len(got)
        # Same state, in the same order (key order decides finding order and eviction).
        assert json.dumps(batched.snapshot()) == json.dumps(reference.snapshot())
    assert batched.late_dropped == reference.late_dropped > 0
    if "allowed_lateness_s" in cfg:  # low thresholds: the injected spikes are found, so findings are compared too
        assert found > 0


def test_batched_ingest_names_spans_and_sessions_like_call_by_call() -> None:
    """One window, many ties: the named fastest/largest spans and first 20 sessions are the same."""
    calls = [ToolCall(time_ns=10**12 + (i // 3) * 1000, agent_id="a", tool="t", span_id=f"s{i}",
                      session_id=f"x{i % 37}", args_bytes=i % 4) for i in range(600)]
    batched, reference = VolumeSpikeDetector(), CallByCall()
    for d in (batched, reference):
        d.observe(Batch(calls=calls[:250]))
        d.observe(Batch(calls=calls[250:]))
    snap = batched.snapshot()
    assert json.dumps(snap) == json.dumps(reference.snapshot())
    win = next(iter(snap["open"][json.dumps(["agent", "a"])].values()))
    assert len(win["sessions"]) == 20 and len(win["fast"]) == len(win["big"]) == 10


def test_a_batch_keeps_only_its_ten_best_rows_per_window_and_the_same_state() -> None:
    """Evenly spaced calls (every fleet gap ties, as bench/stages.py's are): of a batch's rows for one
    window, only its ten fastest/largest can ever be named, so only those are kept until reading,
    and what is read is what call by call keeps."""
    calls = [ToolCall(time_ns=10**12 + i * 13_333, agent_id=f"a{i % 7}", server="s", tool=f"t{i % 3}",
                      span_id=f"{i:x}", session_id=f"x{i % 11}", args_bytes=(i * 7) % 5) for i in range(3000)]
    batched, reference = VolumeSpikeDetector(), CallByCall()
    for lo in range(0, len(calls), 500):
        batch = calls[lo:lo + 500]
        batched.observe(Batch(calls=list(batch), watermark_ns=batch[-1].time_ns))
        reference.observe(Batch(calls=list(batch), watermark_ns=batch[-1].time_ns))
        batched._flush()
        # One slot per key (one window): at most ten rows per slot and batch in each top table.
        slots = len(batched._open)
        assert batched._win.fast.size <= 10 * slots * (lo // 500 + 1)
        assert batched._win.big.size <= 10 * slots * (lo // 500 + 1)
    assert json.dumps(batched.snapshot()) == json.dumps(reference.snapshot())


def _same_bands(got: dict, want: dict) -> bool:
    """Equal, NaN bands (warm-up) included, and in the same order."""
    return list(got) == list(want) and all(
        all(a == b or (a != a and b != b) for a, b in zip(got[k], want[k])) for k in got)


def test_bands_asked_every_batch_are_what_call_by_call_gives() -> None:
    """``bands`` answers from a cache between window closes; across closes, evictions, an agent
    dropped and restored and a whole restore it must answer what main's detector does."""
    cfg = {"window_s": 2, "max_keys": 30, "history_windows": 3, "idle_windows": 3, "min_history": 2}
    calls = traffic(3, 4000)
    rnd = random.Random(3)
    batched, reference = VolumeSpikeDetector(VolumeConfig(**cfg)), CallByCall(volume_main.VolumeConfig(**cfg))
    i = answered = 0
    while i < len(calls):
        chunk = calls[i:i + rnd.choice([1, 40, 300])]
        i += len(chunk)
        for d in (batched, reference):
            d.observe(Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns))
        if rnd.random() < 0.05:
            agent = rnd.choice(batched.agents() or ["a0"])
            saved = reference.snapshot_agent(agent)
            for d in (batched, reference):
                d.drop_agent(agent)
            if saved is not None and rnd.random() < 0.5:
                for d in (batched, reference):
                    d.restore_agent(agent, saved)
        if rnd.random() < 0.02:
            state = reference.snapshot()
            for d in (batched, reference):
                d.restore(state)
        for scope, metric in (("agent", "calls"), ("agent_tool", "bytes"), ("fleet", "error_rate")):
            assert _same_bands(batched.bands(scope, metric), batched._bands(scope, metric))  # cached = worked out
        # No flush here: held calls (fewer than _MIN_BATCH) that evict keys must show in ``bands``
        # as they do call by call, and the cache must see those evictions too.
        for scope, metric in (("agent", "calls"), ("agent_tool", "bytes"), ("fleet", "error_rate")):
            got = batched.bands(scope, metric)
            assert _same_bands(got, reference.bands(scope, metric))
            got.clear()  # a caller's copy: clearing it changes nothing the detector answers next
            assert _same_bands(batched.bands(scope, metric), reference.bands(scope, metric))
        assert _same_bands(batched.rate_bands(), reference.rate_bands())
        answered += bool(batched.rate_bands())
    assert answered > 10  # windows closed, so there were bands to answer


def test_bands_reflect_held_calls_that_evict() -> None:
    """A call held below _MIN_BATCH whose new key evicts another: ``bands`` no longer shows the
    evicted key (it showed it until 31 more calls came or a window closed), as call by call."""
    cfg = {"window_s": 1, "max_keys": 10, "per_tool": False, "fleet": False, "min_history": 1}
    batched, reference = VolumeSpikeDetector(VolumeConfig(**cfg)), CallByCall(volume_main.VolumeConfig(**cfg))
    t0 = 1_700_000_000_000_000_000
    first = [ToolCall(time_ns=t0 + i, agent_id=f"k{i}", tool="t") for i in range(10)]  # fills the table
    for d in (batched, reference):
        d.observe(Batch(calls=first, watermark_ns=t0 + 1_500_000_000))  # window 0 closes: k0..k9 have bands
    assert sorted(batched.rate_bands()) == [f"k{i}" for i in range(10)]
    for n, agent in enumerate(["n1", "n2", "k5"]):
        b = Batch(calls=[ToolCall(time_ns=t0 + 1_600_000_000 + n, agent_id=agent, tool="t")],
                  watermark_ns=t0 + 1_600_000_000 + n)
        for d in (batched, reference):
            d.observe(b)
        assert _same_bands(batched.rate_bands(), reference.rate_bands())
    assert "k0" not in batched.rate_bands() and "k1" not in batched.rate_bands()
    assert sorted(batched.rate_bands()) == [f"k{i}" for i in range(2, 10)]
    assert batched.snapshot() == reference.snapshot()


def test_batch_best_keeps_each_slots_ten_best_by_value_then_later() -> None:
    """``_batch_best`` against plain Python: per slot, the ten greatest (value, sequence) of the
    rows ``ok`` lets in; one crowded slot (its own path) or many."""
    import numpy as np

    from toolwatch.detectors.volume_slots import _batch_best

    rnd = random.Random(5)
    for _ in range(300):
        n = rnd.randrange(1, 400)
        slots = rnd.choice([1, 2, 5, 40])
        slot = np.array([rnd.randrange(slots) for _ in range(n)], np.int64)
        seq = np.array(sorted(rnd.sample(range(10**6), n)), np.int64)
        val = np.array([rnd.randrange(-4, 4) for _ in range(n)], np.int64)
        ok = np.array([rnd.random() < 0.8 for _ in range(n)])
        want = set()
        for s in set(slot.tolist()):
            rows = [i for i in range(n) if ok[i] and slot[i] == s]
            want |= set(sorted(rows, key=lambda i: (val[i], seq[i]), reverse=True)[:10])
        got = _batch_best(ok, slot, seq, val)
        assert set(np.flatnonzero(got).tolist()) == want
