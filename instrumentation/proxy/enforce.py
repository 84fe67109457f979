"""Enforcement at the proxy: decide each ``tools/call`` before it is forwarded, hide quarantined tools.

Why message-level: the plain proxy forwards bytes first and looks later; an enforcing proxy must
look first. It reads whole lines, asks the ``DecisionClient`` about each ``tools/call`` and either
forwards it, answers it with a JSON-RPC error (never forwarded), or holds it for a human while
other traffic keeps flowing. ``tools/list`` results lose their quarantined tools; when a hidden
tool is approved, the client gets ``notifications/tools/list_changed``.

Blocked calls still become spans: the request and the proxy's error answer go through the same
recorder as forwarded traffic, so the daemon's policy and rug-pull detectors report a finding.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from .. import semconv as sc
from .decisions import DecisionClient, Verdict
from .tracker import CallTracker, Recorder

__all__ = ["Enforcer", "ERROR_CODES", "LIST_CHANGED"]

ERROR_CODES = {"quarantined": -32010, "denied": -32011, "hold_denied": -32012, "unavailable": -32013}
"""JSON-RPC error codes (implementation-defined server-error range) for calls the proxy refuses."""
LIST_CHANGED = json.dumps({"jsonrpc": "2.0", "method": sc.METHOD_LIST_CHANGED}, separators=(",", ":")).encode()

Send = Callable[[bytes], Awaitable[None]]


def _kind(verdict: Verdict) -> str:
    if verdict.quarantined or verdict.rule == "quarantine":
        return "quarantined"
    if verdict.source == "hold":
        return "hold_denied"
    if verdict.source == "fail-closed":
        return "unavailable"
    return "denied"


def refusal(request_id: Any, tool: str, verdict: Verdict) -> bytes:
    """The JSON-RPC error a refused call gets: says why and what to do, never echoes arguments."""
    kind = _kind(verdict)
    advice = {"quarantined": "an operator must approve the changed tool (toolwatch approvals list)",
              "denied": "this call is not permitted by policy; do not retry it unchanged",
              "hold_denied": "a human did not approve this call; do not retry it unchanged",
              "unavailable": "enforcement is unavailable; retry later"}[kind]
    error = {"code": ERROR_CODES[kind], "message": f"toolwatch blocked tools/call {tool!r}: {verdict.reason}",
             "data": {"toolwatch": kind, "rule": verdict.rule, "decidedBy": verdict.source, "advice": advice}}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":")).encode()


class Enforcer:
    """Per session: pending ``tools/list`` ids, the hidden tools, and the tasks of held calls."""

    def __init__(self, client: DecisionClient, tracker: CallTracker, recorder: Recorder, redactor: Any,
                 *, now_ns: Callable[[], int]) -> None:
        self.client = client
        self.tracker = tracker
        self.recorder = recorder
        self.redactor = redactor
        self.now_ns = now_ns
        self.hidden: dict[str, str] = {}
        """Tool name -> why it is quarantined (from the last listing)."""
        self.destructive: dict[str, bool] = {}
        self._list_ids: set[str] = set()
        self._last_tools: list[Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._to_client: Send | None = None

    # -- client -> server -------------------------------------------------------------------------
    async def from_client(self, line: bytes, to_server: Send, to_client: Send) -> None:
        """Forward, refuse or hold one client line."""
        try:
            message = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            message = None
        if isinstance(message, list):
            await self._batch(line, message, to_server, to_client)
            return
        if not isinstance(message, dict) or message.get("id") is None:
            await self._forward(line, to_server)
            return
        method = message.get("method")
        if method == sc.METHOD_TOOLS_LIST:
            self._list_ids.add(json.dumps(message["id"], sort_keys=True))
        if method != sc.METHOD_TOOLS_CALL:
            await self._forward(line, to_server)
            return
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        tool = params.get("name") if isinstance(params.get("name"), str) else ""
        facts = self.facts(tool, params.get("arguments"))
        if tool in self.hidden:
            verdict = Verdict("deny", f"tool {tool!r} is quarantined: {self.hidden[tool]}", "quarantine", "proxy", True)
        else:
            verdict = await self.client.decide(facts)
        if verdict.action == "allow":
            await self._forward(line, to_server)
        elif verdict.action == "hold":
            task = asyncio.create_task(self._held(line, message["id"], tool, facts, verdict, to_server, to_client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            await self._refuse(line, message["id"], tool, verdict, to_client)

    def facts(self, tool: str, arguments: Any) -> dict[str, Any]:
        """What the daemon is told: identity, tool and the *redacted* arguments only."""
        redaction = self.redactor.redact(arguments if arguments is not None else {})
        args_json = json.dumps(redaction.value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        info = self.tracker.info
        return {"agent_id": info.agent_id, "server": info.server_name, "tool": tool, "args_json": args_json,
                "args_bytes": int(redaction.bytes), "destructive_hint": self.destructive.get(tool, False)}

    async def _forward(self, line: bytes, to_server: Send) -> None:
        await to_server(line)
        self.recorder.submit(self.tracker, "c2s", line, self.now_ns())

    async def _refuse(self, line: bytes, request_id: Any, tool: str, verdict: Verdict, to_client: Send) -> None:
        self.client.stats.denied += 1
        answer = refusal(request_id, tool, verdict)
        self.recorder.submit(self.tracker, "c2s", line, self.now_ns())
        await to_client(answer)
        self.recorder.submit(self.tracker, "s2c", answer, self.now_ns())

    async def _held(self, line: bytes, request_id: Any, tool: str, facts: dict[str, Any], verdict: Verdict,
                    to_server: Send, to_client: Send) -> None:
        final = await self.client.hold(facts, verdict)
        if final.action == "allow":
            await self._forward(line, to_server)
        else:
            await self._refuse(line, request_id, tool, final, to_client)

    async def _batch(self, line: bytes, batch: list[Any], to_server: Send, to_client: Send) -> None:
        """JSON-RPC batches (gone from MCP since 2025-06-18) may not smuggle calls past enforcement."""
        calls = [m for m in batch if isinstance(m, dict) and m.get("method") == sc.METHOD_TOOLS_CALL]
        if not calls:
            await self._forward(line, to_server)
            return
        for m in calls:
            if m.get("id") is not None:
                name = (m.get("params") or {}).get("name", "") if isinstance(m.get("params"), dict) else ""
                await to_client(refusal(m["id"], str(name), Verdict(
                    "deny", "tools/call inside a JSON-RPC batch cannot be enforced; send calls one by one",
                    "batch", "proxy")))
        self.client.stats.denied += len(calls)

    # -- server -> client -------------------------------------------------------------------------
    async def from_server(self, line: bytes) -> bytes:
        """The line to send the client: a ``tools/list`` result without its quarantined tools."""
        if not self._list_ids or b'"tools"' not in line:
            return line
        try:
            message = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return line
        if not isinstance(message, dict) or "id" not in message:
            return line
        key = json.dumps(message["id"], sort_keys=True)
        if key not in self._list_ids:
            return line
        self._list_ids.discard(key)
        result = message.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            return line
        self._learn(tools)
        hidden = await self.client.quarantined(self.tracker.info.server_name, tools)
        if hidden is None:  # daemon unreachable: nothing known to hide; calls still get decided
            return line
        self.hidden = hidden
        self._last_tools = tools
        if not hidden:
            return line
        self.client.stats.quarantined_hidden += len(hidden)
        result["tools"] = [t for t in tools if not (isinstance(t, dict) and t.get("name") in hidden)]
        self._ensure_poller()
        return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()

    def _learn(self, tools: list[Any]) -> None:
        for t in tools:
            if isinstance(t, dict) and isinstance(t.get("name"), str):
                ann = t.get("annotations") if isinstance(t.get("annotations"), dict) else {}
                self.destructive[t["name"]] = ann.get("destructiveHint") is True and ann.get("readOnlyHint") is not True

    # -- approvals --------------------------------------------------------------------------------
    def start(self, to_client: Send) -> None:
        """Where approval notifications go (the client's serialized line writer)."""
        self._to_client = to_client

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        """Re-check hidden tools; when one is approved, tell the client to list tools again."""
        while self.hidden and self._last_tools is not None:
            await asyncio.sleep(self.client.options.poll_s)
            now = await self.client.quarantined(self.tracker.info.server_name, self._last_tools)
            if now is None:
                continue
            released = set(self.hidden) - set(now)
            self.hidden = {k: v for k, v in self.hidden.items() if k in now}
            if released and self._to_client is not None:
                await self._to_client(LIST_CHANGED)

    async def stop(self) -> None:
        """Cancel this session's held calls and poller (the shared client stays open)."""
        tasks = [t for t in (*self._tasks, self._poller) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.stop()
        await self.client.close()
