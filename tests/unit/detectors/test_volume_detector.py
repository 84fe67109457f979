"""Volume spikes in event time: spikes fire within two windows; quiet agents and replays behave."""

from __future__ import annotations

import json
import math
import random

import pytest

from toolwatch.detectors.config_fields import ConfigError
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.volume import VolumeConfig, VolumeSpikeDetector, robust_band

W = 60 * 1_000_000_000  # default window, ns
T0 = 1_700_000_040 * 1_000_000_000 // W * W


def calls_in_window(win: int, n: int, *, agent: str = "a1", tool: str = "search", error_every: int = 0,
                    args_bytes: int = 100, seed: int = 0) -> list[ToolCall]:
    rng = random.Random(seed * 7919 + win)
    out = []
    for i in range(n):
        out.append(ToolCall(time_ns=T0 + win * W + rng.randrange(W), agent_id=agent, tool=tool, server="web",
                            session_id=f"{agent}-s{win}", span_id=f"{agent}-{win}-{i}", args_bytes=args_bytes,
                            result_bytes=200, error_type="tool_error" if error_every and i % error_every == 0 else ""))
    return sorted(out, key=lambda c: c.time_ns)


def steady(windows: range, agent: str = "a1", base: int = 30, seed: int = 1) -> list[list[ToolCall]]:
    rng = random.Random(seed)
    return [calls_in_window(w, base + rng.randrange(-4, 5), agent=agent, seed=seed) for w in windows]


def feed(det: VolumeSpikeDetector, per_window: list[list[ToolCall]], start: int = 0) -> list[tuple[int, object]]:
    """One batch per window, watermark at the window's end; returns (window index, finding)."""
    out = []
    for i, calls in enumerate(per_window):
        win = start + i
        for f in det.observe(Batch(calls=calls, watermark_ns=T0 + (win + 1) * W)):
            out.append((win, f))
    return out


def test_call_spike_fires_within_two_windows_per_scope():
    det = VolumeSpikeDetector()
    assert feed(det, steady(range(12))) == []
    spike_calls = calls_in_window(12, 300)
    found = feed(det, [spike_calls, calls_in_window(13, 30)], start=12)
    by_scope = {(f.evidence["scope"], f.evidence["metric"]): (win, f) for win, f in found}
    assert {"agent", "agent_tool", "fleet"} <= {s for s, m in by_scope}
    win, f = by_scope[("agent", "calls")]
    assert win - 12 <= 1  # reported when the spiking window closes
    assert f.agent_id == "a1" and f.evidence["value"] == 300 and f.evidence["high"] < 300
    assert f.span_ids and set(f.span_ids) <= {c.span_id for c in spike_calls}
    assert f.session_id == "a1-s12" and f.severity == "high"
    assert by_scope[("fleet", "calls")][1].agent_id == "*"
    assert by_scope[("agent_tool", "calls")][1].tool == "search"
    assert by_scope[("agent_tool", "calls")][1].server == "web"


def test_quiet_agent_doing_a_few_calls_is_not_a_spike():
    det = VolumeSpikeDetector()
    quiet = [calls_in_window(w, w % 2, agent="quiet") for w in range(12)]
    assert feed(det, quiet) == []
    assert feed(det, [calls_in_window(12, 12, agent="quiet")], start=12) == []  # 12x, but under min_calls


def test_normal_noise_does_not_fire():
    det = VolumeSpikeDetector()
    assert feed(det, steady(range(60), base=40, seed=3)) == []


def test_error_rate_spike():
    det = VolumeSpikeDetector(VolumeConfig(per_tool=False, fleet=False))
    feed(det, [calls_in_window(w, 30, error_every=30) for w in range(10)])
    found = feed(det, [calls_in_window(10, 30, error_every=2)], start=10)
    assert [(f.evidence["metric"], f.evidence["errors"]) for _, f in found] == [("error_rate", 15)]


def test_bytes_spike():
    det = VolumeSpikeDetector(VolumeConfig(per_tool=False, fleet=False))
    feed(det, [calls_in_window(w, 30, args_bytes=1000) for w in range(10)])
    found = feed(det, [calls_in_window(10, 30, args_bytes=200_000)], start=10)
    assert [f.evidence["metric"] for _, f in found] == ["bytes"]


def test_replay_in_one_batch_equals_live_batches():
    traffic = steady(range(15)) + [calls_in_window(15, 250)] + steady(range(16, 20))
    live = VolumeSpikeDetector()
    live_findings = [f.to_dict() for _, f in feed(live, traffic)]
    replay = VolumeSpikeDetector()
    everything = [c for w in traffic for c in w]
    replay_findings = [f.to_dict() for f in replay.observe(Batch(calls=everything, watermark_ns=T0 + 20 * W))]
    assert live_findings and replay_findings == live_findings


