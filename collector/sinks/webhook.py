"""Signed webhooks delivered from the store's durable outbox: routes, formats, rate limit, retries.

Signature (documented in docs/webhooks.md): ``X-Toolwatch-Signature: v1=<hex>`` where hex is
HMAC-SHA256(secret, f"{timestamp}.{body}") and ``X-Toolwatch-Timestamp`` is Unix seconds; the
receiver recomputes it and rejects stale timestamps (replays). ``Idempotency-Key`` is the alert id
(for a digest of several alerts: a hash of their ids).

A message leaves the outbox only after a 2xx (delivered) or when it is older than ``max_age_s``
(dead: kept and visible, no longer retried). A rate-limited or failing receiver just makes
messages wait; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from typing import Any, Callable

import aiohttp

from ..config import WebhookConfig
from ..metrics import Metrics
from ..store import Store, StoredAlert
from ..uncancellable import stop_task
from . import Sink
from .formats import MAX_BATCH, SCHEMA_VERSION, digest_chunks, idempotency_key, render
from .ratelimit import TokenBucket
from .route import Route

SIGNATURE_HEADER = "X-Toolwatch-Signature"
TIMESTAMP_HEADER = "X-Toolwatch-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
ALERT_IDS_HEADER = "X-Toolwatch-Alert-Ids"

__all__ = [
    "SCHEMA_VERSION", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "IDEMPOTENCY_HEADER", "ALERT_IDS_HEADER",
    "sign", "verify", "payload", "backoff", "WebhookSink",
]

log = logging.getLogger("toolwatch.webhook")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *, now: float, tolerance_s: float = 300) -> bool:
    """Reference verifier for receivers: constant-time compare and a replay window."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def payload(alert: StoredAlert) -> dict[str, Any]:
    """The ``toolwatch`` format's body as data (the sink sends its canonical JSON)."""
    return {"schema": SCHEMA_VERSION, "alert": alert.to_dict()}


