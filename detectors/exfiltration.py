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

from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .base import PerAgentDetector
from .capabilities import READS_SENSITIVE, SENDS_OUT, CapabilityMap
from .events import SEVERITIES, Batch, Finding, ToolCall, destination_keys
from .taint import Citations, Match, SensitiveRead, SessionFlows

__all__ = ["AgentFlows", "ExfiltrationConfig", "ExfiltrationDetector", "median_mad"]

NS = 1_000_000_000
PAYLOAD_REFRESH = 16
SEVERITY_SCORE = {"info": 0.1, "low": 0.25, "medium": 0.5, "high": 0.8, "critical": 1.0}
SECRET_LABELS = ("secret", "credential", "password", "private_key", "api_key", "token", "jwt")
MAX_SENSITIVE_READS = 16
"""Sensitive reads remembered per session (the newest)."""


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


def median_mad(values: Collection[int]) -> tuple[float, float]:
    """``(median, MAD)`` of ``values``, the same floats ``statistics.median`` gives for the values
    and for their absolute deviations from the median, with one sort instead of two.

    Why: this runs every ``PAYLOAD_REFRESH`` sends of an agent over up to ``payload_history``
    sizes, and the deviation list and its sort were two thirds of the cost. Sorted, the values
    below the median give one ascending run of deviations (``med - x``, read right to left) and
    the others another (``x - med``); the middle deviations are picked out of the two runs by
    binary search. ``med - x`` equals ``abs(x - med)`` exactly (IEEE subtraction is symmetric)."""
    s = sorted(values)
    n = len(s)
    h = n // 2
    med = s[h] if n % 2 else (s[h - 1] + s[h]) / 2
    p = bisect_left(s, med)  # s[:p] < med <= s[p:]
    if n % 2:
        mad = _kth_deviation(s, p, med, h)
    else:
        mad = (_kth_deviation(s, p, med, h - 1) + _kth_deviation(s, p, med, h)) / 2
    return float(med), float(mad)


def _kth_deviation(s: list[int], p: int, med: float, k: int) -> float:
    """The ``k``-th smallest (from 0) of ``|x - med|`` over sorted ``s`` split at ``p``: the merge of
    ``L[a] = med - s[p - 1 - a]`` and ``R[b] = s[p + b] - med``, both ascending."""
    nl, nr = p, len(s) - p
    lo, hi = max(0, k + 1 - nr), min(k + 1, nl)  # how many of the k + 1 smallest come from L
    while lo < hi:
        a = (lo + hi) // 2
        if med - s[p - 1 - a] < s[p + k - a] - med:
            lo = a + 1
        else:
            hi = a
    if lo == 0:
        return s[p + k] - med
    if lo == k + 1:
        return med - s[p - lo]
    left, right = med - s[p - lo], s[p + k - lo] - med
    return left if left > right else right


@dataclass(slots=True)
class AgentFlows:
    sessions: OrderedDict[str, SessionFlows] = field(default_factory=OrderedDict)
    destinations: OrderedDict[str, None] = field(default_factory=OrderedDict)
    destination_calls: int = 0
    payloads: deque[int] = field(default_factory=deque)
    """The newest argument sizes of sends, oldest first: a deque bounded by ``payload_history``
    drops the oldest in O(1), where trimming a list moved every size at every send."""
    payload_stats: tuple[float, float] | None = None
    """(median, MAD) of ``payloads`` as of the last refresh."""
    payload_stale: int = 0
    """Sizes added since the last refresh."""
    payload_limit: float | None = None
    """Size above which a payload is large, derived from ``payload_stats`` (not stored)."""


@dataclass(slots=True, frozen=True)
class _Tool:
    """What one ``server/tool`` means to this detector, looked up once per batch."""

    token: str
    sink: bool
    reads_sensitive: bool


