"""Exfiltration: data leaving across trust domains, and outbound calls that look like a leak.

Six checks, each a finding ``kind`` in the evidence:

- ``cross_server_flow``: a value (exact fingerprint, or near-copy by sketch) that came out of one
  server's result is in the arguments of a call to another server; high/critical when that
  server sends data out to a new destination (or names none), low when every destination it names
  is already known for the agent (``known_destination_flow_severity``), low for non-senders
  (``non_sink_flow_severity``). Flows are followed through
  intermediate calls (see ``taint``).
- ``sensitive_then_send``: a sensitive read (``reads_sensitive`` tool or a result labelled
  secret/credential/PII) and then an outbound call in the same session within a window; medium
  when the read returned a secret, or the send goes to a new destination or carries a sensitive
  label the read returned; low otherwise.
- ``secret_in_outbound_args`` / ``encoded_blob_outbound``: labels on an outbound call's arguments.
- ``new_destination``: a destination never seen for the agent (after a warm-up).
- ``large_outbound_payload``: outbound argument bytes far above the agent's median (median/MAD).
"""

from __future__ import annotations

import statistics
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .base import PerAgentDetector
from .capabilities import READS_SENSITIVE, SENDS_OUT, CapabilityMap
from .events import SEVERITIES, Batch, Finding, ToolCall, destination_keys
from .taint import Match, SensitiveRead, SessionFlows

__all__ = ["AgentFlows", "ExfiltrationConfig", "ExfiltrationDetector"]

NS = 1_000_000_000
PAYLOAD_REFRESH = 16
SEVERITY_SCORE = {"info": 0.1, "low": 0.25, "medium": 0.5, "high": 0.8, "critical": 1.0}
SECRET_LABELS = ("secret", "credential", "password", "private_key", "api_key", "token", "jwt")


