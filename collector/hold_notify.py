"""Tell humans about a held call: one signed webhook POST per configured webhook.

Why not the alert outbox: a hold is only useful while the proxy waits, so it is sent at once
(one retry) instead of being queued for hours. The body carries the redacted arguments the proxy
sent and the API calls that decide the hold; it is signed like alert webhooks
(``X-Toolwatch-Signature: v1=HMAC-SHA256(secret, "<timestamp>." + body)``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from .holds import Hold
from .sinks.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

log = logging.getLogger("toolwatch.holds")

HOLD_EVENT = "toolwatch.hold"


@dataclass(slots=True, frozen=True)
class HoldTarget:
    name: str
    url: str
    secret: bytes
    timeout_s: float = 5.0


def hold_payload(hold: Hold, api_base: str) -> dict[str, Any]:
    base = f"{api_base.rstrip('/')}/api/v1/holds/{hold.id}"
    return {"type": HOLD_EVENT, "hold": hold.to_dict(),
            "approve": {"method": "POST", "url": f"{base}/approve"},
            "deny": {"method": "POST", "url": f"{base}/deny"},
            "cli": {"approve": f"toolwatch holds approve {hold.id}", "deny": f"toolwatch holds deny {hold.id}"}}


class HoldNotifier:
    def __init__(self, targets: list[HoldTarget], api_base: str = "") -> None:
        self.targets = targets
        self.api_base = api_base
        self._tasks: set[asyncio.Task[None]] = set()

    def notify(self, hold: Hold) -> None:
        """Send in the background; the proxy's request does not wait for the webhooks."""
        for target in self.targets:
            task = asyncio.create_task(self._send(target, hold))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, target: HoldTarget, hold: Hold) -> None:
        body = json.dumps(hold_payload(hold, self.api_base), sort_keys=True, separators=(",", ":")).encode()
        for attempt in (1, 2):
            ts = int(time.time())
            headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(ts),
                       SIGNATURE_HEADER: sign(target.secret, ts, body), "Idempotency-Key": hold.id}
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=target.timeout_s)) as s:
                    async with s.post(target.url, data=body, headers=headers) as resp:
                        if resp.status < 300:
                            return
                        why = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                why = repr(exc)
            log.warning("hold %s: webhook %s failed (attempt %d): %s", hold.id, target.name, attempt, why)
        log.error("hold %s: webhook %s not delivered; decide it with `toolwatch holds approve|deny %s`",
                  hold.id, target.name, hold.id)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
