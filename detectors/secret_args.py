"""A secret in the arguments of a tool that, for this agent, does not carry secrets.

Why: a credential pasted into the query of a search tool or a ticket reply is a leak in the making
(an injected instruction, a confused agent), yet a login or vault tool carries secrets every
call. So what is usual is learned per agent×tool: once a tool has been called ``warmup_calls``
times by an agent, a secret/credential label in its arguments is reported when fewer than
``usual_share`` of its earlier calls had one (never, by default in practice). Severity is
``severity`` (medium), ``outbound_severity`` (high) when the call also names a destination.
Secret-bearing calls are learned too, so a tool that really does take secrets stops alerting
once they are usual for it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

from .base import PerAgentDetector
from .config_fields import load_flat, require
from .events import SEVERITIES, Batch, Finding, ToolCall

__all__ = ["SecretArgsConfig", "SecretArgsDetector", "ToolSecretHistory"]

SECRET_LABELS = ("secret", "credential", "password", "private_key", "api_key", "token", "jwt")
_KEY = attrgetter("agent_id", "token")
_LABELS = attrgetter("args_labels")
_FIRST = itemgetter(0)
SEVERITY_SCORE = {"info": 0.1, "low": 0.25, "medium": 0.5, "high": 0.8, "critical": 1.0}


@dataclass(slots=True)
class SecretArgsConfig:
    """YAML key ``secret_args``."""

    warmup_calls: int = 10
    """Calls of a tool by an agent before a secret in its arguments is judged."""
    usual_share: float = 0.05
    """A tool whose earlier calls carried secrets at least this often takes secrets: no finding."""
    secret_labels: tuple[str, ...] = SECRET_LABELS
    severity: str = "medium"
    outbound_severity: str = "high"
    """When the call also names a destination (the secret is on its way out)."""
    max_tools_per_agent: int = 2_000

    def validate(self) -> None:
        require(self.warmup_calls >= 1, "warmup_calls", "must be at least 1")
        require(0.0 < self.usual_share <= 1.0, "usual_share", "must be in (0, 1]")
        require(bool(self.secret_labels), "secret_labels", "must name at least one label")
        for key in ("severity", "outbound_severity"):
            require(getattr(self, key) in SEVERITIES, key, f"must be one of {', '.join(SEVERITIES)}")
        require(self.max_tools_per_agent >= 1, "max_tools_per_agent", "must be at least 1")

    @classmethod
    def from_dict(cls, data: Any, path: str = "secret_args") -> "SecretArgsConfig":
        return load_flat(cls, data, path)


@dataclass(slots=True)
class ToolSecretHistory:
    """Per agent: ``server/tool`` -> [calls, calls with a secret label in args] (LRU-bounded)."""

    tools: OrderedDict[str, list[int]] = field(default_factory=OrderedDict)


def _add_calls(tools: "OrderedDict[str, list[int]]", token: str, n: int) -> None:
    """Count ``n`` more calls of ``token`` in an agent's table, as its most recent tool."""
    have = tools.get(token)
    if have is None:
        tools[token] = [n, 0]
    else:
        tools.move_to_end(token)
        have[0] += n