@dataclass(slots=True)
class ExfiltrationConfig:
    """The ``exfiltration:`` section of the config."""

    flow_scope: str = "agent"
    """Where data is followed: ``agent`` (every call of the agent, whatever MCP session or server
    it went through: an agent holds one session per server, so cross-server flows span sessions),
    ``trace`` (one agent turn, when the agent's spans share a trace) or ``session`` (one MCP session)."""
    session_ttl_s: int = 3_600
    max_sessions_per_agent: int = 1_000
    max_fingerprints_per_session: int = 2_000
    max_sketches_per_session: int = 64
    sketch_similarity: float = 0.8
    non_sink_flow_severity: str = "low"
    """Severity of flows into servers that do not send out; ``off`` to not report them."""
    known_destination_flow_severity: str = "low"
    """Severity of flows into a sender whose destinations are all known for the agent; ``off`` to
    not report them (a contact's address looked up, then mailed)."""
    sensitive_window_s: int = 600
    secret_labels: tuple[str, ...] = SECRET_LABELS
    sensitive_labels: tuple[str, ...] = SECRET_LABELS + ("pii", "card", "ssn", "iban")
    encoded_labels: tuple[str, ...] = ("high_entropy", "base64", "encoded")
    destination_warmup_calls: int = 50
    """Calls naming destinations an agent makes before new destinations are reported."""
    max_destinations_per_agent: int = 5_000
    payload_min_samples: int = 20
    payload_history: int = 256
    payload_min_bytes: int = 16_384
    payload_ratio: float = 10.0
    payload_mad_k: float = 8.0

    def validate(self) -> None:
        positive = (
            "session_ttl_s", "max_sessions_per_agent", "max_fingerprints_per_session", "max_sketches_per_session",
            "sensitive_window_s", "max_destinations_per_agent", "payload_min_samples", "payload_history",
        )
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"exfiltration.{key} must be at least 1")
        if not 0.0 < self.sketch_similarity <= 1.0:
            raise ValueError("exfiltration.sketch_similarity must be in (0, 1]")
        if self.flow_scope not in ("agent", "trace", "session"):
            raise ValueError("exfiltration.flow_scope must be one of agent, trace, session")
        for key in ("non_sink_flow_severity", "known_destination_flow_severity"):
            if getattr(self, key) not in SEVERITIES + ("off",):
                raise ValueError(f"exfiltration.{key} must be one of {', '.join(SEVERITIES)}, off")
        if self.destination_warmup_calls < 0 or self.payload_min_bytes < 0:
            raise ValueError("exfiltration.destination_warmup_calls and payload_min_bytes must not be negative")
        if self.payload_ratio <= 1.0 or self.payload_mad_k <= 0:
            raise ValueError("exfiltration.payload_ratio must be > 1 and payload_mad_k > 0")
        if self.payload_history < self.payload_min_samples:
            raise ValueError("exfiltration.payload_history must be at least payload_min_samples")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ExfiltrationConfig":
        data = dict(data or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"exfiltration: unknown key {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for key in ("secret_labels", "sensitive_labels", "encoded_labels"):
            if key in data:
                if not isinstance(data[key], (list, tuple)):
                    raise ValueError(f"exfiltration.{key} must be a list of labels")
                data[key] = tuple(str(v) for v in data[key])
        cfg = cls(**data)
        cfg.validate()
        return cfg


@dataclass(slots=True)
class AgentFlows:
    sessions: OrderedDict[str, SessionFlows] = field(default_factory=OrderedDict)
    destinations: OrderedDict[str, None] = field(default_factory=OrderedDict)
    destination_calls: int = 0
    payloads: list[int] = field(default_factory=list)
    payload_stats: tuple[float, float] | None = None
    """(median, MAD) of ``payloads`` as of the last refresh."""
    payload_stale: int = 0
    """Sizes added since the last refresh."""


class ExfiltrationDetector(PerAgentDetector[AgentFlows]):
    name = "exfiltration"

    def __init__(self, config: ExfiltrationConfig | None = None, capabilities: CapabilityMap | None = None) -> None:
        super().__init__()
        self.config = config or ExfiltrationConfig()
        self.config.validate()
        self.capabilities = capabilities or CapabilityMap()

    # --- state ------------------------------------------------------------------------------
    def new_state(self) -> AgentFlows:
        return AgentFlows()

    def state_to_dict(self, state: AgentFlows) -> dict[str, Any]:
        return {
            "sessions": [[sid, s.to_dict()] for sid, s in state.sessions.items()],
            "destinations": list(state.destinations),
            "destination_calls": state.destination_calls,
            "payloads": list(state.payloads),
            "payload_stats": None if state.payload_stats is None else list(state.payload_stats),
            "payload_stale": state.payload_stale,
        }

    def state_from_dict(self, data: dict[str, Any]) -> AgentFlows:
        return AgentFlows(
            sessions=OrderedDict((sid, SessionFlows.from_dict(s)) for sid, s in data.get("sessions", [])),
            destinations=OrderedDict.fromkeys(data.get("destinations", [])),
            destination_calls=int(data.get("destination_calls", 0)),
            payloads=[int(b) for b in data.get("payloads", [])],
            payload_stats=None if data.get("payload_stats") is None else (
                float(data["payload_stats"][0]), float(data["payload_stats"][1])),
            payload_stale=int(data.get("payload_stale", 0)),
        )

    # --- detection --------------------------------------------------------------------------
    def observe(self, batch: Batch) -> list[Finding]:
        self.capabilities.learn(batch.listings)
        findings: list[Finding] = []
        for call in sorted(batch.calls, key=lambda c: c.time_ns):
            findings.extend(self.observe_call(call))
        return findings

    def observe_call(self, call: ToolCall) -> list[Finding]:
        cfg = self.config
        agent = self.state_for(call.agent_id)
        session = self._session(agent, call)
        caps = self.capabilities.of(call.server, call.tool)
        sink = SENDS_OUT in caps
        labels = set(call.args_labels)
        findings: list[Finding] = []
        new_dests = self._unseen_destinations(call, agent)
        dests_known = bool(call.destinations) and all(d.lower() in agent.destinations for d in call.destinations)

        matches = session.matches(call, cfg.sketch_similarity)
        cross = [m for m in matches if m.origin.server != call.server]
        flow = self._flow_finding(call, cross, sink, new_dests, dests_known) if cross else None
        if flow is not None:
            findings.append(flow)
        secrets = sorted(labels.intersection(cfg.secret_labels))
        if secrets and (sink or call.destinations):
            # A secret in a call that names an external destination (a fetch URL, an image link)
            # leaves too, even when the tool is not a sender.
            where = "outbound tool" if sink else "a call to an external destination,"
            findings.append(self._finding(
                call, "secret_in_outbound_args", "critical" if sink else "high",
                f"secret ({', '.join(secrets)}) in the arguments of {where} {call.token}",
                {"labels": secrets, "sink": sink, "destinations": list(call.destinations[:10])}))
        if sink:
            encoded = sorted(labels.intersection(cfg.encoded_labels))
            if encoded:
                findings.append(self._finding(call, "encoded_blob_outbound", "medium",
                                              f"encoded/high-entropy data ({', '.join(encoded)}) sent out via "
                                              f"{call.token}", {"labels": encoded, "args_bytes": call.args_bytes}))
            sensitive_flow = any(m.origin.sensitive for m in cross)
            if not sensitive_flow:
                seq = self._sensitive_then_send(call, session, new_dests)
                if seq is not None:
                    findings.append(seq)
            big = self._large_payload(call, agent)
            if big is not None:
                findings.append(big)
        if call.destinations:
            new = self._new_destinations(call, agent, sink)
            if new is not None:
                findings.append(new)

        result_sensitive = READS_SENSITIVE in caps or bool(set(call.result_labels) & set(cfg.sensitive_labels))
        if result_sensitive:
            session.sensitive = (session.sensitive + [
                SensitiveRead(call.time_ns, call.span_id, call.token,
                              tuple(sorted(set(call.result_labels) & set(cfg.sensitive_labels))))
            ])[-16:]
        session.learn(call, matches, result_sensitive, cfg.sketch_similarity,
                      cfg.max_fingerprints_per_session, cfg.max_sketches_per_session)
        return findings

    def _scope(self, call: ToolCall) -> str:
        scope = self.config.flow_scope
        if scope == "agent":
            return "*"
        if scope == "trace":
            return call.trace_id or call.session_id
        return call.session_id

    def _session(self, agent: AgentFlows, call: ToolCall) -> SessionFlows:
        ttl = self.config.session_ttl_s * NS
        cutoff = call.time_ns - ttl
        key = self._scope(call)
        # Scopes expire in event time; they are kept in last-use order, so stop at the first live one.
        while agent.sessions:
            sid, oldest = next(iter(agent.sessions.items()))
            if oldest.last_ns >= cutoff or sid == key:
                break
            agent.sessions.popitem(last=False)
        s = agent.sessions.get(key)
        if s is None or s.last_ns < cutoff:
            s = SessionFlows(last_ns=call.time_ns)
        agent.sessions[key] = s
        agent.sessions.move_to_end(key)
        while len(agent.sessions) > self.config.max_sessions_per_agent:
            agent.sessions.popitem(last=False)
        return s

    def _unseen_destinations(self, call: ToolCall, agent: AgentFlows) -> list[str]:
        """Destinations of ``call`` never seen for the agent (before this call is learned); none
        during the destination warm-up, when every destination is new."""
        if agent.destination_calls < self.config.destination_warmup_calls:
            return []
        return [d for d in dict.fromkeys(x.lower() for x in call.destinations) if d not in agent.destinations]

    def _flow_finding(
        self, call: ToolCall, cross: list[Match], sink: bool, new_dests: list[str], dests_known: bool
    ) -> Finding | None:
        sensitive = any(m.origin.sensitive for m in cross)
        # A value reaching a sender is how data leaves, but a value sent to a destination the
        # agent already uses (a contact's address looked up, then mailed) is business as usual:
        # only a destination not yet seen for the agent, or a sender that names none, makes it an alert.
        if sink and dests_known:
            severity = self.config.known_destination_flow_severity
            if severity == "off":
                return None
        elif sink:
            severity = "critical" if sensitive else "high"
        elif self.config.non_sink_flow_severity == "off":
            return None
        else:
            severity = self.config.non_sink_flow_severity
        origins = list({m.origin.span_id: m.origin for m in cross}.values())
        sources = ", ".join(sorted({f"{o.server}/{o.tool}" for o in origins}))
        kind_of = "sensitive data" if sensitive else "data"
        where = "an outbound tool" if sink else "another server"
        reason = f"{kind_of} from {sources} flowed into {where}: {call.token}"
        if any(o.via for o in origins):
            reason += " (through " + ", ".join(sorted({h for o in origins for h in o.via})) + ")"
        evidence = {
            "fingerprints": sorted({m.fingerprint for m in cross if m.fingerprint})[:20],
            "near_copies": [{"origin_span_id": m.origin.span_id, "similarity": m.similarity}
                            for m in cross if not m.fingerprint][:10],
            "origins": [o.describe() for o in origins[:10]],
            "sink": sink,
            "sensitive_origin": sensitive,
            "new_destinations": new_dests[:10],
        }
        spans = tuple(dict.fromkeys([o.span_id for o in origins] + [call.span_id]))
        return self._finding(call, "cross_server_flow", severity, reason, evidence, spans)

    def _sensitive_then_send(self, call: ToolCall, session: SessionFlows, new_dests: list[str]) -> Finding | None:
        window = self.config.sensitive_window_s * NS
        recent = [r for r in session.sensitive if 0 <= call.time_ns - r.time_ns <= window and r.token != call.token]
        if not recent:
            return None
        first = recent[0]
        age = (call.time_ns - first.time_ns) / NS
        reason = (f"outbound call {call.token} {age:.0f}s after a sensitive read from {first.token}"
                  f" in the same session")
        # A read of customer data, then a send, is what most support and mail sessions do. It is
        # worth a page only when the read returned a secret/credential, or the send looks like the
        # read's data leaving: it goes to a destination never seen for the agent, or its arguments
        # carry a sensitive label the read returned. Otherwise it is a low signal (API, dashboards).
        read_labels = {lab for r in recent for lab in r.labels}
        carried = sorted(read_labels.intersection(call.args_labels))
        secret_read = bool(read_labels.intersection(self.config.secret_labels))
        severity = "medium" if (secret_read or new_dests or carried) else "low"
        evidence = {"reads": [{"tool": r.token, "span_id": r.span_id, "labels": list(r.labels)} for r in recent],
                    "seconds_since_read": round(age, 3), "window_s": self.config.sensitive_window_s,
                    "new_destinations": new_dests[:10], "carried_labels": carried}
        spans = tuple(dict.fromkeys([r.span_id for r in recent] + [call.span_id]))
        return self._finding(call, "sensitive_then_send", severity, reason, evidence, spans)

    def _new_destinations(self, call: ToolCall, agent: AgentFlows, sink: bool) -> Finding | None:
        cfg = self.config
        dests = list(destination_keys(call.destinations))
        new = [d for d in dests if d not in agent.destinations]
        warmed = agent.destination_calls >= cfg.destination_warmup_calls
        agent.destination_calls += 1
        for d in dests:
            agent.destinations[d] = None
            agent.destinations.move_to_end(d)
        while len(agent.destinations) > cfg.max_destinations_per_agent:
            agent.destinations.popitem(last=False)
        if not new or not warmed:
            return None
        reason = f"{call.token} named destination(s) never seen for this agent: {', '.join(new[:5])}"
        evidence = {"new_destinations": new[:20], "known_destinations": len(agent.destinations), "sink": sink}
        return self._finding(call, "new_destination", "medium" if sink else "low", reason, evidence)

    def _large_payload(self, call: ToolCall, agent: AgentFlows) -> Finding | None:
        cfg = self.config
        hist = agent.payloads
        size = call.args_bytes
        if len(hist) >= cfg.payload_min_samples:
            if agent.payload_stats is None or agent.payload_stale >= PAYLOAD_REFRESH:
                # Median/MAD over the history, refreshed every PAYLOAD_REFRESH new sizes: a robust
                # baseline barely moves per sample, and this keeps the check O(1) per call.
                med = statistics.median(hist)
                agent.payload_stats = (float(med), float(statistics.median(abs(b - med) for b in hist)))
                agent.payload_stale = 0
            median, mad = agent.payload_stats
            limit = max(cfg.payload_min_bytes, median * cfg.payload_ratio, median + cfg.payload_mad_k * 1.4826 * mad)
            if size > limit:
                # Kept out of the baseline, so one leak does not teach the agent that leaks are normal.
                reason = (f"outbound payload of {size} bytes via {call.token} is {size / max(median, 1):.0f}x "
                          f"this agent's median ({median:.0f} bytes)")
                evidence = {"args_bytes": size, "median_bytes": median, "mad_bytes": mad, "limit_bytes": round(limit),
                            "baseline_calls": len(hist)}
                return self._finding(call, "large_outbound_payload", "medium", reason, evidence)
        hist.append(size)
        del hist[:-cfg.payload_history]
        agent.payload_stale += 1
        return None

    def _finding(
        self, call: ToolCall, kind: str, severity: str, reason: str, evidence: dict[str, Any],
        spans: tuple[str, ...] | None = None,
    ) -> Finding:
        return Finding(
            detector=self.name,
            severity=severity,
            agent_id=call.agent_id,
            reason=reason,
            time_ns=call.time_ns,
            session_id=call.session_id,
            server=call.server,
            tool=call.tool,
            span_ids=tuple(s for s in (spans or (call.span_id,)) if s),
            trace_ids=(call.trace_id,) if call.trace_id else (),
            score=SEVERITY_SCORE[severity],
            evidence={"kind": kind, **evidence},
            dedup_key=f"{self.name}:{kind}:{call.agent_id}:{call.session_id}:{call.token}",
        )