def backoff(attempts: int, *, base: float = 1.0, cap: float = 300.0, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter."""
    return rng() * min(cap, base * (2 ** min(attempts, 20)))


def _retry_after(resp: aiohttp.ClientResponse) -> float:
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0


class WebhookSink(Sink):
    durable = True

    def __init__(
        self,
        conf: WebhookConfig,
        store: Store,
        metrics: Metrics,
        secret: bytes,
        *,
        clock: Callable[[], float] = time.time,
        poll_s: float = 1.0,
        backoff_base_s: float | None = None,
        rng: Callable[[], float] = random.random,
        stop_flush_s: float = 3.0,
    ) -> None:
        self.conf = conf
        self.name = conf.name
        self.store = store
        self.metrics = metrics
        self.secret = secret
        self.clock = clock
        self.poll_s = poll_s
        self.backoff_base_s = conf.backoff_base_s if backoff_base_s is None else backoff_base_s
        self.rng = rng
        self.stop_flush_s = stop_flush_s
        """How long ``shutdown`` may spend on a last delivery of what is due (the alerts of the final drain)."""
        self.route = Route.of(conf.min_severity, conf.detectors, conf.agents)
        self.bucket = (
            TokenBucket(conf.rate_limit_per_min / 60.0, conf.rate_limit_burst, clock()) if conf.rate_limit_per_min > 0 else None
        )
        self._hold_until = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._task is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.conf.timeout_s))
            self._task = asyncio.create_task(self._run(), name=f"webhook:{self.name}")

    async def shutdown(self) -> None:
        """Stop the delivery loop, deliver what is due once more (for at most ``stop_flush_s``), and
        close the HTTP session; what is not delivered stays in the outbox.

        The last delivery is for the alerts of the queue the daemon drains just before it stops its
        sinks: the loop was stopped before it sent them, so they waited in the outbox for the next
        start with this data_dir, which for a member scaled in for good never comes. Rate limits and
        backoff still hold; a receiver that is down or slow costs at most ``stop_flush_s``.

        The loop ends in a CancelledError of its own, which is swallowed; a cancel of the task
        running this shutdown is passed on once the session is closed (a caller's timeout, a
        cancelled daemon shutdown). Nothing is lost either way: a message leaves the outbox only
        when a receiver has answered 2xx, so one interrupted mid-POST is sent again next start."""
        task, self._task = self._task, None
        try:
            await stop_task(task)
            if task is not None:  # started: not a store driven by hand (tests, one-shot tools)
                await self._deliver_at_stop()
        finally:
            session, self._session = self._session, None
            if session is not None:
                await session.close()

    async def _deliver_at_stop(self) -> None:
        if self.stop_flush_s > 0 and self.clock() >= self._hold_until:
            try:
                async with asyncio.timeout(self.stop_flush_s):
                    await self.deliver_due()
            except TimeoutError:
                pass
            except Exception:
                log.exception("webhook %s: last delivery at stop failed", self.name)
        left = self.store.outbox_depth(self.name)
        if left:
            log.info("webhook %s: %d message(s) not delivered at stop stay in the outbox; the next start with "
                     "this data_dir delivers them", self.name, left)

    def emit(self, alerts: list[StoredAlert]) -> None:
        self._wake.set()

    def wants(self, alert: StoredAlert) -> bool:
        """The route: the router queues an alert for this receiver only when this is true."""
        return self.route.matches(alert)

    def refresh_gauges(self) -> None:
        self.metrics.outbox_depth.labels(self.name).set(self.store.outbox_depth(self.name))
        self.metrics.outbox_dead.labels(self.name).set(self.store.dead_count(self.name))

    def _sleep_s(self) -> float:
        """Until the next due message or the end of a hold, bounded by ``poll_s``."""
        now = self.clock()
        if self._hold_until > now:
            return min(self.poll_s, self._hold_until - now)
        due = self.store.next_due_at(self.name)
        if due is None:
            return self.poll_s
        return min(self.poll_s, max(0.005, due - now))

    async def _run(self) -> None:
        while True:
            try:
                if self.clock() >= self._hold_until:
                    await self.deliver_due()
                self.refresh_gauges()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad cycle stop delivery for good
                log.exception("webhook %s: delivery cycle failed; will retry", self.name)
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancel (shutdown) that arrives once
            # the wake-up is already done, and this loop then never stopped.
            try:
                async with asyncio.timeout(self._sleep_s()):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    def _expire(self) -> None:
        for alert_id, attempts in self.store.expire_undelivered(self.name, self.conf.max_age_s):
            self.metrics.webhook_deliveries.labels(self.name, "dead").inc()
            log.error(
                "webhook %s: alert %s is dead after %d attempts (older than max_age_s); "
                "POST /api/v1/alerts/%s/redeliver to try again", self.name, alert_id, attempts, alert_id,
            )

    async def deliver_due(self) -> int:
        """Send what is due, in outbox order, as the rate limit allows; returns alerts delivered."""
        self._expire()
        live = self.store.due_deliveries(self.name, limit=200)
        chunks = digest_chunks(live, lambda row: row[1], MAX_BATCH[self.conf.format], self.conf.group_by)
        delivered = 0
        for i, chunk in enumerate(chunks):
            if self.bucket is not None and not self.bucket.take(self.clock()):
                held = sum(len(c) for c in chunks[i:])
                self.metrics.webhook_rate_limited.labels(self.name).inc(held)
                self._hold_until = self.clock() + self.bucket.wait_s(self.clock())
                log.info("webhook %s: rate limit reached; %d message(s) wait in the outbox", self.name, held)
                break
            ok, error, retry_after = await self._post([a for _, a, _ in chunk])
            if ok:
                now = self.clock()
                for seq, alert, _ in chunk:
                    self.store.mark_delivered(seq)
                    self.metrics.webhook_delivery_latency.labels(self.name).observe(max(0.0, now - alert.created_at))
                delivered += len(chunk)
                self.metrics.webhook_deliveries.labels(self.name, "success").inc(len(chunk))
                continue
            attempts = max(n for _, _, n in chunk)
            delay = max(min(retry_after, self.conf.backoff_cap_s), backoff(attempts, base=self.backoff_base_s, cap=self.conf.backoff_cap_s, rng=self.rng))
            for seq, _, _ in chunk:
                self.store.mark_failed(seq, error, self.clock() + delay)
            self.metrics.webhook_deliveries.labels(self.name, "failure").inc(len(chunk))
            # The receiver is failing: pause it rather than hammer it with the rest of the backlog.
            self._hold_until = self.clock() + delay
            log.warning("webhook %s: %d alert(s) not delivered (%s); retry in %.2fs", self.name, len(chunk), error, delay)
            break
        return delivered

    async def _post(self, alerts: list[StoredAlert]) -> tuple[bool, str, float]:
        if self._session is None:  # deliver_due called without start() (tests, one-shot tools)
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.conf.timeout_s))
        body = render(self.conf.format, alerts, self.name)
        ts = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(self.secret, ts, body),
            IDEMPOTENCY_HEADER: idempotency_key(alerts),
            ALERT_IDS_HEADER: ",".join(a.id for a in alerts),
            "User-Agent": "toolwatch-webhook/1",
        }
        try:
            async with self._session.post(self.conf.url, data=body, headers=headers) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return True, "", 0.0
                return False, f"HTTP {resp.status}", _retry_after(resp) if resp.status in (429, 503) else 0.0
        except asyncio.TimeoutError:
            return False, f"timeout after {self.conf.timeout_s}s", 0.0
        except aiohttp.ClientError as exc:
            return False, f"{type(exc).__name__}: {exc}", 0.0
