from __future__ import annotations

from toolwatch.collector.alerts import AlertRouter, alert_id
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.sinks import Sink
from toolwatch.collector.store import Store
from toolwatch.detectors.events import Finding


class MemorySink(Sink):
    name = "mem"
    durable = True

    def __init__(self):
        self.got = []

    def emit(self, alerts):
        self.got.extend(alerts)


def finding(t, key="k", agent="a"):
    return Finding(detector="d", severity="high", agent_id=agent, reason="r", time_ns=t, dedup_key=key, span_ids=(str(t),))


def test_grouping_ids_and_outbox(tmp_path):
    store = Store(tmp_path / "s.db")
    sink = MemorySink()
    router = AlertRouter(store, Metrics(), [sink], group_window_ns=100)
    new = router.route([finding(0), finding(50), finding(500), finding(10, key="other")])
    assert len(new) == 3 and len(sink.got) == 3
    grouped = store.get_alert(alert_id(finding(0)))
    assert grouped.count == 2 and grouped.last_ns == 50
    # Grouping holds across batches too, via the store.
    assert router.route([finding(520)]) == []
    assert store.get_alert(alert_id(finding(500))).count == 2
    assert store.outbox_depth("mem") == 3
    # Same finding again (a replay) creates nothing new.
    store2 = AlertRouter(store, Metrics(), [sink], group_window_ns=0)
    store2.route([finding(0)])
    assert store.count_alerts() == 3
    store.close()
