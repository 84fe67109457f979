"""Signed webhooks delivered from the store's durable outbox, with retries and backoff.

Signature (documented in docs/webhooks.md): ``X-Toolwatch-Signature: v1=<hex>`` where hex is
HMAC-SHA256(secret, f"{timestamp}.{body}") and ``X-Toolwatch-Timestamp`` is Unix seconds; the
receiver recomputes it and rejects stale timestamps (replays). ``Idempotency-Key`` is the alert id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from typing import Any, Callable

import aiohttp

from ..config import WebhookConfig
from ..metrics import Metrics
from ..store import Store, StoredAlert
from . import Sink
from toolwatch.detectors.events import severity_rank

SCHEMA_VERSION = "toolwatch.alert/v1"
SIGNATURE_HEADER = "X-Toolwatch-Signature"
TIMESTAMP_HEADER = "X-Toolwatch-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"

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
    return {"schema": SCHEMA_VERSION, "alert": alert.to_dict()}


def backoff(attempts: int, *, base: float = 1.0, cap: float = 300.0, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter."""
    return rng() * min(cap, base * (2 ** min(attempts, 20)))


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
        backoff_base_s: float = 1.0,
    ) -> None:
        self.conf = conf
        self.name = conf.name
        self.store = store
        self.metrics = metrics
        self.secret = secret
        self.clock = clock
        self.poll_s = poll_s
        self.backoff_base_s = backoff_base_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._task is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.conf.timeout_s))
            self._task = asyncio.create_task(self._run(), name=f"webhook:{self.name}")

    async def shutdown(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def emit(self, alerts: list[StoredAlert]) -> None:
        self._wake.set()

    def wants(self, alert: StoredAlert) -> bool:
        return severity_rank(alert.severity) >= severity_rank(self.conf.min_severity)

    async def _run(self) -> None:
        while True:
            try:
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad cycle stop delivery for good
                log.exception("webhook %s: delivery cycle failed; will retry", self.name)
            self.metrics.outbox_depth.labels(self.name).set(self.store.outbox_depth(self.name))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def deliver_due(self) -> int:
        delivered = 0
        for seq, alert, attempts in self.store.due_deliveries(self.name):
            if not self.wants(alert):
                self.store.mark_delivered(seq)
                self.metrics.webhook_deliveries.labels(self.name, "filtered").inc()
                continue
            ok, error = await self._post(alert)
            if ok:
                self.store.mark_delivered(seq)
                delivered += 1
                self.metrics.webhook_deliveries.labels(self.name, "success").inc()
            else:
                delay = backoff(attempts, base=self.backoff_base_s)
                self.store.mark_failed(seq, error, self.clock() + delay)
                self.metrics.webhook_deliveries.labels(self.name, "failure").inc()
                log.warning("webhook %s: alert %s not delivered (%s); retry in %.1fs", self.name, alert.id, error, delay)
        return delivered

    async def _post(self, alert: StoredAlert) -> tuple[bool, str]:
        assert self._session is not None
        body = json.dumps(payload(alert), sort_keys=True, separators=(",", ":")).encode()
        ts = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(self.secret, ts, body),
            IDEMPOTENCY_HEADER: alert.id,
            "User-Agent": "toolwatch-webhook/1",
        }
        try:
            async with self._session.post(self.conf.url, data=body, headers=headers) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return True, ""
                return False, f"HTTP {resp.status}"
        except asyncio.TimeoutError:
            return False, f"timeout after {self.conf.timeout_s}s"
        except aiohttp.ClientError as exc:
            return False, f"{type(exc).__name__}: {exc}"
