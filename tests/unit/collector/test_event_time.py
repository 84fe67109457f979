"""The event-time rule: future clamp/reject, lateness against the admission watermark, max age."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from toolwatch.collector.config import ConfigError, config_from_mapping
from toolwatch.collector.event_time import NS, EventTimeRule, judge, judge_each
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import Batch, ToolCall, ToolListing

NOW = 1_800_000_000 * NS


def call(t: int) -> ToolCall:
    return ToolCall(time_ns=t, agent_id="a", tool="t")


def test_future_spans_are_clamped_to_now_by_default():
    v = judge(EventTimeRule(max_future_skew_s=60), [call(NOW + 61 * NS), call(NOW + 59 * NS)], [], NOW, 0)
    assert [c.time_ns for c in v.calls] == [NOW, NOW + 59 * NS]
    assert v.clamped == {"future": 1} and not v.rejected
    assert v.watermark_ns == NOW + 59 * NS  # the clamped span did not drag the watermark ahead


def test_future_spans_can_be_rejected_instead():
    v = judge(EventTimeRule(max_future_skew_s=60, future_policy="reject"), [call(NOW + 3600 * NS)], [], NOW, 0)
    assert v.calls == [] and v.rejected == {"future": 1}


def test_spans_too_far_behind_the_watermark_are_rejected_and_within_it_kept():
    wm = NOW - 100 * NS
    v = judge(EventTimeRule(allowed_lateness_s=10), [call(wm - 11 * NS), call(wm - 9 * NS)], [], NOW, wm)
    assert [c.time_ns for c in v.calls] == [wm - 9 * NS] and v.rejected == {"too_late": 1}
    assert v.watermark_ns == wm  # never goes backwards


def test_old_spans_replay_by_default_but_max_age_rejects_them():
    month_ago = NOW - 30 * 86400 * NS
    assert len(judge(EventTimeRule(), [call(month_ago)], [], NOW, 0).calls) == 1
    v = judge(EventTimeRule(max_age_s=86400), [call(month_ago)], [], NOW, 0)
    assert v.calls == [] and v.rejected == {"too_old": 1}


def test_missing_start_time_is_clamped_to_now():
    v = judge(EventTimeRule(), [call(0)], [], NOW, 0)
    assert v.calls[0].time_ns == NOW and v.clamped == {"missing_time": 1}


@pytest.mark.parametrize(
    "pipeline, message",
    [
        ({"future_policy": "drop"}, "pipeline.future_policy"),
        ({"allowed_lateness_s": 0}, "pipeline.allowed_lateness_s"),
        ({"max_future_skew_s": -1}, "pipeline.max_future_skew_s"),
    ],
)
def test_config_errors_name_the_key(pipeline, message):
    with pytest.raises(ConfigError, match=message):
        config_from_mapping({"pipeline": pipeline}).validate()


class Recorder(Detector):
    name = "recorder"

    def __init__(self) -> None:
        self.batches: list[tuple[list[int], int]] = []

    def observe(self, batch: Batch) -> list:
        self.batches.append(([c.time_ns for c in batch.calls], batch.watermark_ns))
        return []

    def snapshot(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass


class NullRouter:
    def route(self, findings) -> None:
        pass


class NullStore:
    def load_state(self, name):
        return None

    def save_state(self, name, state) -> None:
        pass


async def test_pipeline_orders_out_of_order_events_counts_and_keeps_watermark_monotone():
    reg = CollectorRegistry()
    det = Recorder()
    p = Pipeline([det], NullRouter(), NullStore(), Metrics(reg), batch_max_delay_s=0.01, wall_clock=lambda: NOW / NS,
                 event_time=EventTimeRule(allowed_lateness_s=60))
    await p.start()
    assert p.admit([call(NOW - 5 * NS), call(NOW - 9 * NS), call(NOW + 10**6 * NS)], []).accepted
    await p.drained()
    adm = p.admit([call(NOW - 30 * NS), call(NOW - 600 * NS)], [])
    await p.drained()
    await p.shutdown()
    assert adm.accepted and adm.verdict.rejected == {"too_late": 1}
    assert det.batches[0] == ([NOW - 9 * NS, NOW - 5 * NS, NOW], NOW)  # sorted; future clamped to now
    assert det.batches[1] == ([NOW - 30 * NS], NOW)  # late but within the window; watermark held
    assert reg.get_sample_value("toolwatch_spans_event_time_total", {"action": "clamped", "reason": "future"}) == 1
    assert reg.get_sample_value("toolwatch_spans_event_time_total", {"action": "rejected", "reason": "too_late"}) == 1


async def test_full_queue_refuses_everything_and_counts_nothing():
    reg = CollectorRegistry()
    p = Pipeline([], NullRouter(), NullStore(), Metrics(reg), batch_max_size=1, queue_max=1, wall_clock=lambda: NOW / NS)
    adm = p.admit([call(NOW), call(NOW + 200 * NS * 10**6)], [])
    assert not adm.accepted and p.depth == 0
    assert reg.get_sample_value("toolwatch_spans_event_time_total", {"action": "clamped", "reason": "future"}) is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-5, 40), max_size=8),
    st.lists(st.integers(-5, 40), max_size=3),
    st.sampled_from([0, 10, 30]),
    st.sampled_from(["clamp", "reject"]),
    st.sampled_from([0.0, 25.0]),
)
def test_judge_equals_judging_event_by_event(call_s, listing_s, watermark_s, future_policy, max_age_s):
    # Times in seconds around NOW=30 s on a small clock: 5 s future skew, 10 s lateness.
    rule = EventTimeRule(future_policy=future_policy, max_future_skew_s=5, allowed_lateness_s=10, max_age_s=max_age_s)

    def events():
        calls = [call(t * NS) for t in call_s]
        listings = [ToolListing(time_ns=t * NS, agent_id="a", server="s", tools=()) for t in listing_s]
        return calls, listings

    got, want = judge(rule, *events(), 30 * NS, watermark_s * NS), judge_each(rule, *events(), 30 * NS, watermark_s * NS)
    assert [c.time_ns for c in got.calls] == [c.time_ns for c in want.calls]
    assert [t.time_ns for t in got.listings] == [t.time_ns for t in want.listings]
    assert (got.rejected, got.clamped, got.watermark_ns) == (want.rejected, want.clamped, want.watermark_ns)
