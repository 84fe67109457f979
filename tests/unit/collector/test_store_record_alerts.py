"""``Store.record_alerts`` writes a batch with one INSERT per table; the rows and outbox queue must
be those of the per-alert reference (INSERT OR IGNORE each alert, queue it only if inserted)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.collector.store import Store, StoredAlert


def reference_record(store: Store, new, bumps, route) -> None:
    """The former ``record_alerts``: one INSERT per alert, its outbox rows when its rowcount says so."""
    now = store.clock()
    with store.db:
        store.db.execute("BEGIN")
        for a in new:
            cur = store.db.execute(
                "INSERT OR IGNORE INTO alerts(id, dedup_key, detector, severity, agent_id, first_ns, last_ns,"
                " count, status, finding, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (a.id, a.finding.get("dedup_key", ""), a.detector, a.severity, a.agent_id, a.first_ns, a.last_ns,
                 a.count, a.status, json.dumps(a.finding, sort_keys=True), a.created_at),
            )
            if cur.rowcount:
                store.db.executemany(
                    "INSERT OR IGNORE INTO outbox(sink, alert_id, next_at, queued_at) VALUES (?,?,?,?)",
                    [(s, a.id, now, now) for s in route(a)],
                )
        merged: dict[str, list[int]] = {}
        for alert_id, last_ns in bumps:
            m = merged.setdefault(alert_id, [0, last_ns])
            m[0] += 1
            m[1] = max(m[1], last_ns)
        store.db.executemany(
            "UPDATE alerts SET count=count+?, last_ns=MAX(last_ns, ?) WHERE id=?",
            [(n, last_ns, alert_id) for alert_id, (n, last_ns) in merged.items()],
        )


def _alert(i: int, t: int, sev: str) -> StoredAlert:
    return StoredAlert(id=f"a{i}", detector="d", severity=sev, agent_id=f"ag{i % 3}", first_ns=t, last_ns=t,
                       count=1, status="open", finding={"dedup_key": f"k{i % 4}", "evidence": {"n": [i, t]}},
                       created_at=float(t))


def _route(a: StoredAlert) -> list[str]:
    return {"low": [], "medium": ["hook1"], "high": ["hook1", "hook2"]}[a.severity]


def _dump(store: Store) -> tuple[list, list]:
    alerts = [tuple(r) for r in store.db.execute("SELECT rowid, * FROM alerts ORDER BY rowid")]
    outbox = [tuple(r) for r in store.db.execute("SELECT * FROM outbox ORDER BY seq")]
    return alerts, outbox


calls = st.lists(
    st.tuples(
        st.lists(st.tuples(st.integers(0, 12), st.integers(0, 50), st.sampled_from(["low", "medium", "high"])),
                 max_size=8),
        st.lists(st.tuples(st.integers(0, 12), st.integers(0, 80)), max_size=5),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(calls)
def test_batched_record_alerts_writes_what_the_per_alert_inserts_wrote(plan) -> None:
    fast, ref = Store(":memory:", clock=lambda: 5.0), Store(":memory:", clock=lambda: 5.0)
    for new, bumps in plan:  # ids repeat within a call and across calls: replays, duplicates
        alerts = [_alert(i, t, sev) for i, t, sev in new]
        bumps = [(f"a{i}", t) for i, t in bumps]
        fast.record_alerts(alerts, bumps, _route)
        reference_record(ref, alerts, bumps, _route)
        assert _dump(fast) == _dump(ref)
    fast.close()
    ref.close()


def test_a_list_of_sink_names_queues_every_new_alert_once() -> None:
    store = Store(":memory:", clock=lambda: 1.0)
    store.record_alerts([_alert(1, 1, "low"), _alert(2, 2, "low"), _alert(1, 3, "high")], [], ["hook"])
    assert [r[0] for r in store.db.execute("SELECT alert_id FROM outbox ORDER BY seq")] == ["a1", "a2"]
    store.record_alerts([_alert(2, 9, "low")], [], ["hook", "other"])  # stored already: nothing queued
    assert store.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 2
    store.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 6)), max_size=25), st.integers(0, 7))
def test_latest_alert_refs_answers_what_open_alert_ref_answers(stored, since: int) -> None:
    """Ties on ``last_ns`` included: the last inserted wins, as ``open_alert_ref``'s ORDER BY says."""
    store = Store(":memory:", clock=lambda: 1.0)
    alerts = [StoredAlert(id=f"x{n}", detector="d", severity="low", agent_id="a", first_ns=t, last_ns=t, count=1,
                          status="open", finding={"dedup_key": key}, created_at=1.0) for n, (key, t) in enumerate(stored)]
    store.record_alerts(alerts, [], [])
    refs = store.latest_alert_refs(["a", "b", "c", "d", "a"], since)
    for key in "abcd":
        for s in range(since, 8):
            ref = refs.get(key)
            assert (ref if ref is not None and ref.last_ns >= s else None) == store.open_alert_ref(key, s)
    store.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6), st.text(), st.text(),
       st.one_of(st.none(), st.floats(allow_nan=False)), st.floats(allow_nan=True))
def test_to_json_is_json_dumps_of_to_dict(finding, detector: str, agent: str, acked, created: float) -> None:
    """The log sink's text, built around the stored finding text, equals dumping the whole alert."""
    a = StoredAlert(id='i"d', detector=detector, severity="low", agent_id=agent, first_ns=1, last_ns=2, count=3,
                    status="open", finding=finding, created_at=created, acked_at=acked)
    assert a.to_json() == json.dumps(a.to_dict(), sort_keys=True)
    assert a.finding_text() == json.dumps(finding, sort_keys=True)


def test_batches_past_one_in_query_are_read_whole() -> None:
    """More keys and ids than one ``IN (...)`` query takes (500): every chunk is asked, nothing is lost."""
    fast, ref = Store(":memory:", clock=lambda: 5.0), Store(":memory:", clock=lambda: 5.0)
    first = [_alert(i, i % 50, "medium") for i in range(0, 1300, 2)]
    for store, record in ((fast, fast.record_alerts), (ref, lambda *a: reference_record(ref, *a))):
        record(first, [], _route)
        record([_alert(i, 60, "high") for i in range(1300)], [], _route)  # half of them stored already
    assert _dump(fast) == _dump(ref)
    assert fast.db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 1300
    keys = [f"k{i}" for i in range(4)] + [f"none{i}" for i in range(1200)]
    refs = fast.latest_alert_refs(keys, 10)
    assert refs == {k: r for k in keys if (r := fast.open_alert_ref(k, 10)) is not None} and len(refs) == 4
    fast.close()
    ref.close()


@pytest.mark.parametrize("text", ['"finding": 0', 'finding": 0', '\\"finding\\": 0', '"finding": 0, "x": 1', "finding"])
def test_to_json_puts_the_finding_in_its_place_whatever_the_other_fields_hold(text: str) -> None:
    a = StoredAlert(id=text, detector=text, severity=text, agent_id=text, first_ns=1, last_ns=2, count=3,
                    status=text, finding={"finding": 0, text: [text]}, created_at=0.0, acked_at=None)
    assert a.to_json() == json.dumps(a.to_dict(), sort_keys=True)