def test_late_call_in_open_window_counts_and_closed_window_is_dropped():
    det = VolumeSpikeDetector(VolumeConfig(allowed_lateness_s=30))
    late = calls_in_window(0, 1)[0]
    det.observe(Batch(calls=calls_in_window(0, 5), watermark_ns=T0 + W + 10 * 1_000_000_000))  # window 0 still open
    det.observe(Batch(calls=[late], watermark_ns=T0 + W + 40 * 1_000_000_000))  # arrives late, counts, then closes
    assert det.rate_bands()["a1"][0] == pytest.approx(6 / 60)
    det.observe(Batch(calls=[late], watermark_ns=T0 + 2 * W))
    assert det.late_dropped == 1


def test_rate_bands_nan_in_warm_up_then_band_around_rate():
    det = VolumeSpikeDetector()
    feed(det, steady(range(2)))
    rate, low, high = det.rate_bands()["a1"]
    assert rate > 0 and math.isnan(low) and math.isnan(high)
    feed(det, steady(range(2, 20), seed=5), start=2)
    rate, low, high = det.rate_bands()["a1"]
    assert low <= rate <= high and 0 < low < high
    assert "a1\x1fweb/search" in det.bands("agent_tool")


def test_idle_gap_fills_zero_windows_so_a_burst_after_silence_is_judged():
    det = VolumeSpikeDetector(VolumeConfig(per_tool=False, fleet=False))
    feed(det, steady(range(10)))
    # one hour of silence, then normal traffic: baseline now mostly zeros -> normal traffic is a spike
    found = feed(det, [calls_in_window(70, 30)], start=70)
    assert [f.evidence["metric"] for _, f in found] == ["calls"]


def test_lasting_level_shift_is_learned():
    det = VolumeSpikeDetector(VolumeConfig(per_tool=False, fleet=False))
    feed(det, steady(range(10), base=30))
    shifted = feed(det, steady(range(10, 60), base=90, seed=9), start=10)
    assert shifted, "the shift itself is reported"
    assert all(win < 45 for win, _ in shifted), "and then learned, not alerted forever"


def test_snapshot_restore_gives_identical_findings():
    det = VolumeSpikeDetector()
    feed(det, steady(range(10)))
    twin = VolumeSpikeDetector()
    twin.restore(json.loads(json.dumps(det.snapshot())))
    rest = [calls_in_window(10, 200), calls_in_window(11, 30)]
    assert [f.to_dict() for _, f in feed(twin, rest, start=10)] == [f.to_dict() for _, f in feed(det, rest, start=10)]


def test_per_agent_state_moves_with_the_agent():
    det = VolumeSpikeDetector(VolumeConfig(fleet=False))
    feed(det, steady(range(10), agent="a1"))
    state = det.snapshot_agent("a1")
    det.drop_agent("a1")
    assert det.agents() == []
    det.restore_agent("a1", json.loads(json.dumps(state)))
    assert det.agents() == ["a1"]
    assert [f.evidence["scope"] for _, f in feed(det, [calls_in_window(10, 300)], start=10)] == ["agent", "agent_tool"]


def test_memory_is_bounded_by_max_keys():
    det = VolumeSpikeDetector(VolumeConfig(max_keys=10, fleet=False, per_tool=False))
    feed(det, [[c for a in range(50) for c in calls_in_window(0, 1, agent=f"ag{a}")]])
    assert len(det.agents()) <= 10


def test_robust_band_ignores_one_outlier():
    med, mad, low, high = robust_band([10, 11, 9, 10, 1000, 10, 11], k=4, floor=1)
    assert med == 10 and mad == 1 and high < 20


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"volume\.window_s"):
        VolumeConfig.from_dict({"window_s": 0})
    with pytest.raises(ConfigError, match=r"volume\.allowed_lateness_s"):
        VolumeConfig.from_dict({"window_s": 10, "allowed_lateness_s": 20})
    with pytest.raises(ConfigError, match=r"volume\.min_history"):
        VolumeConfig.from_dict({"min_history": 100})
    assert VolumeConfig.from_dict({"window_s": 30, "k": 3}).k == 3.0


def test_spike_is_clipped_to_the_band_before_it_is_learned():
    det = VolumeSpikeDetector(VolumeConfig(per_tool=False, fleet=False))
    feed(det, steady(range(10)))
    [(_, f)] = feed(det, [calls_in_window(10, 300)], start=10)
    [entry] = det.snapshot()["keys"].values()
    assert entry["hist"]["calls"][-1] == pytest.approx(f.evidence["high"])
