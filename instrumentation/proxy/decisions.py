"""The proxy's decision client: ask the daemon, cache briefly, and fail open or closed.

Why a client and not local state: the daemon holds the policy, learned tool facts and the
rug-pull pins; asking it keeps one source of truth. When it cannot be reached, the proxy either
evaluates the same policy file locally (``--policy FILE``; this imports the pure
``toolwatch.detectors.policy``, so ``instrumentation`` then depends on ``detectors``, no I/O) or
applies its fail mode: fail-open (allow, logged loudly) by default, fail-closed (deny) on request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

__all__ = ["DecisionClient", "EnforceOptions", "Verdict"]


@dataclass(slots=True, frozen=True)
class Verdict:
    """``action`` is allow, deny or hold; ``source`` says who decided (daemon, cache, local-policy, fail-open,
    fail-closed, hold)."""

    action: str
    reason: str
    rule: str = ""
    source: str = "daemon"
    quarantined: bool = False


@dataclass(slots=True)
class EnforceOptions:
    daemon_url: str
    token: str = ""
    fail_closed: bool = False
    policy_file: str = ""
    cache_ttl_s: float = 2.0
    timeout_s: float = 0.5
    """Budget for one decision request; beyond it the daemon counts as unreachable."""
    hold_timeout_s: float = 300.0
    hold_default: str = "deny"
    poll_s: float = 2.0
    """How often quarantined tools are re-checked (to tell the client when one is approved)."""
    retry_s: float = 1.0
    """While the daemon is down, ask it again at most this often (calls in between are degraded at once)."""


@dataclass(slots=True)
class EnforceStats:
    decisions: int = 0
    cached: int = 0
    denied: int = 0
    held: int = 0
    quarantined_hidden: int = 0
    daemon_unreachable: int = 0
    degraded: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        degraded = ", ".join(f"{k}={v}" for k, v in sorted(self.degraded.items())) or "none"
        return (f"enforcement decisions={self.decisions} cached={self.cached} denied={self.denied} "
                f"held={self.held} hidden_tools={self.quarantined_hidden} "
                f"daemon_unreachable={self.daemon_unreachable} degraded_decisions: {degraded}")


class DaemonUnreachable(Exception):
    pass


class DecisionClient:
    """One per proxy process; all methods run on the proxy's event loop."""

    def __init__(self, options: EnforceOptions, *, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.stats = EnforceStats()
        self._clock = clock
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._cache: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self._local: Any = None
        self._down_since: float | None = None
        self._last_try = float("-inf")
        if options.policy_file:
            self._local = load_local_policy(options.policy_file)

    # -- transport --------------------------------------------------------------------------------
    async def _post(self, path: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        return await self._request("POST", path, body, timeout_s)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                       timeout_s: float | None = None) -> Any:
        now = self._clock()
        if self._down_since is not None and now - self._last_try < self.options.retry_s:
            raise DaemonUnreachable("still unreachable")
        self._last_try = now
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.options.token}"} if self.options.token else {}
            self._session = aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=30))
        url = self.options.daemon_url.rstrip("/") + path
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.options.timeout_s)
        try:
            async with self._session.request(method, url, json=body, timeout=timeout) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 400:  # a wrong token or a refused request must not crash the proxy
                    why = data.get("error", "") if isinstance(data, dict) else ""
                    raise DaemonUnreachable(f"{method} {path}: HTTP {resp.status}: {why}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, json.JSONDecodeError) as exc:
            raise DaemonUnreachable(repr(exc)) from None
        self._daemon_back()
        return data

    def _daemon_down(self, why: str) -> None:
        self.stats.daemon_unreachable += 1
        if self._down_since is None:
            self._down_since = self._clock()
            mode = ("local policy file " + self.options.policy_file if self._local is not None else
                    "FAIL-CLOSED: calls are denied" if self.options.fail_closed else
                    "FAIL-OPEN: calls are allowed WITHOUT enforcement")
            self._log(f"toolwatch proxy: WARNING: enforcement daemon {self.options.daemon_url} unreachable ({why}); "
                      f"deciding by {mode} until it is back")

    def _daemon_back(self) -> None:
        if self._down_since is not None:
            self._log(f"toolwatch proxy: enforcement daemon {self.options.daemon_url} reachable again after "
                      f"{self._clock() - self._down_since:.1f} s")
            self._down_since = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- calls ------------------------------------------------------------------------------------
    async def decide(self, facts: dict[str, Any]) -> Verdict:
        """The verdict for one call's facts (agent_id, server, tool, redacted args_json, ...)."""
        self.stats.decisions += 1
        key = _cache_key(facts)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            self.stats.cached += 1
            return Verdict(hit[1].action, hit[1].reason, hit[1].rule, "cache", hit[1].quarantined)
        try:
            data = await self._post("/api/v1/decide", facts)
            verdict = Verdict(str(data.get("action", "deny")), str(data.get("reason", "")), str(data.get("rule", "")),
                              "daemon", bool(data.get("quarantined", False)))
        except DaemonUnreachable as exc:
            self._daemon_down(str(exc))
            return self._degraded(facts)
        if verdict.action != "hold":  # every held call asks a human again
            self._cache[key] = (now + self.options.cache_ttl_s, verdict)
            while len(self._cache) > 4096:
                self._cache.popitem(last=False)
        return verdict

    def _degraded(self, facts: dict[str, Any]) -> Verdict:
        if self._local is not None:
            from toolwatch.detectors.policy import ToolFacts, decide

            decision = decide(self._local, facts, ToolFacts(destructive=bool(facts.get("destructive_hint"))))
            verdict = Verdict(decision.action, decision.reason, decision.rule, "local-policy")
        elif self.options.fail_closed:
            verdict = Verdict("deny", f"the toolwatch daemon at {self.options.daemon_url} is unreachable and this "
                                      "proxy fails closed", "fail_closed", "fail-closed")
        else:
            verdict = Verdict("allow", "daemon unreachable; fail-open", "fail_open", "fail-open")
        self.stats.degraded[verdict.source] = self.stats.degraded.get(verdict.source, 0) + 1
        return verdict

    # -- listings ---------------------------------------------------------------------------------
    async def quarantined(self, server: str, tools: list[Any]) -> dict[str, str] | None:
        """Tool name -> why, for listed tools to hide; None when the daemon cannot tell."""
        try:
            data = await self._post("/api/v1/listing/check", {"server": server, "tools": tools})
        except DaemonUnreachable as exc:
            self._daemon_down(str(exc))
            return None
        return {str(q["tool"]): str(q["reason"]) for q in data.get("quarantined", []) if isinstance(q, dict)}

    # -- holds ------------------------------------------------------------------------------------
    async def hold(self, facts: dict[str, Any], verdict: Verdict) -> Verdict:
        """Open a hold on the daemon and wait for a human (or the timeout and its default)."""
        self.stats.held += 1
        opts = self.options
        body = {"agent_id": facts.get("agent_id", ""), "server": facts.get("server", ""), "tool": facts.get("tool", ""),
                "arguments": facts.get("args_json", ""), "reason": verdict.reason, "rule": verdict.rule,
                "timeout_s": opts.hold_timeout_s, "default": opts.hold_default}
        deadline = self._clock() + opts.hold_timeout_s + 5.0
        try:
            hold = await self._post("/api/v1/holds", body, timeout_s=max(opts.timeout_s, 2.0))
            while hold.get("status") == "pending" and self._clock() < deadline:
                wait = min(30.0, max(0.0, deadline - self._clock()))
                hold = await self._request("GET", f"/api/v1/holds/{hold['id']}?wait={wait:.3f}", timeout_s=wait + 5.0)
        except DaemonUnreachable as exc:
            self._daemon_down(str(exc))
            if opts.fail_closed or opts.hold_default == "deny":
                return Verdict("deny", f"held for approval ({verdict.reason}) but the toolwatch daemon is unreachable",
                               "hold", "hold")
            return Verdict("allow", "held, daemon unreachable; hold default is allow", "hold", "hold")
        status = hold.get("status", "pending")
        decision = hold.get("decision") or opts.hold_default
        if status == "pending":
            status, decision = "timed_out", opts.hold_default
        words = {"approved": "approved by an operator", "denied": "denied by an operator",
                 "timed_out": f"not decided within {opts.hold_timeout_s:g} s (default: {decision})"}
        return Verdict("allow" if decision == "allow" else "deny",
                       f"held for approval ({verdict.reason}); hold {hold.get('id', '?')} {words.get(status, status)}",
                       f"hold.{status}", "hold")


def _cache_key(facts: dict[str, Any]) -> str:
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def load_local_policy(path: str) -> Any:
    """The policy file for local evaluation: a YAML mapping, or one with a top-level ``policy:`` key."""
    import yaml

    from toolwatch.detectors.policy_config import PolicyConfig

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise SystemExit(f"toolwatch proxy: --policy {path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise SystemExit(f"toolwatch proxy: --policy {path}: not valid YAML ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("policy"), dict):
        data = data["policy"]
    try:
        return PolicyConfig.from_dict(data, source=path)
    except ValueError as exc:
        raise SystemExit(f"toolwatch proxy: --policy: {exc}") from None
