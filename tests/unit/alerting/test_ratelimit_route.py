"""Token bucket arithmetic and per-receiver routes (the router queues only what a receiver wants)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.alert_builders import finding, stored
from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.sinks import Sink
from toolwatch.collector.sinks.ratelimit import TokenBucket
from toolwatch.collector.sinks.route import Route
from toolwatch.collector.store import Store


def test_bucket_starts_full_refills_at_rate_and_caps_at_burst():
    b = TokenBucket(rate_per_s=2.0, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait_s(0.0) == pytest.approx(0.5)
    assert b.take(0.5) and not b.take(0.5)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_rejects_nonsense():
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1, 0, 0.0)


@given(st.lists(st.floats(0, 5), min_size=1, max_size=50), st.floats(0.1, 10), st.integers(1, 20))
def test_bucket_never_exceeds_rate_times_time_plus_burst(gaps, rate, burst):
    b, now, taken = TokenBucket(rate, burst, 0.0), 0.0, 0
    for g in gaps:
        now += g
        taken += b.take(now)
    assert taken <= burst + rate * now + 1e-9


def test_route_filters_severity_detector_and_agent_patterns():
    r = Route.of("medium", ["exfiltration", "rugpull"], ["prod-*", "billing"])
    assert r.matches(stored(finding(0, detector="exfiltration", severity="high", agent="prod-7")))
    assert r.matches(stored(finding(0, detector="rugpull", severity="medium", agent="billing")))
    assert not r.matches(stored(finding(0, detector="exfiltration", severity="low", agent="prod-7")))
    assert not r.matches(stored(finding(0, detector="new_tool", severity="high", agent="prod-7")))
    assert not r.matches(stored(finding(0, detector="rugpull", severity="high", agent="staging-1")))
    assert not r.matches(stored(finding(0, detector="rugpull", severity="high", agent="Prod-1")))  # case-sensitive
    assert Route().matches(stored(finding(0, severity="info")))


class RoutedSink(Sink):
    durable = True

    def __init__(self, name, route):
        self.name, self.route = name, route

    def wants(self, alert):
        return self.route.matches(alert)

    def emit(self, alerts):
        pass


def test_router_queues_each_alert_only_for_receivers_whose_route_matches(tmp_path):
    store = Store(tmp_path / "tw.db")
    sec = RoutedSink("secops", Route.of("high", [], []))
    all_ = RoutedSink("all", Route())
    router = AlertRouter(store, Metrics(), [sec, all_], group_window_ns=0)
    hi, lo = router.route([finding(0, severity="critical"), finding(1, severity="low")])
    assert [d["sink"] for d in store.delivery_status(hi.id)] == ["all", "secops"]
    assert [d["sink"] for d in store.delivery_status(lo.id)] == ["all"]
    assert store.outbox_depth("secops") == 1 and store.outbox_depth("all") == 2
    store.close()
