"""The router asks the store about a batch's dedup keys in one query, with the same grouping as
asking it for every finding."""

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

    def open_alert_ref(self, dedup_key, since_ns):
        self.lookups += 1
        return super().open_alert_ref(dedup_key, since_ns)

    def open_alert_for(self, dedup_key, since_ns):
        self.lookups += 1
        return super().open_alert_for(dedup_key, since_ns)

    def latest_alert_refs(self, dedup_keys, since_ns):
        self.lookups += 1
        return super().latest_alert_refs(dedup_keys, since_ns)


class AskEveryTime(AlertRouter):
    """The reference: one store query per finding, as before the per-batch answers."""

    def _open_alert_for(self, dedup_key, since_ns, stored):
        return self.store.open_alert_for(dedup_key, since_ns)  # the whole stored alert, as before


def _finding(t: int, key: str, n: int) -> Finding:
    return Finding(detector="d", severity="high", agent_id="a", reason="r", time_ns=t, dedup_key=key,
                   span_ids=(f"s{n}",))


def _alerts(store: Store) -> list[tuple]:
    return sorted((a.id, a.count, a.first_ns, a.last_ns) for a in store.list_alerts(limit=10_000))


batches = st.lists(
    st.lists(st.tuples(st.integers(0, 1_000), st.sampled_from("abc")), max_size=12), min_size=1, max_size=5
)


@settings(max_examples=300, deadline=None)
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


def test_one_lookup_per_batch_when_an_alert_is_open() -> None:
    store = CountingStore()
    router = AlertRouter(store, Metrics(), [], group_window_ns=100, clock=lambda: 1.0)
    router.route([_finding(0, "k", 0)])
    store.lookups = 0
    assert router.route([_finding(10 + i, "k", i + 1) for i in range(50)]) == []
    assert store.lookups == 1
    (alert,) = store.list_alerts()
    assert alert.count == 51 and alert.last_ns == 59
    store.close()


def test_repeats_of_one_stored_alert_in_one_batch_bump_it_once_by_their_number() -> None:
    store = CountingStore()
    router = AlertRouter(store, Metrics(), [], group_window_ns=100, clock=lambda: 1.0)
    (first,) = router.route([_finding(10, "k", 0)])
    router.route([_finding(40, "k", 1), _finding(95, "k", 2), _finding(20, "k", 3)])
    stored = store.get_alert(first.id)
    assert (stored.count, stored.first_ns, stored.last_ns) == (4, 10, 95)
    assert store.open_alert_ref("k", 0) == (first.id, 95)
    assert store.open_alert_ref("k", 96) is None


def test_latest_alert_refs_answers_for_more_keys_than_one_query_takes() -> None:
    store = CountingStore()
    router = AlertRouter(store, Metrics(), [], group_window_ns=100, clock=lambda: 1.0)
    first = router.route([_finding(i, f"k{i}", i) for i in range(1_200)])
    later = router.route([_finding(i + 50, f"k{i}", 10_000 + i) for i in range(1_200)] + [_finding(5, "new", 1)])
    assert len(later) == 1  # every repeat grouped into its open alert
    assert [store.get_alert(a.id).count for a in first] == [2] * 1_200
    refs = store.latest_alert_refs((f"k{i}" for i in range(1_200)), 0)
    assert len(refs) == 1_200 and refs["k7"].last_ns == 57
    assert len(store.latest_alert_refs((f"k{i}" for i in range(1_200)), 1_000)) == 1_200 - 950
