"""Hijacked sessions: what an agent does right after a tool result that carried instructions.

An indirect prompt injection arrives in a tool result (a web page, a mail, an issue) and the
instrumentation labels that result ``instructions``. If the next calls of the session send data
out, or use a tool, server or destination this *kind* of session never used, the injection has
likely taken over. A session's kind is its first ``server/tool`` (``session_kind: first_tool``)
or simply the agent (``session_kind: agent``); what is familiar is learned per kind, and only
judged after ``warmup_sessions`` sessions of that kind.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .base import PerAgentDetector
from .capabilities import DESTRUCTIVE, SENDS_OUT, CapabilityMap
from .events import Batch, Finding, ToolCall

__all__ = ["HijackConfig", "HijackDetector"]

NS = 1_000_000_000
SESSION_KINDS = ("first_tool", "agent")


@dataclass(slots=True)
class HijackConfig:
    """The ``hijack:`` section of the config."""

    window_calls: int = 2
    """How many calls after the instruction-bearing result are judged."""
    window_s: int = 120
    instruction_labels: tuple[str, ...] = ("instructions",)
    injection_score_threshold: float = 0.8
    """A result with at least this injection score counts as carrying instructions even unlabelled."""
    weak_injection_score: float = 0.5
    """A result labelled instructions whose injection score is below this (a README addressing
    its reader, a dialect that labels without scoring) is weak evidence: findings after it are
    ``low``, signals rather than pages. 0 turns this off (for a labeller that never scores)."""
    session_kind: str = "first_tool"
    arm_scope: str = "agent"
    """Which calls are judged after instructions arrive: the agent's next calls on any server
    (``agent``: an agent holds one MCP session per server, and a takeover crosses them) or only
    those in the same MCP session (``session``)."""
    warmup_sessions: int = 3
    max_kinds_per_agent: int = 100
    max_items_per_kind: int = 500
    max_sessions_per_agent: int = 1_000
    session_ttl_s: int = 3_600

    def validate(self) -> None:
        for key in ("window_calls", "window_s", "max_kinds_per_agent", "max_items_per_kind",
                    "max_sessions_per_agent", "session_ttl_s"):
            if getattr(self, key) < 1:
                raise ValueError(f"hijack.{key} must be at least 1")
        if self.warmup_sessions < 0:
            raise ValueError("hijack.warmup_sessions must not be negative")
        if self.arm_scope not in ("agent", "session"):
            raise ValueError("hijack.arm_scope must be one of agent, session")
        if self.session_kind not in SESSION_KINDS:
            raise ValueError(f"hijack.session_kind must be one of {', '.join(SESSION_KINDS)}")
        if not 0.0 < self.injection_score_threshold <= 1.0:
            raise ValueError("hijack.injection_score_threshold must be in (0, 1]")
        if not 0.0 <= self.weak_injection_score <= 1.0:
            raise ValueError("hijack.weak_injection_score must be in [0, 1]")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "HijackConfig":
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"hijack: unknown key {', '.join(unknown)}; known: {', '.join(sorted(cls.__dataclass_fields__))}")
        if "instruction_labels" in data:
            if not isinstance(data["instruction_labels"], (list, tuple)):
                raise ValueError("hijack.instruction_labels must be a list of labels")
            data["instruction_labels"] = tuple(str(v) for v in data["instruction_labels"])
        cfg = cls(**data)
        cfg.validate()
        return cfg


@dataclass(slots=True)
class KindProfile:
    """What sessions of one kind have used: tokens, servers, destinations (bounded, LRU)."""

    sessions: int = 0
    tokens: OrderedDict[str, None] = field(default_factory=OrderedDict)
    servers: OrderedDict[str, None] = field(default_factory=OrderedDict)
    destinations: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def learn(self, call: ToolCall, cap: int) -> None:
        for table, values in ((self.tokens, (call.token,)), (self.servers, (call.server,)),
                              (self.destinations, tuple(d.lower() for d in call.destinations))):
            for v in values:
                table[v] = None
                table.move_to_end(v)
            while len(table) > cap:
                table.popitem(last=False)


@dataclass(slots=True)
class Armed:
    """An instruction-bearing result and how many following calls are still judged."""

    span_id: str
    token: str
    time_ns: int
    remaining: int
    score: float = 1.0
    """The result's injection score (1.0 in states saved before it was kept)."""


@dataclass(slots=True)
class HijackSession:
    kind: str
    last_ns: int
    judged: bool
    """Whether the kind had finished warm-up when this session began."""
    armed: Armed | None = None


@dataclass(slots=True)
class AgentHijack:
    kinds: OrderedDict[str, KindProfile] = field(default_factory=OrderedDict)
    sessions: OrderedDict[str, HijackSession] = field(default_factory=OrderedDict)
    armed: Armed | None = None
    """The latest instruction-bearing result of the agent, on any server (``arm_scope: agent``)."""


def _armed_to_list(a: Armed | None) -> list[Any] | None:
    return None if a is None else [a.span_id, a.token, a.time_ns, a.remaining, a.score]


