"""HTTP API and ``/metrics`` on one listener: health, readiness, alerts (bearer token when configured)."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from toolwatch.detectors.events import SEVERITIES

from .approvals import Approvals, UnknownApproval
from .metrics import Metrics
from .store import Store

log = logging.getLogger("toolwatch.api")
STOP_GRACE_S = 5.0
"""How long a stop lets requests in flight finish: aiohttp's default (60 s) let one stalled client
hold the daemon's stop past a service manager's stop timeout."""


def json_error(status: int, message: str) -> web.Response:
    """Every API error body: ``{"error": "<what is wrong and what to do>"}``."""
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
        approvals: Approvals | None = None,
    ) -> None:
        self.approvals = approvals
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
        app.router.add_post("/api/v1/alerts/{id}/redeliver", self.redeliver_alert)
        app.router.add_get("/api/v1/approvals", self.list_approvals)
        app.router.add_post("/api/v1/approvals/{id}/approve", self.approve)
        app.router.add_post("/api/v1/approvals/{id}/reject", self.reject)
        if self.extra_routes:
            self.extra_routes(app)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        if self.api_token and request.path.startswith("/api/"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_token}".encode()):
                return json_error(401, "missing or wrong bearer token (send 'Authorization: Bearer <api_token>')")
        return await handler(request)

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=STOP_GRACE_S)
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
        """Newest first, filtered; ``next_cursor`` (when not null) fetches the following page."""
        q = request.query
        unknown = sorted(set(q) - ALERT_QUERY_KEYS)
        if unknown:
            return json_error(400, f"unknown query parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(ALERT_QUERY_KEYS))}")
        severity = q.get("severity")
        if severity and severity not in SEVERITIES:
            return json_error(400, f"severity must be one of {', '.join(SEVERITIES)}")
        status = q.get("status")
        if status and status not in ("open", "acked"):
            return json_error(400, "status must be 'open' or 'acked'")
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            return json_error(400, "limit must be a whole number from 1 to 1000")
        if not 1 <= limit <= 1000:
            return json_error(400, "limit must be a whole number from 1 to 1000")
        before = None
        if q.get("cursor"):
            before = decode_cursor(q["cursor"])
            if before is None:
                return json_error(400, "cursor is not one this API returned; use next_cursor from the previous page")
        alerts = self.store.list_alerts(
            detector=q.get("detector"), severity=severity, agent_id=q.get("agent"), status=status, limit=limit, before=before
        )
        next_cursor = encode_cursor(alerts[-1].created_at, alerts[-1].id) if len(alerts) == limit else None
        return web.json_response({"alerts": [a.to_dict() for a in alerts], "next_cursor": next_cursor})

    async def get_alert(self, request: web.Request) -> web.Response:
        alert = self.store.get_alert(request.match_info["id"])
        if alert is None:
            return json_error(404, f"no alert with id {request.match_info['id']!r}")
        data = alert.to_dict()
        data["deliveries"] = self.store.delivery_status(alert.id)
        return web.json_response(data)

    async def ack_alert(self, request: web.Request) -> web.Response:
        """Idempotent; answers with the alert as stored after the ack."""
        alert_id = request.match_info["id"]
        if not self.store.ack_alert(alert_id):
            return json_error(404, f"no alert with id {alert_id!r}")
        alert = self.store.get_alert(alert_id)
        assert alert is not None
        return web.json_response(alert.to_dict())

    async def redeliver_alert(self, request: web.Request) -> web.Response:
        """Requeue the alert's dead webhook messages (given up after max_age_s) with a fresh start."""
        alert_id = request.match_info["id"]
        if self.store.get_alert(alert_id) is None:
            return json_error(404, f"no alert with id {alert_id!r}")
        return web.json_response({"id": alert_id, "requeued": self.store.requeue_dead(alert_id)})

    def _no_approvals(self) -> web.Response:
        return json_error(
            404, "no detector offering approvals is running (enable the rug-pull detector: detectors.rugpull)"
        )

    async def list_approvals(self, request: web.Request) -> web.Response:
        if self.approvals is None:
            return self._no_approvals()
        return web.json_response({"detector": self.approvals.detector, "pending": await self.approvals.pending()})

    async def _decide(self, request: web.Request, decision: str) -> web.Response:
        if self.approvals is None:
            return self._no_approvals()
        pending_id = request.match_info["id"]
        try:
            result = await (self.approvals.approve if decision == "approve" else self.approvals.reject)(pending_id)
        except UnknownApproval:
            return json_error(404, f"no pending change with id {pending_id!r}; list them with GET /api/v1/approvals")
        log.info("approval %s: %s via API", pending_id, result["decision"])
        return web.json_response(result)

    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, "approve")

    async def reject(self, request: web.Request) -> web.Response:
        return await self._decide(request, "reject")


ALERT_QUERY_KEYS = frozenset({"detector", "severity", "agent", "status", "limit", "cursor"})


def encode_cursor(created_at: float, alert_id: str) -> str:
    """Opaque page cursor: the sort key of the last alert on a page."""
    raw = json.dumps([created_at, alert_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, alert_id = json.loads(raw)
        if isinstance(created_at, bool) or not isinstance(created_at, (int, float)) or not isinstance(alert_id, str):
            return None
        return float(created_at), alert_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        return None