class SecretArgsDetector(PerAgentDetector[ToolSecretHistory]):
    """Learned per agent×tool: is a secret in this tool's arguments unusual?"""

    name = "secret_args"

    def __init__(self, config: SecretArgsConfig | None = None) -> None:
        super().__init__()
        self.config = config or SecretArgsConfig()
        self.config.validate()
        self._labels = frozenset(self.config.secret_labels)

    def new_state(self) -> ToolSecretHistory:
        return ToolSecretHistory()

    def state_to_dict(self, state: ToolSecretHistory) -> dict[str, Any]:
        return {"tools": [[t, n, s] for t, (n, s) in state.tools.items()]}

    def state_from_dict(self, data: dict[str, Any]) -> ToolSecretHistory:
        return ToolSecretHistory(OrderedDict((str(t), [int(n), int(s)]) for t, n, s in data.get("tools", [])))

    def observe(self, batch: Batch) -> list[Finding]:
        calls = batch.by_time()
        if not calls:
            return []
        if self._labels.isdisjoint(chain.from_iterable(map(_LABELS, calls))) and self._count_known(calls):
            return []
        out: list[Finding] = []
        for call in calls:
            f = self.observe_call(call)
            if f is not None:
                out.append(f)
        return out

    def _count_known(self, calls: list[ToolCall]) -> bool:
        """Count a batch without secrets per (agent, tool) at once; False (nothing changed) if it cannot.

        Without a secret label no call can report, so only the counts and the LRU order move:
        each tool moves to the end in the order of its last call, as call-by-call would. A tool
        new to its agent is added at the end, then moved, as call-by-call does, as long as the
        agent's table has room for every new tool of the batch (call by call adds nothing that
        could be evicted in between). A new agent (its state is made, and so ordered among the
        agents, at its first call) or a table that would have to evict falls back to call-by-call.
        Calls are counted per (agent, token): two (server, tool) pairs with the same ``server/tool``
        token (``a`` + ``b/c``, ``a/b`` + ``c``) add up on the one token, and its last move is at
        the later of their last calls, as call by call.
        """
        # Counted from the last call back, the keys come in the order of their last call, latest
        # first: one pass gives both the counts and the LRU order.
        counts = Counter(map(_KEY, reversed(calls)))
        state = self._state
        limit = self.config.max_tools_per_agent
        tables = {}
        for agent in set(map(_FIRST, counts)):
            st = state.get(agent)
            if st is None:
                return False
            tables[agent] = st.tools
        if max(map(len, tables.values())) + len(counts) <= limit:
            # Room for every tool of the batch in every agent's table: nothing to find out first
            # (which tools are new, per agent), the counts go in at once, in the same order.
            for (agent, token), n in reversed(counts.items()):  # order of last occurrence
                tools = tables[agent]
                _add_calls(tools, token, n)
            return True
        plan = []
        added: dict[str, set[str]] = {}
        for (agent, token), n in reversed(counts.items()):  # order of last occurrence
            st = state.get(agent)
            if st is None:
                return False
            if token not in st.tools:
                added.setdefault(agent, set()).add(token)
            plan.append((st.tools, token, n))
        for agent, tokens in added.items():
            if len(state[agent].tools) + len(tokens) > limit:
                return False
        for tools, token, n in plan:
            _add_calls(tools, token, n)
        return True

    def observe_call(self, call: ToolCall) -> Finding | None:
        cfg = self.config
        hist = self.state_for(call.agent_id).tools
        counts = hist.get(call.token)
        if counts is None:
            counts = hist[call.token] = [0, 0]
            while len(hist) > cfg.max_tools_per_agent:
                hist.popitem(last=False)
        hist.move_to_end(call.token)
        secrets = sorted(self._labels.intersection(call.args_labels))
        calls, with_secret = counts
        finding = None
        if secrets and calls >= cfg.warmup_calls and with_secret < cfg.usual_share * calls:
            finding = self._finding(call, secrets, calls, with_secret)
        counts[0] += 1
        counts[1] += bool(secrets)
        return finding

    def _finding(self, call: ToolCall, secrets: list[str], calls: int, with_secret: int) -> Finding:
        severity = self.config.outbound_severity if call.destinations else self.config.severity
        usual = "never" if not with_secret else f"in {with_secret} of {calls} calls"
        return Finding.about(
            call,
            detector=self.name,
            severity=severity,
            reason=(f"{', '.join(secrets)} in the arguments of {call.token}, whose arguments carried a secret "
                    f"{usual} for this agent before"),
            score=SEVERITY_SCORE[severity],
            evidence={"kind": "unusual_secret_in_args", "labels": secrets, "baseline_calls": calls,
                      "baseline_secret_calls": with_secret, "destinations": list(call.destinations[:10])},
            dedup_key=f"{self.name}:{call.agent_id}:{call.session_id}:{call.token}",
        )
