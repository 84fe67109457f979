"""The router asks the store about each dedup key at most once per batch, with the same grouping
as asking it for every finding."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.store import Store
from toolwatch.detectors.events import Finding


class CountingStore(Store):
    def __init__(self) -> None:
        super().__init__(":memory:", clock=lambda: 1.0)
        self.lookups = 0

    def open_alert_for(self, dedup_key, since_ns):
        self.lookups += 1
        return super().open_alert_for(dedup_key, since_ns)


class AskEveryTime(AlertRouter):
    """The reference: one store query per finding, as before the per-batch answers."""

    def _open_alert_for(self, dedup_key, since_ns, stored):
        return self.store.open_alert_for(dedup_key, since_ns)


def _finding(t: int, key: str, n: int) -> Finding:
    return Finding(detector="d", severity="high", agent_id="a", reason="r", time_ns=t, dedup_key=key,
                   span_ids=(f"s{n}",))


def _alerts(store: Store) -> list[tuple]:
    return sorted((a.id, a.count, a.first_ns, a.last_ns) for a in store.list_alerts(limit=10_000))


batches = st.lists(
    st.lists(st.tuples(st.integers(0, 1_000), st.sampled_from("abc")), max_size=12), min_size=1, max_size=5
)


@settings(max_examples=60, deadline=None)
@given(batches)
def test_grouping_equals_asking_the_store_for_every_finding(plan: list[list[tuple[int, str]]]) -> None:
    fast_store, ref_store = CountingStore(), CountingStore()
    fast = AlertRouter(fast_store, Metrics(), [], group_window_ns=100, clock=lambda: 1.0)
    ref = AskEveryTime(ref_store, Metrics(), [], group_window_ns=100, clock=lambda: 1.0)
    n = 0
    for batch in plan:
        found = []
        for t, key in batch:  # unsorted times: a later finding may look further back than an earlier one
            found.append(_finding(t, key, n))
            n += 1
        assert [a.id for a in fast.route(found)] == [a.id for a in ref.route(found)]
        assert _alerts(fast_store) == _alerts(ref_store)
    assert fast_store.lookups <= ref_store.lookups
    fast_store.close()
    ref_store.close()


def test_one_lookup_per_key_and_batch_when_an_alert_is_open() -> None:
    store = CountingStore()
    router = AlertRouter(store, Metrics(), [], group_window_ns=100, clock=lambda: 1.0)
    router.route([_finding(0, "k", 0)])
    store.lookups = 0
    assert router.route([_finding(10 + i, "k", i + 1) for i in range(50)]) == []
    assert store.lookups == 1
    (alert,) = store.list_alerts()
    assert alert.count == 51 and alert.last_ns == 59
    store.close()