class ExfiltrationDetector(PerAgentDetector[AgentFlows]):
    name = "exfiltration"

    def __init__(self, config: ExfiltrationConfig | None = None, capabilities: CapabilityMap | None = None) -> None:
        super().__init__()
        self.config = config or ExfiltrationConfig()
        self.config.validate()
        self.capabilities = capabilities or CapabilityMap()
        self._arg_memo: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._read_memo: dict[tuple[str, ...], tuple[str, ...]] = {}
        """Label sets seen in the current batch, and what they mean under the config."""
        self._dest_memo: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._tools: dict[tuple[str, str], _Tool] = {}
        """What each (server, tool) means, as of ``capabilities.version`` ``_tools_version``: kept
        across batches, since making them afresh per batch (a frozen dataclass and a capability
        look-up per tool) cost ~0.1 µs a call."""
        self._tools_version = -1
        """Destination tuples seen in the current batch: (lower-cased, once each; destination keys).
        Why: most calls that name destinations name the same few, and each was lower-cased three
        times and parsed once per call."""

    # --- state ------------------------------------------------------------------------------
    def new_state(self) -> AgentFlows:
        return AgentFlows(payloads=deque(maxlen=self.config.payload_history))

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
            payloads=self._payloads([int(b) for b in data.get("payloads", [])]),
            payload_stats=None if data.get("payload_stats") is None else (
                float(data["payload_stats"][0]), float(data["payload_stats"][1])),
            payload_stale=int(data.get("payload_stale", 0)),
        )

    def _payloads(self, sizes: list[int]) -> deque[int]:
        """Loaded sizes: bounded by ``payload_history``, unless a state saved under a longer one has
        more (kept whole until the next send trims them, as before)."""
        limit = self.config.payload_history
        return deque(sizes, maxlen=limit if len(sizes) <= limit else None)

    # --- detection --------------------------------------------------------------------------
    def observe(self, batch: Batch) -> list[Finding]:
        self.capabilities.learn(batch.listings)
        self._arg_memo.clear()
        self._read_memo.clear()
        self._dest_memo.clear()
        findings: list[Finding] = []
        states = self._state
        tools = self._tools
        if self._tools_version != self.capabilities.version or len(tools) > 4_096:
            tools = self._tools = {}
            self._tools_version = self.capabilities.version
        fast = self.config.flow_scope == "agent"
        ttl = self.config.session_ttl_s * NS
        for call in batch.by_time():
            key = (call.server, call.tool)
            tool = tools.get(key)
            if tool is None:
                tool = tools[key] = self._tool(call)
            agent = states.get(call.agent_id)
            if agent is None:
                agent = states[call.agent_id] = self.new_state()
            if fast and not (call.destinations or call.args_fingerprints or call.result_fingerprints
                             or call.args_sketch or call.result_sketch):
                # The common call carries no values to follow and names no destination; with the
                # agent's one scope alive, only reads and sends have anything to do.
                sessions = agent.sessions
                session = sessions.get("*") if len(sessions) == 1 else None
                t = call.time_ns
                if session is not None and session.last_ns >= t - ttl:
                    if tool.sink:
                        self._send(call, tool, agent, session, [], findings)
                    if call.result_labels:
                        self._read(call, tool, session)
                    elif tool.reads_sensitive:
                        # SessionFlows.add_read inlined (same operations).
                        reads = session.sensitive
                        reads.append(SensitiveRead(t, call.span_id, tool.token, ()))
                        if len(reads) > MAX_SENSITIVE_READS:
                            del reads[:-MAX_SENSITIVE_READS]
                        session.reads_seen += 1
                    if t > session.last_ns:
                        session.last_ns = t
                    continue
            self._observe_call(call, agent, tool, findings)
        return findings

    def observe_call(self, call: ToolCall) -> list[Finding]:
        """One call on its own (``observe`` is the fast way to feed many)."""
        findings: list[Finding] = []
        self._observe_call(call, self.state_for(call.agent_id), self._tool(call), findings)
        return findings

    def _tool(self, call: ToolCall) -> _Tool:
        caps = self.capabilities.of(call.server, call.tool)
        return _Tool(call.token, SENDS_OUT in caps, READS_SENSITIVE in caps)

    def _observe_call(self, call: ToolCall, agent: AgentFlows, tool: _Tool, findings: list[Finding]) -> None:
        cfg = self.config
        # ``_session``'s first case inlined (the scope in use, alive): most calls with values take it.
        sessions = agent.sessions
        session = sessions.get("*") if cfg.flow_scope == "agent" and len(sessions) == 1 else None
        if session is None or session.last_ns < call.time_ns - cfg.session_ttl_s * NS:
            session = self._session(agent, call)
        sink = tool.sink
        dests = call.destinations
        if dests:
            keys = self._dest_memo.get(dests)
            if keys is None:
                if len(self._dest_memo) >= 4_096:  # observe_call alone never clears it
                    self._dest_memo.clear()
                keys = self._dest_memo[dests] = destination_keys(dests)
            # Known destinations are kept as destination keys (a URL's host), so they are looked up
            # as keys: comparing the lower-cased URL itself never matched, and every flow into a
            # sender naming a URL was reported as going somewhere new.
            known = agent.destinations
            if agent.destination_calls < cfg.destination_warmup_calls:
                new_dests = []  # _unseen_destinations inlined
            else:
                new_dests = [d for d in keys if d not in known]
            dests_known = bool(keys) and all(d in known for d in keys)
        else:
            new_dests, dests_known = [], False

        fps = call.args_fingerprints
        if call.args_sketch:
            matches = session.matches(call, cfg.sketch_similarity)
            cross = [m for m in matches if m.origin.server != call.server]
        elif fps:
            # SessionFlows.matches without sketches, inlined: most such calls carry one value.
            taint = session.taint
            matches = [Match(o, fp) for fp in (fps if len(fps) == 1 else dict.fromkeys(fps)) if (o := taint.get(fp))]
            cross = [m for m in matches if m.origin.server != call.server] if matches else matches
        else:
            matches = cross = []
        if cross:
            flow = self._flow_finding(call, tool, cross, sink, new_dests, dests_known)
            if flow is not None:
                findings.append(flow)
        if call.args_labels and dests and not sink:
            secrets = self._arg_labels(call.args_labels)[0]
            if secrets:
                # A secret in a call that names an external destination (a fetch URL, an image link)
                # leaves too, even when the tool is not a sender.
                findings.append(self._finding(
                    call, tool, "secret_in_outbound_args", "high",
                    f"secret ({', '.join(secrets)}) in the arguments of a call to an external destination, "
                    f"{tool.token}", {"labels": list(secrets), "sink": False, "destinations": list(dests[:10])}))
        if sink:
            self._send(call, tool, agent, session, cross, findings, new_dests)
        if dests:
            new = self._new_destinations(call, tool, agent, sink, keys)
            if new is not None:
                findings.append(new)

        result_sensitive = self._read(call, tool, session) if tool.reads_sensitive or call.result_labels else False
        if call.args_fingerprints or call.result_fingerprints or call.args_sketch or call.result_sketch:
            session.learn(call, matches, result_sensitive, cfg.sketch_similarity,
                          cfg.max_fingerprints_per_session, cfg.max_sketches_per_session)
        elif call.time_ns > session.last_ns:
            session.last_ns = call.time_ns

    def _send(
        self, call: ToolCall, tool: _Tool, agent: AgentFlows, session: SessionFlows, cross: list[Match],
        findings: list[Finding], new_dests: list[str] | None = None,
    ) -> None:
        """The checks of a call to a sender, in the order their findings are reported."""
        if call.args_labels:
            secrets, encoded = self._arg_labels(call.args_labels)
            if secrets:
                findings.append(self._finding(
                    call, tool, "secret_in_outbound_args", "critical",
                    f"secret ({', '.join(secrets)}) in the arguments of outbound tool {tool.token}",
                    {"labels": list(secrets), "sink": True, "destinations": list(call.destinations[:10])}))
            if encoded:
                findings.append(self._finding(
                    call, tool, "encoded_blob_outbound", "medium",
                    f"encoded/high-entropy data ({', '.join(encoded)}) sent out via {tool.token}",
                    {"labels": list(encoded), "args_bytes": call.args_bytes}))
        if not cross or not any(m.origin.sensitive for m in cross):
            seq = self._sensitive_then_send(call, tool, session, [] if new_dests is None else new_dests)
            if seq is not None:
                findings.append(seq)
        big = self._large_payload(call, tool, agent)
        if big is not None:
            findings.append(big)

    def _read(self, call: ToolCall, tool: _Tool, session: SessionFlows) -> bool:
        """Remember a read of sensitive data (by capability or by result label); whether it was one."""
        labels = self._read_memo.get(call.result_labels)
        if labels is None:
            labels = self._read_memo[call.result_labels] = tuple(
                sorted(set(call.result_labels).intersection(self.config.sensitive_labels)))
        if not (tool.reads_sensitive or labels):
            return False
        session.add_read(SensitiveRead(call.time_ns, call.span_id, tool.token, labels), MAX_SENSITIVE_READS)
        return True

    def _arg_labels(self, labels: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(secret labels, encoded labels) among argument labels, sorted; memoised per batch."""
        found = self._arg_memo.get(labels)
        if found is None:
            have = set(labels)
            found = self._arg_memo[labels] = (tuple(sorted(have.intersection(self.config.secret_labels))),
                                              tuple(sorted(have.intersection(self.config.encoded_labels))))
        return found

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
        if len(agent.sessions) == 1:
            only = agent.sessions.get(key)
            if only is not None and only.last_ns >= cutoff:
                return only  # the scope in use, alive: nothing expires, nothing moves
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

    def _flow_finding(
        self, call: ToolCall, tool: _Tool, cross: list[Match], sink: bool, new_dests: list[str], dests_known: bool
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
        reason = f"{kind_of} from {sources} flowed into {where}: {tool.token}"
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
        return self._finding(call, tool, "cross_server_flow", severity, reason, evidence, spans)

    def _sensitive_then_send(
        self, call: ToolCall, tool: _Tool, session: SessionFlows, new_dests: list[str]
    ) -> Finding | None:
        reads = session.sensitive
        if not reads:
            return None
        t = call.time_ns
        oldest = t - self.config.sensitive_window_s * NS
        token = tool.token
        cited = session.cited()
        if cited.ordered and cited.unlabelled and reads[0].time_ns >= oldest and reads[-1].time_ns <= t:
            if cited.clear_of != token and not any(r.token == token for r in reads):
                cited.clear_of = token
            if cited.clear_of == token:
                # Every read is recent and none by this tool: cite them all, as kept up to date.
                return self._cite_all(call, tool, reads, cited, new_dests)
        recent = [r for r in reads if oldest <= r.time_ns <= t and r.token != token]
        if not recent:
            return None
        first = recent[0]
        age = (t - first.time_ns) / NS
        reason = f"outbound call {token} {age:.0f}s after a sensitive read from {first.token} in the same session"
        # A read of customer data, then a send, is what most support and mail sessions do. It is
        # worth a page only when the read returned a secret/credential, or the send looks like the
        # read's data leaving: it goes to a destination never seen for the agent, or its arguments
        # carry a sensitive label the read returned. Otherwise it is a low signal (API, dashboards).
        labelled = [r.labels for r in recent if r.labels]
        if labelled:
            read_labels = set().union(*labelled)
            carried = sorted(read_labels.intersection(call.args_labels))
            secret_read = bool(read_labels.intersection(self.config.secret_labels))
        else:
            carried, secret_read = [], False
        severity = "medium" if (secret_read or new_dests or carried) else "low"
        # Each read's evidence entry is built once and shared by the findings that cite it.
        evidence = {"kind": "sensitive_then_send", "reads": [r.cite() for r in recent],
                    "seconds_since_read": round(age, 3), "window_s": self.config.sensitive_window_s,
                    "new_destinations": new_dests[:10], "carried_labels": carried}
        spans = dict.fromkeys([r.span_id for r in recent])
        spans[call.span_id] = None
        return self._finding(call, tool, "sensitive_then_send", severity, reason, evidence, tuple(spans),
                             evidence_has_kind=True)

    def _cite_all(
        self, call: ToolCall, tool: _Tool, reads: list[SensitiveRead], cited: Citations, new_dests: list[str]
    ) -> Finding:
        """``_sensitive_then_send`` when every read is recent, unlabelled and by another tool
        (``_finding`` inlined: this is the finding of most sends after reads)."""
        age = (call.time_ns - reads[0].time_ns) / NS
        token = tool.token
        reason = f"outbound call {token} {age:.0f}s after a sensitive read from {reads[0].token} in the same session"
        evidence = {"kind": "sensitive_then_send", "reads": cited.evidence.copy(),
                    "seconds_since_read": round(age, 3), "window_s": self.config.sensitive_window_s,
                    "new_destinations": new_dests[:10], "carried_labels": []}
        spans = dict.fromkeys(cited.spans)
        spans[call.span_id] = None
        span_ids = tuple(spans)
        if "" in spans:
            span_ids = tuple(s for s in span_ids if s)
        severity = "medium" if new_dests else "low"
        return Finding(
            self.name, severity, call.agent_id, reason, call.time_ns, call.session_id, call.server, call.tool,
            span_ids, (call.trace_id,) if call.trace_id else (), SEVERITY_SCORE[severity], evidence,
            f"{self.name}:sensitive_then_send:{call.agent_id}:{call.session_id}:{token}",
        )

    def _new_destinations(
        self, call: ToolCall, tool: _Tool, agent: AgentFlows, sink: bool, keys: tuple[str, ...] | None = None
    ) -> Finding | None:
        """``keys``: ``destination_keys(call.destinations)`` when the caller has them."""
        cfg = self.config
        dests = list(destination_keys(call.destinations) if keys is None else keys)
        known = agent.destinations
        new = [d for d in dests if d not in known]
        warmed = agent.destination_calls >= cfg.destination_warmup_calls
        agent.destination_calls += 1
        for d in dests:
            known[d] = None
            known.move_to_end(d)
        while len(known) > cfg.max_destinations_per_agent:
            known.popitem(last=False)
        if not new or not warmed:
            return None
        reason = f"{tool.token} named destination(s) never seen for this agent: {', '.join(new[:5])}"
        evidence = {"new_destinations": new[:20], "known_destinations": len(known), "sink": sink}
        return self._finding(call, tool, "new_destination", "medium" if sink else "low", reason, evidence)

    def _large_payload(self, call: ToolCall, tool: _Tool, agent: AgentFlows) -> Finding | None:
        cfg = self.config
        hist = agent.payloads
        size = call.args_bytes
        if len(hist) >= cfg.payload_min_samples:
            if agent.payload_stats is None or agent.payload_stale >= PAYLOAD_REFRESH:
                # Median/MAD over the history, refreshed every PAYLOAD_REFRESH new sizes: a robust
                # baseline barely moves per sample, and this keeps the check O(1) per call.
                agent.payload_stats = median_mad(hist)
                agent.payload_stale = 0
                agent.payload_limit = None
            limit = agent.payload_limit
            if limit is None:
                median, mad = agent.payload_stats
                limit = agent.payload_limit = max(
                    cfg.payload_min_bytes, median * cfg.payload_ratio, median + cfg.payload_mad_k * 1.4826 * mad)
            if size > limit:
                # Kept out of the baseline, so one leak does not teach the agent that leaks are normal.
                median, mad = agent.payload_stats
                reason = (f"outbound payload of {size} bytes via {tool.token} is {size / max(median, 1):.0f}x "
                          f"this agent's median ({median:.0f} bytes)")
                evidence = {"args_bytes": size, "median_bytes": median, "mad_bytes": mad, "limit_bytes": round(limit),
                            "baseline_calls": len(hist)}
                return self._finding(call, tool, "large_outbound_payload", "medium", reason, evidence)
        hist.append(size)
        if hist.maxlen != cfg.payload_history:  # loaded longer than payload_history, or built elsewhere
            agent.payloads = deque(hist, maxlen=cfg.payload_history)  # the newest payload_history
        agent.payload_stale += 1
        return None

    def _finding(
        self, call: ToolCall, tool: _Tool, kind: str, severity: str, reason: str, evidence: dict[str, Any],
        spans: tuple[str, ...] | None = None, evidence_has_kind: bool = False,
    ) -> Finding:
        if spans is None:
            spans = (call.span_id,) if call.span_id else ()
        elif "" in spans:
            spans = tuple(s for s in spans if s)
        return Finding(
            self.name, severity, call.agent_id, reason, call.time_ns, call.session_id, call.server, call.tool,
            spans, (call.trace_id,) if call.trace_id else (), SEVERITY_SCORE[severity],
            evidence if evidence_has_kind else {"kind": kind, **evidence},
            f"{self.name}:{kind}:{call.agent_id}:{call.session_id}:{tool.token}",
        )