def _armed_from_list(a: list[Any] | None) -> Armed | None:
    """Older states have no score: they load as strong evidence (1.0)."""
    if a is None:
        return None
    return Armed(a[0], a[1], int(a[2]), int(a[3]), float(a[4]) if len(a) > 4 else 1.0)


def _trim(table: OrderedDict[str, None], cap: int) -> None:
    while len(table) > cap:
        table.popitem(last=False)


class HijackDetector(PerAgentDetector[AgentHijack]):
    name = "hijack"

    def __init__(self, config: HijackConfig | None = None, capabilities: CapabilityMap | None = None) -> None:
        super().__init__()
        self.config = config or HijackConfig()
        self.config.validate()
        self.capabilities = capabilities or CapabilityMap()

    # --- state ------------------------------------------------------------------------------
    def new_state(self) -> AgentHijack:
        return AgentHijack()

    def state_to_dict(self, state: AgentHijack) -> dict[str, Any]:
        return {
            "kinds": [[k, p.sessions, list(p.tokens), list(p.servers), list(p.destinations)]
                      for k, p in state.kinds.items()],
            "sessions": [[sid, s.kind, s.last_ns, s.judged, _armed_to_list(s.armed)]
                         for sid, s in state.sessions.items()],
            "armed": _armed_to_list(state.armed),
        }

    def state_from_dict(self, data: dict[str, Any]) -> AgentHijack:
        kinds = OrderedDict(
            (k, KindProfile(n, OrderedDict.fromkeys(t), OrderedDict.fromkeys(sv), OrderedDict.fromkeys(d)))
            for k, n, t, sv, d in data.get("kinds", [])
        )
        sessions = OrderedDict(
            (sid, HijackSession(kind, last, judged, _armed_from_list(a)))
            for sid, kind, last, judged, a in data.get("sessions", [])
        )
        return AgentHijack(kinds, sessions, _armed_from_list(data.get("armed")))

    # --- detection --------------------------------------------------------------------------
    def observe(self, batch: Batch) -> list[Finding]:
        self.capabilities.learn(batch.listings)
        cfg = self.config
        findings: list[Finding] = []
        states = self._state
        carries: dict[tuple[str, ...], bool] = {}
        by_agent = cfg.arm_scope == "agent"
        ttl = cfg.session_ttl_s * NS
        threshold = cfg.injection_score_threshold
        cap = cfg.max_items_per_kind
        max_sessions = cfg.max_sessions_per_agent
        for call in batch.by_time():
            agent = states.get(call.agent_id)
            if agent is None:
                agent = states[call.agent_id] = self.new_state()
            sessions = agent.sessions
            sid = call.session_id
            session = sessions.get(sid)
            labels = call.result_labels
            t = call.time_ns
            if (session is None or session.last_ns < t - ttl or len(sessions) > max_sessions
                    or call.result_injection_score >= threshold):
                findings.extend(self._observe_slow(call, agent))
                continue
            kinds = agent.kinds
            kind = session.kind
            profile = kinds.get(kind)  # looked up once: here and for the learning below
            if profile is None:
                findings.extend(self._observe_slow(call, agent))
                continue
            if labels:
                instructions = carries.get(labels)
                if instructions is None:
                    instructions = carries[labels] = not set(cfg.instruction_labels).isdisjoint(labels)
                if instructions:
                    findings.extend(self._observe_slow(call, agent))
                    continue
            armed = agent.armed if by_agent else session.armed
            if armed is not None and armed.remaining > 0:
                findings.extend(self._observe_slow(call, agent))
                continue
            # Nothing armed and no instructions: the call only teaches its session's kind what is
            # familiar (tokens, servers, destinations: ``KindProfile.learn``), and keeps the session
            # (and kind) most recently used.
            if t > session.last_ns:
                session.last_ns = t
            sessions.move_to_end(sid)
            kinds.move_to_end(kind)
            server = call.server
            token = call.token
            # ``table[v] = None; table.move_to_end(v)`` as KindProfile.learn does it: every value
            # is None, so a known value only moves, and a new one is appended (at the end).
            table = profile.tokens
            try:
                table.move_to_end(token)
            except KeyError:
                table[token] = None
            if len(table) > cap:
                _trim(table, cap)
            table = profile.servers
            try:
                table.move_to_end(server)
            except KeyError:
                table[server] = None
            if len(table) > cap:
                _trim(table, cap)
            if call.destinations:
                table = profile.destinations
                for d in call.destinations:
                    d = d.lower()
                    if d in table:
                        table.move_to_end(d)
                    else:
                        table[d] = None
                if len(table) > cap:
                    _trim(table, cap)
        return findings

    def _observe_slow(self, call: ToolCall, agent: AgentHijack) -> list[Finding]:
        finding = self.observe_call(call)
        return [] if finding is None else [finding]

    def observe_call(self, call: ToolCall) -> Finding | None:
        agent = self.state_for(call.agent_id)
        session = self._session(agent, call)
        profile = agent.kinds[session.kind]
        agent.kinds.move_to_end(session.kind)
        finding = None
        unfamiliar = False
        by_agent = self.config.arm_scope == "agent"
        armed = self._live(agent.armed if by_agent else session.armed, call)
        if armed is not None:
            armed.remaining -= 1
            finding, unfamiliar = self._judge(call, session, profile, armed)
        if not unfamiliar:
            # Calls flagged as unfamiliar stay out of the profile, so a takeover is not learned as normal.
            profile.learn(call, self.config.max_items_per_kind)
        if self._carries_instructions(call):
            armed = Armed(call.span_id, call.token, call.time_ns, self.config.window_calls,
                          call.result_injection_score)
            if by_agent:
                agent.armed = armed
            else:
                session.armed = armed
        return finding

    def _live(self, armed: Armed | None, call: ToolCall) -> Armed | None:
        if armed is None or armed.remaining <= 0 or armed.span_id == call.span_id:
            return None
        return armed if call.time_ns - armed.time_ns <= self.config.window_s * NS else None

    def _carries_instructions(self, call: ToolCall) -> bool:
        return bool(set(call.result_labels) & set(self.config.instruction_labels)) or (
            call.result_injection_score >= self.config.injection_score_threshold
        )

    def _session(self, agent: AgentHijack, call: ToolCall) -> HijackSession:
        cutoff = call.time_ns - self.config.session_ttl_s * NS
        s = agent.sessions.get(call.session_id)
        if s is None or s.last_ns < cutoff:
            kind = call.token if self.config.session_kind == "first_tool" else "*"
            profile = agent.kinds.get(kind)
            if profile is None:
                profile = self._new_kind(agent, kind)
            s = HijackSession(kind, call.time_ns, profile.sessions >= self.config.warmup_sessions)
            profile.sessions += 1
        elif s.kind not in agent.kinds:
            # Its kind's profile was pushed out (max_kinds_per_agent) while the session lived: the
            # profile starts again and the session goes on, with anything armed in it. (Looking the
            # kind up raised KeyError, which lost the rest of the batch for every agent.)
            self._new_kind(agent, s.kind)
        s.last_ns = max(s.last_ns, call.time_ns)
        agent.sessions[call.session_id] = s
        agent.sessions.move_to_end(call.session_id)
        while len(agent.sessions) > self.config.max_sessions_per_agent:
            agent.sessions.popitem(last=False)
        return s

    def _new_kind(self, agent: AgentHijack, kind: str) -> KindProfile:
        """A fresh profile for ``kind``, the agent's least recently used kinds dropped past the cap."""
        profile = agent.kinds[kind] = KindProfile()
        while len(agent.kinds) > self.config.max_kinds_per_agent:
            agent.kinds.popitem(last=False)
        return profile

    def _judge(
        self, call: ToolCall, session: HijackSession, profile: KindProfile, armed: Armed
    ) -> tuple[Finding | None, bool]:
        caps = self.capabilities.of(call.server, call.tool)
        outbound = SENDS_OUT in caps
        new: dict[str, Any] = {}
        if session.judged:
            if call.token not in profile.tokens:
                new["tool"] = call.token
            if call.server and call.server not in profile.servers:
                new["server"] = call.server
            dests = [d for d in dict.fromkeys(x.lower() for x in call.destinations) if d not in profile.destinations]
            if dests:
                new["destinations"] = dests[:20]
        if not outbound and not new:
            return None, False
        if outbound and new:
            severity = "critical"
        elif outbound or DESTRUCTIVE in caps:
            severity = "high"
        else:
            severity = "medium"
        weak = armed.score < self.config.weak_injection_score
        if weak:
            severity = "low"
        what = []
        if outbound:
            what.append("an outbound tool")
        if new:
            what.append("never used in this kind of session: " + ", ".join(
                f"{k} {', '.join(v) if isinstance(v, list) else v}" for k, v in new.items()))
        seconds = (call.time_ns - armed.time_ns) / NS
        reason = (f"right after {armed.token} returned instructions aimed at the model, the agent called "
                  f"{call.token} ({'; '.join(what)})")
        calls_since = self.config.window_calls - armed.remaining
        evidence = {
            "kind": "instructions_then_" + ("outbound" if outbound else "unfamiliar"),
            "instructions_span_id": armed.span_id,
            "instructions_tool": armed.token,
            "calls_since_instructions": calls_since,
            "seconds_since_instructions": round(seconds, 3),
            "outbound": outbound,
            "capabilities": sorted(caps),
            "unfamiliar": new,
            "session_kind": session.kind,
            "baseline_sessions": profile.sessions,
            "injection_score": armed.score,
            "weak_evidence": weak,
        }
        finding = Finding(
            detector=self.name,
            severity=severity,
            agent_id=call.agent_id,
            reason=reason,
            time_ns=call.time_ns,
            session_id=call.session_id,
            server=call.server,
            tool=call.tool,
            span_ids=tuple(s for s in dict.fromkeys((armed.span_id, call.span_id)) if s),
            trace_ids=(call.trace_id,) if call.trace_id else (),
            score={"low": 0.25, "medium": 0.5, "high": 0.8, "critical": 1.0}[severity],
            evidence=evidence,
            dedup_key=f"{self.name}:{call.agent_id}:{call.session_id}",
        )
        return finding, bool(new)
