# Frozen copy of main's detectors/new_tool.py (54230ad): the A/B reference. Imports made absolute.
"""First use of a tool by an agent that has an established baseline.

The simplest certain signal: an agent that has made ``min_calls`` calls and never used
``server/tool`` suddenly does. Each new tool alerts once, then joins the baseline.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from toolwatch.detectors.base import PerAgentDetector
from toolwatch.detectors.events import Batch, Finding


@dataclass
class NewToolConfig:
    min_calls: int = 50
    """Calls an agent must have made before a new tool is news (learning period)."""
    max_tools: int = 5000
    """Tools remembered per agent (memory bound); beyond it new tools are not learned."""
    severity: str = "medium"

    def validate(self) -> None:
        if self.min_calls < 0:
            raise ValueError("detectors.new_tool.min_calls must not be negative")
        if self.max_tools < 1:
            raise ValueError("detectors.new_tool.max_tools must be at least 1")


@dataclass
class _AgentTools:
    calls: int
    tools: set[str]


_AGENT = attrgetter("agent_id")
_TRIPLE = attrgetter("agent_id", "server", "tool")


class NewToolDetector(PerAgentDetector[_AgentTools]):
    """Once per batch: if every (agent, server, tool) is already known, only call counts change.

    ``_known`` caches (agent, server, tool) triples whose token is in the agent's tool set (a set
    only grows, so the cache stays true until state is restored or dropped, which clears it).
    """

    name = "new_tool"

    def __init__(self, config: NewToolConfig | None = None) -> None:
        super().__init__()
        self.config = config or NewToolConfig()
        self.config.validate()
        self._known: set[tuple[str, str, str]] = set()  # derived from state; not state itself

    def new_state(self) -> _AgentTools:
        return _AgentTools(0, set())

    def state_to_dict(self, state: _AgentTools) -> dict[str, Any]:
        return {"calls": state.calls, "tools": sorted(state.tools)}

    def state_from_dict(self, data: dict[str, Any]) -> _AgentTools:
        return _AgentTools(int(data.get("calls", 0)), set(map(str, data.get("tools", []))))

    def agent_state(self, agent_id: str) -> str:
        st = self._state.get(agent_id)
        return "active" if st is not None and st.calls >= self.config.min_calls else "learning"

    def restore(self, state: dict[str, Any]) -> None:
        self._known.clear()
        super().restore(state)

    def restore_agent(self, agent_id: str, state: dict[str, Any]) -> None:
        self._known.clear()
        super().restore_agent(agent_id, state)

    def drop_agent(self, agent_id: str) -> None:
        self._known.clear()
        super().drop_agent(agent_id)

    def observe(self, batch: Batch) -> list[Finding]:
        calls = batch.calls
        if not calls:
            return []
        if self._known.issuperset(map(_TRIPLE, calls)):
            # Every tool of every agent is known: nothing to report, only the call counts move.
            state = self._state
            for agent, n in Counter(map(_AGENT, calls)).items():
                state[agent].calls += n
            return []
        return self._observe_calls(calls)

    def _observe_calls(self, calls: list[Any]) -> list[Finding]:
        """Call by call, in order: the batch holds at least one tool some agent has not used yet."""
        out: list[Finding] = []
        cfg = self.config
        known = self._known
        if len(known) > 1_000_000:  # bounded cache
            known.clear()
        for call in calls:
            st = self.state_for(call.agent_id)
            token = call.token
            if token not in st.tools:
                if st.calls >= cfg.min_calls:
                    out.append(
                        Finding(
                            detector=self.name,
                            severity=cfg.severity,
                            agent_id=call.agent_id,
                            session_id=call.session_id,
                            server=call.server,
                            tool=call.tool,
                            time_ns=call.time_ns,
                            span_ids=(call.span_id,),
                            trace_ids=(call.trace_id,),
                            score=1.0,
                            reason=(
                                f"agent {call.agent_id} called {token} for the first time after "
                                f"{st.calls} calls to {len(st.tools)} other tools"
                            ),
                            evidence={"known_tools": len(st.tools), "baseline_calls": st.calls},
                            dedup_key=f"{self.name}:{call.agent_id}:{token}",
                        )
                    )
                if len(st.tools) < cfg.max_tools:
                    st.tools.add(token)
                    known.add((call.agent_id, call.server, call.tool))
            else:
                known.add((call.agent_id, call.server, call.tool))
            st.calls += 1
        return out
