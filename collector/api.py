"""HTTP API and ``/metrics`` on one listener: health, readiness, alerts (bearer token when configured)."""

from __future__ import annotations

import hmac
import logging
from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from toolwatch.detectors.events import SEVERITIES

from .metrics import Metrics
from .store import Store

log = logging.getLogger("toolwatch.api")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Api:
    def __init__(
        self,
        host: str,
        port: int,
        store: Store,
        metrics: Metrics,
        *,
        ready: Callable[[], bool],
        api_token: str = "",
        extra_routes: Callable[[web.Application], None] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.store = store
        self.metrics = metrics
        self.ready = ready
        self.api_token = api_token
        self.extra_routes = extra_routes
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=1024 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_get("/api/v1/alerts", self.list_alerts)
        app.router.add_get("/api/v1/alerts/{id}", self.get_alert)
        app.router.add_post("/api/v1/alerts/{id}/ack", self.ack_alert)
        if self.extra_routes:
            self.extra_routes(app)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        if self.api_token and request.path.startswith("/api/"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_token}".encode()):
                return _error(401, "missing or wrong bearer token (send 'Authorization: Bearer <api_token>')")
        return await handler(request)

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        log.info("API and /metrics on http://%s:%s", self.host, self.bound_port)

    async def shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def list_alerts(self, request: web.Request) -> web.Response:
        q = request.query
        severity = q.get("severity")
        if severity and severity not in SEVERITIES:
            return _error(400, f"severity must be one of {', '.join(SEVERITIES)}")
        status = q.get("status")
        if status and status not in ("open", "acked"):
            return _error(400, "status must be 'open' or 'acked'")
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            return _error(400, "limit must be a whole number")
        alerts = self.store.list_alerts(
            detector=q.get("detector"), severity=severity, agent_id=q.get("agent"), status=status, limit=limit
        )
        return web.json_response({"alerts": [a.to_dict() for a in alerts]})

    async def get_alert(self, request: web.Request) -> web.Response:
        alert = self.store.get_alert(request.match_info["id"])
        if alert is None:
            return _error(404, f"no alert with id {request.match_info['id']!r}")
        data = alert.to_dict()
        data["deliveries"] = self.store.delivery_status(alert.id)
        return web.json_response(data)

    async def ack_alert(self, request: web.Request) -> web.Response:
        if not self.store.ack_alert(request.match_info["id"]):
            return _error(404, f"no alert with id {request.match_info['id']!r}")
        return web.json_response({"id": request.match_info["id"], "status": "acked"})
