"""``RuleEngine``: the Detector that evaluates a loaded ``RuleSet`` over micro-batches."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from ..base import Detector
from ..capabilities import CapabilityMap
from ..events import Batch, Finding, ToolCall, tool_token
from .compile import ToolPlan, plan_tool
from .context import ContextLimits, LazyContext, SessionContext
from .correlate import CorrelationWindows, Fired
from .fields import EvalContext
from .errors import RuleError
from .loader import load_rule_files
from .model import Rule, RuleSet


@dataclass(slots=True)
class RuleEngineConfig:
    """The ``rules:`` section of the config (files are read by the collector, not here)."""

    max_sessions: int = 10_000
    max_destinations: int = 5_000
    session_ttl_s: int = 3_600
    max_groups: int = 10_000
    max_events: int = 1_000
    destination_warmup_calls: int = 0
    """Calls naming destinations an agent makes before ``destinations.new`` names any (the daemon
    defaults this to 50, as ``exfiltration.destination_warmup_calls``)."""
    files: tuple[str, ...] = ()
    """Rule files in load order; read (and watched for hot reload) by the collector, not here."""

    def validate(self) -> None:
        for name in ("max_sessions", "max_destinations", "session_ttl_s", "max_groups", "max_events"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"rules.{name} must be a whole number of at least 1")
        if isinstance(self.destination_warmup_calls, bool) or not isinstance(self.destination_warmup_calls, int) \
                or self.destination_warmup_calls < 0:
            raise ValueError("rules.destination_warmup_calls must be a whole number of at least 0")
        if not all(isinstance(f, str) and f for f in self.files):
            raise ValueError("rules.files must be a list of file paths")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "RuleEngineConfig":
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"rules: unknown key {', '.join(unknown)}; known: {', '.join(sorted(cls.__dataclass_fields__))}")
        if "files" in data:
            files = data["files"]
            data["files"] = (files,) if isinstance(files, str) else tuple(files or ())
        cfg = cls(**data)
        cfg.validate()
        return cfg


_SERVER_TOOL = attrgetter("server", "tool")
_TOKEN = attrgetter("token")
MAX_PLANS = 10_000
"""Bound on cached per-tool plans (tool names come from agents, so they are not a fixed set)."""


class RuleEngine(Detector):
    """Evaluates every enabled rule on every call, then feeds matches to the correlations.

    Rules are compiled per ``server/tool`` (``compile.plan_tool``): a call whose tool no rule can
    match, or that lacks every list its tool's rules need, is only learnt from. ``set_ruleset``
    swaps rules at run time (hot reload); session context survives the swap, and correlation
    windows survive for correlations whose definition did not change.
    """

    name = "rules"

    def __init__(
        self,
        ruleset: RuleSet,
        capabilities: CapabilityMap | None = None,
        config: RuleEngineConfig | None = None,
    ) -> None:
        self.config = config or RuleEngineConfig()
        self.config.validate()
        self.capabilities = capabilities or CapabilityMap()
        self._context = SessionContext(
            ContextLimits(
                max_sessions=self.config.max_sessions,
                max_destinations=self.config.max_destinations,
                destination_warmup_calls=self.config.destination_warmup_calls,
                session_ttl_ns=self.config.session_ttl_s * 1_000_000_000,
            )
        )
        self._windows = CorrelationWindows(self.config.max_groups, self.config.max_events)
        self._plans: dict[tuple[str, str], ToolPlan] = {}
        self._found: list[Finding] = []
        self.ruleset = ruleset
        self.set_ruleset(ruleset)

    def set_ruleset(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._rules = tuple(r for r in ruleset.rules if r.enabled)
        self._correlations = [c for c in ruleset.correlations if c.enabled]
        self._feeds = {r.name: tuple(c for c in self._correlations if r.name in c.rules) for r in self._rules}
        """Rule name -> the correlations it feeds, in correlation order."""
        self._alone = {r.name: frozenset((r.name,)) for r in self._rules}
        """Rule name -> the set of matched names when it matches alone (built once, not per call)."""
        self._plans = {}
        self._windows.keep_only(tuple(self._correlations))

    def reload(self, files: list[tuple[str, str]]) -> RuleError | None:
        """Hot reload from ``(text, source)`` pairs: swap in the new rules, or keep the last good set.

        Returns the error (every problem, with file, item and line) when the new files are broken,
        so the collector can report it; the engine then goes on with the rules it had.
        """
        try:
            ruleset = load_rule_files(files)
        except RuleError as e:
            return e
        self.set_ruleset(ruleset)
        return None

    def observe(self, batch: Batch) -> list[Finding]:
        self.capabilities.learn(batch.listings)
        findings = self._run(batch.by_time())
        if batch.watermark_ns:
            self._context.expire(batch.watermark_ns)
        return findings

    def observe_call(self, call: ToolCall) -> list[Finding]:
        """Evaluate one call (in event-time order) and learn from it."""
        return self._run([call])

    def _run(self, calls: list[ToolCall]) -> list[Finding]:
        plans = self._plans
        distinct = set(map(_SERVER_TOOL, calls))
        if len(plans) + len(distinct) > MAX_PLANS:
            plans.clear()
        of = self.capabilities.of
        by_token: dict[str, ToolPlan] = {}
        for pair in distinct:
            server, tool = pair
            caps = of(server, tool)  # once per tool and batch: listings may have changed them
            plan = plans.get(pair)
            if plan is None or plan.capabilities != caps:
                plan = plans[pair] = plan_tool(self._rules, server, tool, caps)
            by_token[tool_token(server, tool)] = plan
        if len(by_token) == len(distinct):
            # Each call's plan by its token (a string built once per call, hash cached): no
            # (server, tool) tuple per call, which cost more than the lookup itself.
            batch_plans = list(map(by_token.__getitem__, map(_TOKEN, calls)))
        else:  # two tools of the batch share a token (a "/" in a name): look calls up by pair
            batch_plans = list(map(plans.__getitem__, map(_SERVER_TOOL, calls)))
        self._found = found = []
        self._context.walk(calls, batch_plans, self._visit)
        return found

    def _visit(self, ctx: LazyContext, plan: ToolPlan) -> None:
        """One call that may match: its rule findings, then what it feeds the correlations."""
        matched: list[str] | None = None  # most calls visited match nothing: no list for them
        for rule, test in plan.rules:
            if test(ctx):
                if matched is None:
                    matched = [rule.name]
                else:
                    matched.append(rule.name)
                if rule.generate:
                    self._found.append(self._rule_finding(rule, ctx))
        if matched is None:
            return
        if len(matched) == 1:
            name = matched[0]
            corrs = self._feeds[name]
            if not corrs:
                return
            names = self._alone[name]
        else:
            names = frozenset(matched)
            corrs = [c for c in self._correlations if not names.isdisjoint(c.rules)]
        for corr in corrs:
            fired = self._windows.observe(corr, names, ctx)
            if fired is not None:
                self._found.append(self._correlation_finding(fired, ctx))

    def matching_rules(self, call: ToolCall) -> list[str]:
        """Names of the single-call rules a call matches, without learning from it."""
        ctx = self._context.context(call, self.capabilities.of(call.server, call.tool))
        return [r.name for r in self._rules if r.matches(ctx)]

    def _rule_finding(self, rule: Rule, ctx: EvalContext | LazyContext) -> Finding:
        call = ctx.call
        return Finding(
            detector=self.name,
            severity=rule.severity,
            agent_id=call.agent_id,
            reason=rule.output.render(ctx, {"rule": rule.name, "priority": rule.severity}),
            time_ns=call.time_ns,
            session_id=call.session_id,
            server=call.server,
            tool=call.tool,
            span_ids=(call.span_id,) if call.span_id else (),
            trace_ids=(call.trace_id,) if call.trace_id else (),
            evidence={"rule": rule.name, "kind": "rule", "tags": list(rule.tags), "source": f"{rule.source}:{rule.line}"},
            dedup_key=f"rules:{rule.name}:{call.agent_id}:{call.session_id}",
        )

    def _correlation_finding(self, fired: Fired, ctx: EvalContext | LazyContext) -> Finding:
        corr, call = fired.correlation, ctx.call
        extras = {
            "rule": corr.name,
            "priority": corr.severity,
            "count": str(fired.count),
            "values": ",".join(fired.values) or "-",
            "group": ",".join(f"{k}={v}" for k, v in zip(corr.group_by, fired.group)) or "-",
        }
        return Finding(
            detector=self.name,
            severity=corr.severity,
            agent_id=call.agent_id,
            reason=corr.output.render(ctx, extras),
            time_ns=call.time_ns,
            session_id=call.session_id,
            server=call.server,
            tool=call.tool,
            span_ids=fired.span_ids,
            trace_ids=(call.trace_id,) if call.trace_id else (),
            evidence={
                "rule": corr.name,
                "kind": corr.type,
                "tags": list(corr.tags),
                "count": fired.count,
                "values": list(fired.values),
                "group": dict(zip(corr.group_by, fired.group)),
                "timespan_s": corr.timespan_ns // 1_000_000_000,
                "source": f"{corr.source}:{corr.line}",
            },
            dedup_key=f"rules:{corr.name}:{':'.join(fired.group)}",
        )

    def snapshot(self) -> dict[str, Any]:
        """Session context and correlation windows. The shared CapabilityMap is not included:
        it has one owner (the collector), which snapshots it once for all detectors."""
        return {"context": self._context.snapshot(), "windows": self._windows.snapshot()}

    def restore(self, state: dict[str, Any]) -> None:
        self._context.restore(state.get("context", {}))
        self._windows.restore(state.get("windows", {}))
        self._windows.keep_only(tuple(self._correlations))
