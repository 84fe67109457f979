"""The demo's webhook receiver: a real local HTTP endpoint that verifies every signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Inbox:
    secret: bytes
    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0

    def verify(self, headers: Any, body: bytes) -> bool:
        """Exactly what docs/webhooks.md tells receivers to do, with the hmac module alone."""
        ts = headers.get("X-Toolwatch-Timestamp", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            return False
        expected = "v1=" + hmac.new(self.secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, headers.get("X-Toolwatch-Signature", ""))

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self.verify(request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        self.received.append(json.loads(body))
        return web.Response(text="ok")


async def start_inbox(secret: bytes, host: str = "127.0.0.1") -> tuple[Inbox, web.AppRunner, str]:
    inbox = Inbox(secret)
    app = web.Application()
    app.router.add_post("/hook", inbox.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return inbox, runner, f"http://{host}:{port}/hook"
