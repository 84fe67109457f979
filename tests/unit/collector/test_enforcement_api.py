"""The enforcement routes over real HTTP, behind the API's bearer token."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from toolwatch.collector.api import Api
from toolwatch.collector.enforcement import EnforcementService
from toolwatch.collector.enforcement_api import EnforcementApi
from toolwatch.collector.hold_notify import HoldNotifier, HoldTarget, hold_payload
from toolwatch.collector.holds import HoldBook
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.sinks.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from toolwatch.detectors.policy import PolicyDetector
from toolwatch.detectors.policy_config import PolicyConfig

AUTH = {"Authorization": "Bearer t"}


def make_app(targets: list[HoldTarget] | None = None, metrics: Metrics | None = None) -> web.Application:
    policy = PolicyDetector(PolicyConfig.from_dict({"subjects": [{"agents": ["*"], "deny_tools": ["rm"]}]}))
    metrics = metrics or Metrics(CollectorRegistry())
    enforcement = EnforcementApi(EnforcementService([policy], threading.Lock()), HoldBook(),
                                 HoldNotifier(targets or [], "http://127.0.0.1:9464"), metrics)
    api = Api("127.0.0.1", 0, store=None, metrics=metrics, ready=lambda: True, api_token="t",
              extra_routes=enforcement.routes)
    return api.app()


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_decide_needs_the_token_and_answers_with_the_rule():
    metrics = Metrics(CollectorRegistry())
    async with TestClient(TestServer(make_app(metrics=metrics))) as client:
        assert (await client.post("/api/v1/decide", json={"tool": "rm"})).status == 401
        resp = await client.post("/api/v1/decide", json={"agent_id": "a", "server": "fs", "tool": "rm"}, headers=AUTH)
        body = await resp.json()
        assert resp.status == 200 and body["action"] == "deny" and body["rule"] == "subjects[0].deny_tools"
        resp = await client.post("/api/v1/decide", json={"agent_id": "a"}, headers=AUTH)
        assert resp.status == 400 and (await resp.json())["error"].startswith("tool:")
        resp = await client.post("/api/v1/decide", data=b"{nope", headers=AUTH)
        assert resp.status == 400 and "not valid JSON" in (await resp.json())["error"]
    labels = {"action": "deny", "quarantined": "false"}
    assert sample(metrics, "toolwatch_enforcement_decisions_total", labels) == 1


async def test_hold_round_trip_with_a_signed_webhook():
    received: list[tuple[dict, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook)
    async with TestServer(hook_app) as hook_server:
        target = HoldTarget("h", str(hook_server.make_url("/hook")), b"s3cret")
        metrics = Metrics(CollectorRegistry())
        async with TestClient(TestServer(make_app([target], metrics))) as client:
            resp = await client.post("/api/v1/holds", headers=AUTH, json={
                "agent_id": "a", "server": "fs", "tool": "rm", "arguments": '{"path":"<path>"}', "timeout_s": 30})
            hold = await resp.json()
            assert resp.status == 201 and hold["status"] == "pending"
            waiter = asyncio.create_task(client.get(f"/api/v1/holds/{hold['id']}?wait=20", headers=AUTH))
            for _ in range(200):
                if received:
                    break
                await asyncio.sleep(0.01)
            assert not waiter.done()
            ok = await client.post(f"/api/v1/holds/{hold['id']}/approve", headers=AUTH)
            assert ok.status == 200 and (await ok.json())["status"] == "approved"
            assert (await (await waiter).json())["decision"] == "allow"
            again = await client.post(f"/api/v1/holds/{hold['id']}/deny", headers=AUTH)
            assert again.status == 409 and "already decided" in (await again.json())["error"]
            missing = await client.post("/api/v1/holds/hold_x/approve", headers=AUTH)
            assert missing.status == 404
            listed = await (await client.get("/api/v1/holds?status=approved", headers=AUTH)).json()
            assert [h["id"] for h in listed["holds"]] == [hold["id"]]
    assert [sample(metrics, "toolwatch_holds_total", {"outcome": o}) for o in ("opened", "approved", "denied")] == [1, 1, 0]
    headers, body = received[0]
    assert verify(b"s3cret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER], now=float(headers[TIMESTAMP_HEADER]))
    assert b'"arguments":"{\\"path\\":\\"<path>\\"}"' in body and b"toolwatch holds approve" in body


def test_payload_names_the_api_calls():
    h = HoldBook().create({"tool": "rm"})
    p = hold_payload(h, "http://d:1/")
    assert p["approve"]["url"] == f"http://d:1/api/v1/holds/{h.id}/approve" and p["type"] == "toolwatch.hold"
    assert p["deny"]["url"].endswith("/deny") and p["cli"]["deny"] == f"toolwatch holds deny {h.id}"
