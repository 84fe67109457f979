"""HTTP routes of enforcement: ``/api/v1/decide``, ``/api/v1/listing/check`` and ``/api/v1/holds``.

They sit behind the API's bearer-token middleware like every ``/api/`` route. The proxy sends
only redacted arguments; nothing here logs argument text.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from .api import json_error
from .enforcement import CallFacts, EnforcementService, FactsError
from .hold_notify import HoldNotifier
from .holds import AlreadyDecided, Hold, HoldBook, HoldError, UnknownHold
from .metrics import Metrics

log = logging.getLogger("toolwatch.enforcement")

MAX_WAIT_S = 60.0


async def _body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"{}")
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": "body: not valid JSON"}),
                                 content_type="application/json") from None


class EnforcementApi:
    def __init__(self, service: EnforcementService, holds: HoldBook, notifier: HoldNotifier,
                 metrics: Metrics | None = None) -> None:
        self.service = service
        self.holds = holds
        self.notifier = notifier
        self.metrics = metrics
        if metrics is not None:
            holds.on_close = self._count_closed

    def _count_closed(self, hold: Hold) -> None:
        assert self.metrics is not None
        self.metrics.holds.labels(hold.status).inc()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/decide", self.decide)
        app.router.add_post("/api/v1/listing/check", self.check_listing)
        app.router.add_get("/api/v1/holds", self.list_holds)
        app.router.add_post("/api/v1/holds", self.create_hold)
        app.router.add_get("/api/v1/holds/{id}", self.get_hold)
        app.router.add_post("/api/v1/holds/{id}/approve", self.approve)
        app.router.add_post("/api/v1/holds/{id}/deny", self.deny)

    async def decide(self, request: web.Request) -> web.Response:
        """Allow, deny or hold one call described by its redacted facts."""
        try:
            facts = CallFacts.from_json(await _body(request))
        except FactsError as exc:
            return json_error(400, str(exc))
        verdict = await self.service.decide(facts)
        if self.metrics is not None:
            self.metrics.enforcement_decisions.labels(verdict["action"], str(verdict["quarantined"]).lower()).inc()
        return web.json_response(verdict)

    async def check_listing(self, request: web.Request) -> web.Response:
        """Which tools of a ``tools/list`` result to hide: ``{"server": ..., "tools": [...]}``."""
        body = await _body(request)
        if not isinstance(body, dict) or not isinstance(body.get("server"), str) or not isinstance(body.get("tools"), list):
            return json_error(400, "body: must be {\"server\": NAME, \"tools\": [the tools/list result's tools]}")
        try:
            hidden = await self.service.listing(body["server"], body["tools"])
        except FactsError as exc:
            return json_error(400, str(exc))
        return web.json_response({"server": body["server"], "quarantined": hidden})

    async def list_holds(self, request: web.Request) -> web.Response:
        status = request.query.get("status") or None
        if status not in (None, "pending", "approved", "denied", "timed_out"):
            return json_error(400, "status must be one of pending, approved, denied, timed_out")
        return web.json_response({"holds": [h.to_dict() for h in self.holds.list(status)]})

    async def create_hold(self, request: web.Request) -> web.Response:
        try:
            hold = self.holds.create(await _body(request))
        except HoldError as exc:
            return json_error(400, str(exc))
        log.warning("holding call %s to %s/%s for agent %s until %s decides (or %.0f s pass): %s",
                    hold.id, hold.server, hold.tool, hold.agent_id, "an operator",
                    hold.expires_at - hold.created_at, hold.reason)
        self.notifier.notify(hold)
        if self.metrics is not None:
            self.metrics.holds.labels("opened").inc()
        return web.json_response(hold.to_dict(), status=201)

    async def get_hold(self, request: web.Request) -> web.Response:
        """The hold; ``?wait=S`` long-polls up to S seconds (max 60) for a decision."""
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            return json_error(400, "wait must be a number of seconds")
        try:
            hold = await self.holds.wait(request.match_info["id"], min(max(wait, 0.0), MAX_WAIT_S))
        except UnknownHold:
            return json_error(404, f"no hold with id {request.match_info['id']!r}; list them with GET /api/v1/holds")
        return web.json_response(hold.to_dict())

    async def _decide(self, request: web.Request, decision: str) -> web.Response:
        hold_id = request.match_info["id"]
        try:
            hold = self.holds.decide(hold_id, decision, by="api")
        except UnknownHold:
            return json_error(404, f"no hold with id {hold_id!r}; list them with GET /api/v1/holds")
        except AlreadyDecided as exc:
            return web.json_response({"error": str(exc), "hold": exc.hold.to_dict()}, status=409)
        log.info("hold %s: %s via API", hold_id, hold.status)
        return web.json_response(hold.to_dict())

    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, "allow")

    async def deny(self, request: web.Request) -> web.Response:
        return await self._decide(request, "deny")
