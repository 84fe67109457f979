"""Policy: allow/deny lists, argument bounds, schema validation and destructive-tool roles.

Why: some calls are wrong by definition for a given agent (a support bot deleting files, an
argument larger than any legitimate one, arguments the tool's own schema rejects). Those need no
statistics: ``decide(call)`` says allow, deny or hold with the rule that decided, so a proxy can
call it before forwarding, and ``PolicyDetector`` reports violations seen in traffic.

Tool facts (input schema, ``destructiveHint``) are learned from ``tools/list`` listings. Only an
explicit ``destructiveHint: true`` counts (the MCP default of ``true`` for tools without
annotations would mark nearly every tool destructive); ``readOnlyHint: true`` wins over it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from operator import attrgetter
from typing import Any, Mapping

from jsonschema import exceptions as jsonschema_exceptions
from jsonschema import validators
from referencing import Registry
from referencing.exceptions import Unresolvable

from .base import Detector
from .events import Batch, Finding, ToolCall, ToolListing, canonical_sha256, tool_token
from .policy_config import ArgumentRule, PolicyConfig

__all__ = ["CallView", "Decision", "PolicyDetector", "ToolFacts", "decide"]

_RANK = {"allow": 0, "hold": 1, "deny": 2}


@dataclass(slots=True, frozen=True)
class Decision:
    """``action`` is allow, hold or deny; ``rule`` is the key path of the rule that decided."""

    action: str
    reason: str
    rule: str = ""
    violations: tuple[tuple[str, str, str], ...] = ()
    """Every (action, rule, reason) that applied, most severe first."""

    @property
    def allowed(self) -> bool:
        return self.action == "allow"


@dataclass(slots=True, frozen=True)
class CallView:
    """The few fields policy reads, from a ``ToolCall`` or a plain mapping (what a proxy has)."""

    agent_id: str
    server: str
    tool: str
    args_json: str = ""
    args_bytes: int = 0

    @classmethod
    def of(cls, call_like: Any) -> "CallView":
        if isinstance(call_like, CallView):
            return call_like
        get = call_like.get if isinstance(call_like, Mapping) else (lambda k, d=None: getattr(call_like, k, d))
        args_json = get("args_json", "") or ""
        if not args_json and get("arguments", None) is not None:
            args_json = json.dumps(get("arguments"), sort_keys=True, default=str)
        args_bytes = get("args_bytes", 0) or 0
        return cls(agent_id=str(get("agent_id", "") or ""), server=str(get("server", "") or ""),
                   tool=str(get("tool", "") or ""), args_json=str(args_json),
                   args_bytes=int(args_bytes) if isinstance(args_bytes, (int, float)) else 0)


@dataclass(slots=True)
class ToolFacts:
    """What listings told us about one tool: its input schema and whether it says it is destructive."""

    input_schema: Any = None
    destructive: bool = False


def _tool_matches(pattern: str, server: str, tool: str) -> bool:
    """``server/tool`` glob, or a bare tool glob that matches on any server."""
    if "/" in pattern:
        return fnmatchcase(f"{server}/{tool}", pattern)
    return fnmatchcase(tool, pattern)


def _any(patterns: tuple[str, ...], value: str) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)


def roles_of(config: PolicyConfig, agent_id: str) -> set[str]:
    return {role for role, globs in config.roles.items() if _any(globs, agent_id)}


def _applies(agents: tuple[str, ...], roles: tuple[str, ...], agent_id: str, agent_roles: set[str]) -> bool:
    return _any(agents, agent_id) or bool(agent_roles.intersection(roles))


def _validator(schema: Any, cache: dict[str, Any]) -> Any:
    """A cached jsonschema validator for a schema, or None when the schema itself is invalid."""
    key = canonical_sha256(schema)
    if key not in cache:
        try:
            cls = validators.validator_for(schema) if isinstance(schema, dict) else None
            if cls is None:
                cache[key] = None
            else:
                cls.check_schema(schema)
                cache[key] = cls(schema, registry=Registry())  # empty registry: never fetch remote $refs
        except (jsonschema_exceptions.SchemaError, jsonschema_exceptions.UnknownType, TypeError, ValueError):
            cache[key] = None
        if len(cache) > 4096:  # bounded: a function of the schema only
            cache.pop(next(iter(cache)))
    return cache[key]


def schema_errors(schema: Any, arguments: Any, limit: int = 3, cache: dict[str, Any] | None = None) -> list[str]:
    """Where and how arguments break the schema, without echoing any argument value.

    ``cache`` (owned by the caller, e.g. a ``PolicyDetector``) keeps compiled validators.
    """
    validator = _validator(schema, {} if cache is None else cache)
    if validator is None:
        return []
    out = []
    try:
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(map(str, e.absolute_path)))
    except (Unresolvable, jsonschema_exceptions.ValidationError, jsonschema_exceptions.UnknownType, RecursionError,
            TypeError, ValueError):
        return []
    for err in errors[:limit]:
        where = "arguments" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in err.absolute_path)
        expected = json.dumps(err.validator_value, default=str)
        if len(expected) > 80:
            expected = expected[:77] + "..."
        out.append(f"{where}: fails {err.validator!r} (schema wants {expected})")
    return out


def decide(config: PolicyConfig, call_like: Any, facts: ToolFacts | None = None,
           validator_cache: dict[str, Any] | None = None) -> Decision:
    """Allow, hold or deny one call under ``config``; pure, so a proxy can call it inline."""
    call = CallView.of(call_like)
    facts = facts or ToolFacts()
    agent_roles = roles_of(config, call.agent_id)
    subjects = [s for s in config.subjects if _applies(s.agents, s.roles, call.agent_id, agent_roles)]
    found: list[tuple[str, str, str]] = []
    where = tool_token(call.server, call.tool)

    for s in subjects:
        if _any(s.deny_servers, call.server):
            found.append(("deny", f"{s.path}.deny_servers", f"server {call.server!r} is denied for {call.agent_id!r}"))
        if any(_tool_matches(p, call.server, call.tool) for p in s.deny_tools):
            found.append(("deny", f"{s.path}.deny_tools", f"tool {where!r} is denied for {call.agent_id!r}"))
    allow_servers = [s for s in subjects if s.allow_servers]
    if allow_servers and not any(_any(s.allow_servers, call.server) for s in allow_servers):
        found.append(("deny", f"{allow_servers[0].path}.allow_servers",
                      f"server {call.server!r} is not in the allowed servers for {call.agent_id!r}"))
    allow_tools = [s for s in subjects if s.allow_tools]
    if allow_tools and not any(_tool_matches(p, call.server, call.tool) for s in allow_tools for p in s.allow_tools):
        found.append(("deny", f"{allow_tools[0].path}.allow_tools",
                      f"tool {where!r} is not in the allowed tools for {call.agent_id!r}"))
    if config.default == "deny" and not allow_servers and not allow_tools:
        found.append(("deny", "default", f"no allow list applies to {call.agent_id!r} and the default is deny"))

    d = config.destructive
    is_destructive = any(_tool_matches(p, call.server, call.tool) for p in d.tools) or (
        d.use_annotations and facts.destructive)
    if is_destructive and not agent_roles.intersection(d.allowed_roles):
        need = ", ".join(d.allowed_roles) or "no role (none configured)"
        found.append((d.action, "destructive", f"tool {where!r} is destructive; allowed roles: {need}"))

    for rule in config.arguments:
        if _argument_rule_applies(rule, call, agent_roles):
            found.extend(_check_arguments(rule, call))

    if config.schema_validation and facts.input_schema is not None and call.args_json:
        try:
            arguments = json.loads(call.args_json)
        except (ValueError, RecursionError):
            arguments = None
        if arguments is not None:
            for err in schema_errors(facts.input_schema, arguments, cache=validator_cache):
                found.append((config.schema_violation, "schema_validation", f"{where}: {err}"))

    if not found:
        return Decision("allow", "no policy rule matched" if not subjects else "allowed by policy")
    found.sort(key=lambda v: -_RANK[v[0]])
    action, rule, reason = found[0]
    return Decision(action, reason, rule, tuple(found))


def _argument_rule_applies(rule: ArgumentRule, call: CallView, agent_roles: set[str]) -> bool:
    if not any(_tool_matches(p, call.server, call.tool) for p in rule.tools):
        return False
    if rule.agents or rule.roles:
        return _applies(rule.agents, rule.roles, call.agent_id, agent_roles)
    return True


def _check_arguments(rule: ArgumentRule, call: CallView) -> list[tuple[str, str, str]]:
    out = []
    size = call.args_bytes or len(call.args_json.encode("utf-8", "surrogatepass"))
    if rule.max_bytes and size > rule.max_bytes:
        out.append((rule.action, f"{rule.path}.max_bytes",
                    f"arguments are {size} bytes, over the limit of {rule.max_bytes}"))
    for i, pattern in enumerate(rule.deny_patterns):
        if pattern.search(call.args_json):
            out.append((rule.action, f"{rule.path}.deny_patterns[{i}]",
                        f"arguments match the denied pattern {pattern.pattern!r}"))
    return out


def facts_from_listing_tool(tool: Any) -> ToolFacts:
    ann = tool.annotations if isinstance(tool.annotations, dict) else {}
    destructive = ann.get("destructiveHint") is True and ann.get("readOnlyHint") is not True
    return ToolFacts(input_schema=tool.input_schema if isinstance(tool.input_schema, dict) else None,
                     destructive=destructive)


_KEY = attrgetter("agent_id", "server", "tool")
_DYNAMIC = object()
"""Cache mark: this (agent, server, tool) has an argument rule or a schema, so each call is decided."""
MAX_CACHED = 100_000


class PolicyDetector(Detector):
    """Learns tool facts from listings and reports calls that policy would hold or deny.

    Most of a decision depends only on (agent, server, tool) and the learned facts, which change
    rarely; so it is made once per distinct triple and cached (``None`` = allowed) until a
    listing arrives, the state is restored or ``config`` is replaced. Triples that an argument
    rule or a listed input schema applies to are decided call by call, as before.
    """

    name = "policy"

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self.config.validate()
        self._facts: dict[str, dict[str, ToolFacts]] = {}  # server -> tool -> facts
        self._validators: dict[str, Any] = {}  # schema sha256 -> compiled validator (not state)
        self._decisions: dict[tuple[str, str, str], Any] = {}  # derived, not state: see the class doc
        self._decided_under: PolicyConfig | None = None
        self._inert: bool | None = None  # no rule and no fact can make any call non-allowed

    def _forget_decisions(self) -> None:
        self._decisions.clear()
        self._inert = None

    def learn_listing(self, listing: ToolListing) -> None:
        self._facts[listing.server] = {t.name: facts_from_listing_tool(t) for t in listing.tools}
        self._forget_decisions()

    def _is_inert(self) -> bool:
        c = self.config
        if c.subjects or c.arguments or c.default != "allow" or c.destructive.tools:
            return False
        use_ann, schemas = c.destructive.use_annotations, c.schema_validation
        return not any((use_ann and f.destructive) or (schemas and f.input_schema is not None)
                       for tools in self._facts.values() for f in tools.values())

    def _static(self, key: tuple[str, str, str]) -> Any:
        """The cached decision for a triple: None (allow), a Decision, or ``_DYNAMIC``."""
        agent, server, tool = key
        facts = self.facts(server, tool)
        view = CallView(agent_id=agent, server=server, tool=tool)
        config = self.config
        if config.schema_validation and facts is not None and facts.input_schema is not None:
            entry: Any = _DYNAMIC
        elif config.arguments and any(_argument_rule_applies(rule, view, roles_of(config, agent))
                                      for rule in config.arguments):
            entry = _DYNAMIC
        else:
            decision = decide(config, view, facts, self._validators)
            entry = None if decision.allowed else decision
        if len(self._decisions) >= MAX_CACHED:
            self._decisions.clear()
        self._decisions[key] = entry
        return entry

    def facts(self, server: str, tool: str) -> ToolFacts | None:
        return self._facts.get(server, {}).get(tool)

    def decide(self, call_like: Any) -> Decision:
        """What to do with one call, using the schemas and annotations learned so far."""
        call = CallView.of(call_like)
        return decide(self.config, call, self.facts(call.server, call.tool), self._validators)

    def observe(self, batch: Batch) -> list[Finding]:
        for listing in sorted(batch.listings, key=lambda x: x.time_ns):
            self.learn_listing(listing)
        calls = batch.calls
        if not calls:
            return []
        if self._decided_under is not self.config:
            self._decided_under = self.config
            self._forget_decisions()
        if self._inert is None:
            self._inert = self._is_inert()
        if self._inert:
            return []
        keys = list(map(_KEY, calls))
        cache = self._decisions
        entries = [cache[k] if k in cache else self._static(k) for k in set(keys)]
        if not any(entries):
            return []
        findings = []
        for call, key in zip(calls, keys):
            entry = cache.get(key, _DYNAMIC)  # a full cache may have been cleared meanwhile
            if entry is None:
                continue
            decision = self.decide(call) if entry is _DYNAMIC else entry
            if not decision.allowed:
                findings.append(self._finding(call, decision))
        return findings

    def _finding(self, call: ToolCall, decision: Decision) -> Finding:
        return Finding(
            detector=self.name, severity="high" if decision.action == "deny" else "medium", agent_id=call.agent_id,
            reason=f"policy would {decision.action} this call: {decision.reason}", time_ns=call.time_ns,
            session_id=call.session_id, server=call.server, tool=call.tool,
            span_ids=(call.span_id,) if call.span_id else (), trace_ids=(call.trace_id,) if call.trace_id else (),
            evidence={"action": decision.action, "rule": decision.rule, "source": self.config.source,
                      "violations": [{"action": a, "rule": r, "reason": why} for a, r, why in decision.violations]},
            dedup_key=f"policy:{call.agent_id}:{call.server}/{call.tool}:{decision.rule}")

    def snapshot(self) -> dict[str, Any]:
        return {"facts": {s: {t: {"input_schema": f.input_schema, "destructive": f.destructive}
                              for t, f in tools.items()} for s, tools in self._facts.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self._forget_decisions()
        self._facts = {s: {t: ToolFacts(f.get("input_schema"), bool(f.get("destructive", False)))
                           for t, f in tools.items()} for s, tools in state.get("facts", {}).items()}

