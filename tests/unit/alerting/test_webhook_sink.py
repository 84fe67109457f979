"""WebhookSink against a real local HTTP receiver: retries, backoff, dead state, rate limit, digests."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from helpers.alert_builders import finding, stored
from helpers.webhook_receiver import WebhookReceiver
from toolwatch.collector.config import WebhookConfig
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.sinks.webhook import ALERT_IDS_HEADER, IDEMPOTENCY_HEADER, WebhookSink, backoff
from toolwatch.collector.store import Store


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def receiver():
    with WebhookReceiver() as r:
        yield r


def make(tmp_path, receiver, clock, **conf):
    store = Store(tmp_path / "tw.db", clock=clock)
    metrics = Metrics()
    hook = WebhookConfig(url=receiver.url, name="ops", **conf)
    hook.validate("webhooks[0]")
    sink = WebhookSink(hook, store, metrics, b"k", clock=clock, rng=lambda: 1.0)
    return store, metrics, sink


def queue(store, sink, n, created_at=1000.0):
    alerts = [stored(finding(i), created_at) for i in range(n)]
    store.record_alerts(alerts, [], [sink.name])
    return alerts


def deliveries(metrics, outcome):
    return metrics.registry.get_sample_value("toolwatch_webhook_deliveries_total", {"receiver": "ops", "outcome": outcome}) or 0


async def test_failure_backs_off_then_recovers_without_loss(tmp_path, receiver):
    clock = Clock()
    store, metrics, sink = make(tmp_path, receiver, clock, backoff_base_s=2.0, backoff_cap_s=10.0)
    # deliver_due is driven by the test; start() would add a competing background loop.
    try:
        alerts = queue(store, sink, 3)
        receiver.set_mode("fail")
        assert await sink.deliver_due() == 0
        # One failure pauses the receiver; the failed message waits base * 2**0 (rng=1.0: the full jitter range).
        status = store.delivery_status(alerts[0].id)[0]
        assert status["attempts"] == 1 and status["next_at"] == pytest.approx(1002.0) and status["last_error"] == "HTTP 503"
        assert store.outbox_depth("ops") == 3 and deliveries(metrics, "failure") == 1
        assert sink._sleep_s() == pytest.approx(1.0)  # poll_s bounds the hold of 2 s
        receiver.set_mode("ok")
        clock.t += 2.0
        assert await sink.deliver_due() == 3
        got = receiver.received
        assert sorted(r.headers[IDEMPOTENCY_HEADER] for r in got) == sorted(a.id for a in alerts)
        assert store.outbox_depth("ops") == 0 and deliveries(metrics, "success") == 3
        latency = {"receiver": "ops"}
        assert metrics.registry.get_sample_value("toolwatch_webhook_delivery_latency_seconds_count", latency) == 3
        assert metrics.registry.get_sample_value("toolwatch_webhook_delivery_latency_seconds_sum", latency) == pytest.approx(6.0)
    finally:
        await sink.shutdown()


def test_backoff_is_exponential_capped_and_jittered():
    assert [backoff(n, base=1, cap=10, rng=lambda: 1.0) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert backoff(3, base=1, cap=10, rng=lambda: 0.5) == 4
    assert backoff(10_000, base=1, cap=300, rng=lambda: 1.0) == 300


async def test_old_undelivered_message_goes_dead_stays_visible_and_can_be_requeued(tmp_path, receiver):
    clock = Clock()
    store, metrics, sink = make(tmp_path, receiver, clock, max_age_s=60, backoff_base_s=1, backoff_cap_s=1)
    try:
        (old,) = queue(store, sink, 1)
        receiver.set_mode("fail")
        await sink.deliver_due()
        clock.t += 61.0  # older than max_age_s, still undelivered
        receiver.set_mode("ok")
        assert await sink.deliver_due() == 0
        assert receiver.state.attempts == 1
        (status,) = store.delivery_status(old.id)
        assert status["state"] == "dead" and "max_age_s" in status["last_error"] and status["attempts"] == 1
        sink.refresh_gauges()
        assert metrics.registry.get_sample_value("toolwatch_webhook_outbox_dead", {"receiver": "ops"}) == 1
        assert store.outbox_depth("ops") == 0 and deliveries(metrics, "dead") == 1
        # An operator gives it another chance: fresh age and attempts, then it is delivered.
        assert store.requeue_dead(old.id) == 1 and store.requeue_dead(old.id) == 0
        assert await sink.deliver_due() == 1
        assert store.delivery_status(old.id)[0]["state"] == "delivered"
    finally:
        await sink.shutdown()


async def test_rate_limit_holds_excess_in_outbox_and_drops_nothing(tmp_path, receiver):
    clock = Clock()
    store, metrics, sink = make(tmp_path, receiver, clock, rate_limit_per_min=60, rate_limit_burst=2)
    # deliver_due is driven by the test; start() would add a competing background loop.
    try:
        alerts = queue(store, sink, 5)
        assert await sink.deliver_due() == 2
        assert store.outbox_depth("ops") == 3
        assert metrics.registry.get_sample_value("toolwatch_webhook_rate_limited_total", {"receiver": "ops"}) == 3
        assert sink._sleep_s() == pytest.approx(1.0)  # one token per second
        clock.t += 1.0
        assert await sink.deliver_due() == 1
        clock.t += 10.0  # refills to the burst of 2, not 10
        assert await sink.deliver_due() == 2
        assert [r.headers[IDEMPOTENCY_HEADER] for r in receiver.received] == [a.id for a in alerts]
    finally:
        await sink.shutdown()


async def test_digest_formats_send_a_burst_as_one_message(tmp_path, receiver):
    clock = Clock()
    store, metrics, sink = make(tmp_path, receiver, clock, format="alertmanager")
    # deliver_due is driven by the test; start() would add a competing background loop.
    try:
        alerts = queue(store, sink, 4)
        assert await sink.deliver_due() == 4
        (got,) = receiver.received
        body = json.loads(got.body)
        assert [a["labels"]["alert_id"] for a in body["alerts"]] == [a.id for a in alerts]
        assert got.headers[ALERT_IDS_HEADER].split(",") == [a.id for a in alerts]
        assert got.headers[IDEMPOTENCY_HEADER].startswith("digest-")
    finally:
        await sink.shutdown()


async def test_timeout_counts_as_failure(tmp_path, receiver):
    clock = Clock()
    store, metrics, sink = make(tmp_path, receiver, clock, timeout_s=0.2)
    receiver.state.hang_s = 0.6
    # deliver_due is driven by the test; start() would add a competing background loop.
    try:
        (a,) = queue(store, sink, 1)
        receiver.set_mode("hang")
        assert await sink.deliver_due() == 0
        assert store.delivery_status(a.id)[0]["last_error"].startswith("timeout")
    finally:
        await sink.shutdown()


async def test_a_failing_message_does_not_starve_the_rest_of_the_backlog(tmp_path, receiver):
    clock = Clock()
    store, metrics, sink = make(tmp_path, receiver, clock, backoff_base_s=1.0, backoff_cap_s=1.0)
    try:
        alerts = queue(store, sink, 3)
        receiver.set_mode("fail")
        for _ in range(3):
            await sink.deliver_due()
            clock.t += 1.0
        assert [store.delivery_status(a.id)[0]["attempts"] for a in alerts] == [1, 1, 1]
    finally:
        await sink.shutdown()


async def test_group_by_sends_one_digest_per_agent(tmp_path, receiver):
    clock = Clock()
    store, metrics, sink = make(tmp_path, receiver, clock, format="slack", group_by=["agent"])
    try:
        alerts = [stored(finding(i, agent=f"agent{i % 2}")) for i in range(5)]
        store.record_alerts(alerts, [], ["ops"])
        assert await sink.deliver_due() == 5
        bodies = [json.loads(r.body) for r in receiver.received]
        assert [b["text"].splitlines()[0] for b in bodies] == ["toolwatch: 3 alerts", "toolwatch: 2 alerts"]
        assert all("agent agent0" in line for line in bodies[0]["text"].splitlines()[1:])
    finally:
        await sink.shutdown()


async def test_shutdown_right_after_an_emit_stops_the_delivery_loop(tmp_path, receiver):
    """An emit wakes the delivery loop while it sleeps; a shutdown in the same turn of the event loop
    cancels it. ``asyncio.wait_for`` (Python 3.11) swallowed that cancellation when the wake-up had
    already completed the sleep, so the loop went on delivering and shutdown never returned."""
    _, _, sink = make(tmp_path, receiver, Clock())
    sink.poll_s = 600.0
    await sink.start()
    await asyncio.sleep(0.05)  # the loop now sleeps until woken (or 600 s)
    sink.emit([])
    started = time.monotonic()
    await asyncio.wait_for(sink.shutdown(), 10)
    assert time.monotonic() - started < 5


async def test_a_cancelled_shutdown_is_passed_on_and_the_outbox_keeps_what_was_not_delivered(tmp_path, receiver):
    """The delivery loop's own cancellation is swallowed by shutdown; a cancel of the task running
    the shutdown was swallowed with it, so a caller's timeout or a cancelled daemon shutdown went
    on as if nothing happened. It is passed on now, after the session is closed, and the alerts
    whose POST it interrupted are still queued, for this store and for the next start."""
    receiver.state.hang_s = 3.0
    receiver.set_mode("hang")
    store, _, sink = make(tmp_path, receiver, Clock())
    alerts = queue(store, sink, 3)
    await sink.start()
    session = sink._session
    for _ in range(500):  # the loop's POST is now with the receiver
        if receiver.state.attempts:
            break
        await asyncio.sleep(0.01)
    assert receiver.state.attempts == 1
    stopping = asyncio.create_task(sink.shutdown())
    await asyncio.sleep(0)  # shutdown has cancelled the loop and waits for it...
    stopping.cancel()  # ...when it is cancelled itself
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert stopping.cancelled()
    assert session.closed and sink._session is None and sink._task is None
    assert store.outbox_depth("ops") == 3 and receiver.received == []
    store.close()

    receiver.set_mode("ok")  # the next start delivers all of them
    store, _, sink = make(tmp_path, receiver, Clock())
    try:
        assert await sink.deliver_due() == 3
        assert sorted(r.headers[IDEMPOTENCY_HEADER] for r in receiver.received) == sorted(a.id for a in alerts)
        assert store.outbox_depth("ops") == 0
    finally:
        await sink.shutdown()
        store.close()


async def test_shutdown_in_a_task_cancelled_earlier_still_returns(tmp_path, receiver):
    """Only a cancel that lands during this shutdown is passed on: a daemon shutdown that goes on
    after an earlier step was cancelled (its task still counts that cancel) stops the sink normally."""
    _, _, sink = make(tmp_path, receiver, Clock())
    await sink.start()
    session = sink._session

    async def after_a_cancel() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # handled: the task goes on, its cancelling() count stays 1
        await sink.shutdown()

    task = asyncio.create_task(after_a_cancel())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait_for(task, 10)
    assert not task.cancelled() and session.closed and sink._task is None


async def test_shutdown_delivers_what_was_queued_just_before_it(tmp_path, receiver, caplog):
    """The daemon drains its queue (storing the last alerts) and then stops its sinks: the delivery
    loop was cancelled before it sent them, so they waited in the outbox for a next start with
    this data_dir, which a member scaled in for good never has."""
    store, _, sink = make(tmp_path, receiver, Clock())
    sink.poll_s = 600.0
    await sink.start()
    await asyncio.sleep(0.05)  # the loop sleeps (up to 600 s) when the last alerts are stored
    alerts = queue(store, sink, 3)
    await asyncio.wait_for(sink.shutdown(), 10)
    assert sorted(r.headers[IDEMPOTENCY_HEADER] for r in receiver.received) == sorted(a.id for a in alerts)
    assert store.outbox_depth("ops") == 0
    assert "stay in the outbox" not in caplog.text


async def test_the_last_delivery_at_shutdown_is_bounded_and_keeps_the_rest(tmp_path, receiver, caplog):
    receiver.state.hang_s = 5.0
    receiver.set_mode("hang")
    store, _, sink = make(tmp_path, receiver, Clock())
    sink.poll_s, sink.stop_flush_s = 600.0, 0.5
    await sink.start()
    await asyncio.sleep(0.05)
    queue(store, sink, 2)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, "toolwatch.webhook"):
        await asyncio.wait_for(sink.shutdown(), 10)
    assert time.monotonic() - started < 3
    assert receiver.state.attempts == 1 and receiver.received == []
    assert store.outbox_depth("ops") == 2
    assert "webhook ops: 2 message(s) not delivered at stop stay in the outbox" in caplog.text


async def test_no_delivery_at_shutdown_while_the_receiver_is_held(tmp_path, receiver):
    """Backoff (and the rate limit) still hold at shutdown: a failing receiver is not tried again."""
    receiver.set_mode("fail")
    clock = Clock()
    store, _, sink = make(tmp_path, receiver, clock, backoff_base_s=30.0)
    sink.poll_s = 600.0
    queue(store, sink, 1)
    await sink.start()
    for _ in range(500):
        if receiver.state.attempts:
            break
        await asyncio.sleep(0.01)
    assert receiver.state.attempts == 1
    await asyncio.wait_for(sink.shutdown(), 10)
    assert receiver.state.attempts == 1 and store.outbox_depth("ops") == 1
