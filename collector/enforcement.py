"""Decisions for an enforcing proxy: policy verdicts on calls and quarantine of changed tools.

Why here: the policy detector and the rug-pull detector already hold the facts (policy file,
learned schemas and annotations, pinned definitions); the proxy asks the daemon instead of
keeping a second copy. A decision never reads a detector half-way through a batch, and never
waits for one either (the proxy's budget is ~1 ms; a batch can hold the detectors for longer):

* when no batch holds the pipeline's detector lock, the decision reads the detectors directly,
  on the event loop (no thread hop);
* while a batch holds it, the decision uses ``QuarantineView``, the rug-pull state as of the end
  of the previous batch (refreshed by ``after_batch``), plus the policy detector's config and
  learned tool facts, which are only ever replaced whole (never mutated in place), so reading
  them without the lock is safe. A batch in progress has not finished: its effects were not
  visible to decisions before it started either. An approval made meanwhile is seen once it
  completes (until then the view errs on the side of quarantine).

A listed tool is quarantined when its server is pinned and the tool's definition is not the
pinned one (changed, added, or a change the operator rejected), or when a change to it is
pending. New servers are trusted on first use, like the rug-pull detector itself does.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any, Mapping

from toolwatch.detectors.events import canonical_sha256
from toolwatch.detectors.policy import CallView, Decision, PolicyDetector, ToolFacts, decide
from toolwatch.detectors.rugpull import RugPullDetector

from .normalize import _definitions

__all__ = ["CallFacts", "EnforcementService", "FactsError"]

MAX_ARGS_JSON = 1024 * 1024


class FactsError(ValueError):
    """The request body is not usable; the message names the field."""


@dataclass(slots=True, frozen=True)
class CallFacts:
    """What the proxy sends about one call: who, where, and the *redacted* arguments."""

    agent_id: str
    server: str
    tool: str
    args_json: str = ""
    args_bytes: int = 0
    destructive_hint: bool = False
    """The proxy saw ``destructiveHint: true`` (and no ``readOnlyHint``) in this tool's listing."""

    @classmethod
    def from_json(cls, data: Any) -> "CallFacts":
        if not isinstance(data, Mapping):
            raise FactsError("body: must be a JSON object with agent_id, server, tool, args_json")
        out: dict[str, Any] = {}
        for key in ("agent_id", "server", "tool", "args_json"):
            value = data.get(key, "")
            if not isinstance(value, str):
                raise FactsError(f"{key}: must be a string, got {type(value).__name__}")
            out[key] = value
        if not out["tool"]:
            raise FactsError("tool: missing; name the tool being called")
        if len(out["args_json"]) > MAX_ARGS_JSON:
            raise FactsError(f"args_json: longer than {MAX_ARGS_JSON} characters")
        size = data.get("args_bytes", 0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FactsError("args_bytes: must be a non-negative integer")
        hint = data.get("destructive_hint", False)
        if not isinstance(hint, bool):
            raise FactsError("destructive_hint: must be true or false")
        return cls(args_bytes=size, destructive_hint=hint, **out)

    def view(self) -> CallView:
        return CallView(self.agent_id, self.server, self.tool, self.args_json, self.args_bytes)


def decision_json(decision: Decision, **extra: Any) -> dict[str, Any]:
    return {"action": decision.action, "reason": decision.reason, "rule": decision.rule,
            "violations": [{"action": a, "rule": r, "reason": why} for a, r, why in decision.violations], **extra}


@dataclass(slots=True, frozen=True)
class QuarantineView:
    """The rug-pull detector's answer to "what is quarantined", copied while holding the detector lock."""

    pending: dict[tuple[str, str], dict[str, Any]]
    """(server identity, tool) -> the oldest pending change to it (removals excluded)."""
    pins: dict[str, dict[str, str]] | None
    """Pinned definition hashes per identity; None when not copied (decisions do not need them)."""

    @classmethod
    def of(cls, rugpull: RugPullDetector | None, *, with_pins: bool) -> "QuarantineView":
        """Call with the detector lock held."""
        if rugpull is None:
            return cls({}, {})
        pending: dict[tuple[str, str], dict[str, Any]] = {}
        for item in rugpull.pending():
            if item["kind"] != "removed":
                pending.setdefault((item["identity"], item["tool"]), item)
        return cls(pending, rugpull.pins() if with_pins else None)


class EnforcementService:
    """Answers ``decide`` and ``check listing`` questions from the running detectors."""

    def __init__(self, detectors: list[Any], lock: threading.Lock) -> None:
        self.policy = next((d for d in detectors if isinstance(d, PolicyDetector)), None)
        self.rugpull = next((d for d in detectors if isinstance(d, RugPullDetector)), None)
        self.lock = lock
        self._validators: dict[str, Any] = {}
        self._view: QuarantineView | None = None
        """The rug-pull state as of the last batch; None until first copied (then decisions wait once)."""
        self.waited = 0
        """Decisions that had to wait for the lock (only before the first view exists)."""

    def after_batch(self, batch: Any = None, findings: Any = None) -> None:
        """Pipeline batch listener (on the loop, the batch's lock already released): copy the new state.

        Pins are re-hashed only when they may have changed: the batch had listings, or the pending
        set changed (an approval or rejection since the last copy), or none were copied yet.
        """
        if self.rugpull is None or not self.lock.acquire(blocking=False):
            return  # an approval holds the lock: the previous view stays (it errs on quarantine)
        try:
            view = QuarantineView.of(self.rugpull, with_pins=False)
            old = self._view
            if (old is None or old.pins is None or bool(getattr(batch, "listings", True))
                    or {p["id"] for p in old.pending.values()} != {p["id"] for p in view.pending.values()}):
                view = QuarantineView(view.pending, self.rugpull.pins())
            else:
                view = QuarantineView(view.pending, old.pins)
            self._view = view
        finally:
            self.lock.release()

    # -- calls ------------------------------------------------------------------------------------
    def decide_call_locked(self, facts: CallFacts) -> dict[str, Any]:
        with self.lock:
            return self.decide_call(facts)

    def decide_call(self, facts: CallFacts, view: QuarantineView | None = None) -> dict[str, Any]:
        """Quarantine first (a pending tool is never called), then the policy file.

        ``view`` None: read the rug-pull detector directly (the caller holds the lock).
        """
        pending = self._pending_for(facts.server, facts.tool, view)
        if pending is not None:
            return {"action": "deny", "rule": "quarantine", "quarantined": True, "pending_id": pending["id"],
                    "reason": f"tool {facts.tool!r} on server {facts.server!r} is quarantined: its "
                              f"{pending['kind']} definition awaits operator approval (pending id {pending['id']})",
                    "violations": []}
        if self.policy is None:
            return decision_json(Decision("allow", "no policy detector is running"), quarantined=False)
        learned = self.policy.facts(facts.server, facts.tool)
        tool_facts = ToolFacts(learned.input_schema if learned else None,
                               bool(learned and learned.destructive) or facts.destructive_hint)
        decision = decide(self.policy.config, facts.view(), tool_facts, self._validators)
        return decision_json(decision, quarantined=False)

    def _pending_for(self, server: str, tool: str, view: QuarantineView | None) -> dict[str, Any] | None:
        if self.rugpull is None:
            return None
        ident = self.rugpull.identity(server)
        if view is not None:
            return view.pending.get((ident, tool))
        for item in self.rugpull.pending():
            if item["identity"] == ident and item["tool"] == tool and item["kind"] != "removed":
                return item
        return None

    # -- listings ---------------------------------------------------------------------------------
    def check_listing_locked(self, server: str, tools: list[Any]) -> list[dict[str, Any]]:
        with self.lock:
            return self.check_listing(server, tools)

    def check_listing(self, server: str, tools: list[Any], view: QuarantineView | None = None) -> list[dict[str, Any]]:
        """The listed tools to hide, each with why; empty when nothing is pinned for the server.

        ``view`` None: read the rug-pull detector directly (the caller holds the lock).
        """
        if self.rugpull is None:
            return []
        definitions = _definitions(json.dumps(tools, default=str))
        if definitions is None:
            raise FactsError("tools: must be the tools/list result's list of {name, ...} objects")
        ident = self.rugpull.identity(server)
        if view is None or view.pins is None:
            view = QuarantineView.of(self.rugpull, with_pins=True)
        pinned = view.pins.get(ident) if view.pins is not None else None
        pending = {tool: p for (i, tool), p in view.pending.items() if i == ident}
        out = []
        for definition in definitions:
            sha = canonical_sha256(definition.canonical())
            item = pending.get(definition.name)
            if item is not None:
                why = f"its {item['kind']} definition awaits operator approval (pending id {item['id']})"
            elif pinned is None:
                continue  # first use of this server: trusted, and pinned by the detector
            elif definition.name not in pinned:
                why = "it is new on a pinned server and awaits operator approval"
            elif pinned[definition.name] != sha:
                why = "its definition differs from the approved one and awaits operator approval"
            else:
                continue
            out.append({"tool": definition.name, "sha256": sha, "reason": why,
                        "pending_id": item["id"] if item is not None else ""})
        return out

    async def decide(self, facts: CallFacts) -> dict[str, Any]:
        """On the loop, never waiting for a batch: live state when the lock is free, else the last view."""
        if self.lock.acquire(blocking=False):
            try:
                return self.decide_call(facts)
            finally:
                self.lock.release()
        view = self._view
        if view is not None or self.rugpull is None:
            return self.decide_call(facts, view or QuarantineView({}, {}))
        self.waited += 1
        return await asyncio.to_thread(self.decide_call_locked, facts)

    async def listing(self, server: str, tools: list[Any]) -> list[dict[str, Any]]:
        """Like ``decide``: live when the lock is free, else the last view with pins, else wait for the lock."""
        if self.lock.acquire(blocking=False):
            try:
                return self.check_listing(server, tools)
            finally:
                self.lock.release()
        view = self._view
        if view is not None and view.pins is not None:
            return self.check_listing(server, tools, view)
        return await asyncio.to_thread(self.check_listing_locked, server, tools)

