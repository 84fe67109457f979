"""The proxy's decision client against a real local HTTP server: cache, holds, fail modes."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from toolwatch.instrumentation.proxy.decisions import DecisionClient, EnforceOptions, Verdict

FACTS = {"agent_id": "a1", "server": "fs", "tool": "read", "args_json": "{}", "args_bytes": 2}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def daemon_app(answers: dict[str, list], seen: list[str]) -> web.Application:
    async def decide(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        status, body = answers["decide"].pop(0)
        return web.json_response(body, status=status)

    async def holds(request: web.Request) -> web.Response:
        return web.json_response({"id": "hold_1", "status": "pending"}, status=201)

    async def hold(request: web.Request) -> web.Response:
        return web.json_response(answers["hold"].pop(0))

    app = web.Application()
    app.router.add_post("/api/v1/decide", decide)
    app.router.add_post("/api/v1/holds", holds)
    app.router.add_get("/api/v1/holds/{id}", hold)
    return app


async def test_allow_is_cached_for_the_ttl_and_sent_with_the_token():
    seen: list[str] = []
    answers = {"decide": [(200, {"action": "allow", "reason": "ok"}), (200, {"action": "deny", "reason": "no"})]}
    async with TestServer(daemon_app(answers, seen)) as server:
        clock = Clock()
        client = DecisionClient(EnforceOptions(str(server.make_url("/")), token="tk", cache_ttl_s=2), clock=clock,
                                log=lambda _: None)
        first = await client.decide(FACTS)
        clock.now = 1.9
        second = await client.decide(FACTS)
        clock.now = 2.1
        third = await client.decide(FACTS)
        await client.close()
    assert (first.action, first.source) == ("allow", "daemon")
    assert (second.action, second.source) == ("allow", "cache")
    assert (third.action, third.source) == ("deny", "daemon")
    assert seen == ["Bearer tk", "Bearer tk"] and client.stats.cached == 1


async def test_holds_are_never_cached_and_wait_for_the_decision():
    answers = {"decide": [(200, {"action": "hold", "reason": "destructive", "rule": "destructive"})] * 2,
               "hold": [{"id": "hold_1", "status": "pending"},
                        {"id": "hold_1", "status": "approved", "decision": "allow"}]}
    async with TestServer(daemon_app(answers, [])) as server:
        client = DecisionClient(EnforceOptions(str(server.make_url("/"))), log=lambda _: None)
        assert (await client.decide(FACTS)).action == "hold"
        verdict = await client.decide(FACTS)
        final = await client.hold(FACTS, verdict)
        await client.close()
    assert final.action == "allow" and final.rule == "hold.approved" and "approved by an operator" in final.reason


async def test_server_errors_and_refusals_degrade_to_the_fail_mode_loudly():
    logs: list[str] = []
    answers = {"decide": [(500, {"error": "boom"}), (401, {"error": "token"})]}
    async with TestServer(daemon_app(answers, [])) as server:
        clock = Clock()
        client = DecisionClient(EnforceOptions(str(server.make_url("/")), fail_closed=True), clock=clock, log=logs.append)
        first = await client.decide(FACTS)
        clock.now = 5
        second = await client.decide({**FACTS, "tool": "other"})
        await client.close()
    assert first == Verdict("deny", first.reason, "fail_closed", "fail-closed") and "fails closed" in first.reason
    assert second.source == "fail-closed"
    assert len(logs) == 1 and "FAIL-CLOSED" in logs[0] and "HTTP 500" in logs[0]
    assert client.stats.degraded == {"fail-closed": 2} and client.stats.daemon_unreachable == 2


async def test_unreachable_daemon_is_retried_at_most_once_per_retry_interval(unused_tcp_port):
    logs: list[str] = []
    clock = Clock()
    client = DecisionClient(EnforceOptions(f"http://127.0.0.1:{unused_tcp_port}", retry_s=1.0), clock=clock,
                            log=logs.append)
    verdicts = [await client.decide({**FACTS, "args_json": str(i)}) for i in range(3)]
    await client.close()
    assert [v.source for v in verdicts] == ["fail-open"] * 3 and all(v.action == "allow" for v in verdicts)
    assert "FAIL-OPEN" in logs[0] and len(logs) == 1


async def test_local_policy_file_decides_while_the_daemon_is_down(tmp_path, unused_tcp_port):
    policy = tmp_path / "p.yaml"
    policy.write_text("default: allow\nsubjects:\n  - agents: ['a*']\n    deny_tools: ['fs/read']\n")
    client = DecisionClient(EnforceOptions(f"http://127.0.0.1:{unused_tcp_port}", policy_file=str(policy)),
                            log=lambda _: None)
    denied = await client.decide(FACTS)
    allowed = await client.decide({**FACTS, "tool": "list"})
    await client.close()
    assert (denied.action, denied.source, denied.rule) == ("deny", "local-policy", "subjects[0].deny_tools")
    assert allowed.action == "allow"
