# Frozen copy of main's detectors/sequence_detector.py (before the novel-token rule and the cached fleet priors),
# with main's sequence.fleet_prior: the A/B reference. Imports made absolute.
"""``SequenceDetector``: flags calls an agent would not make at that point of a session.

Per agent it keeps a ``MarkovModel`` of ``server/tool`` transitions, open-session context and the
usual session length. Each call is scored (surprisal in bits) before it is learned; a call at or
above the threshold is a finding and is not learned, so an attack does not become normal. The
threshold is lower right after a result labelled ``instructions`` (a likely prompt injection):
that is where hijacks start.

Agent states (``agent_states()``, for a Prometheus gauge):

- ``learning``: fewer than ``min_calls`` calls or ``min_sessions`` sessions seen. Findings only
  when a fleet prior exists (mature agents using the same tools); otherwise silent.
- ``active``: scores against its own model (which keeps learning from unflagged calls, with decay).
- ``frozen``: scores, learns nothing (``freeze(agent)`` / ``unfreeze(agent)``).

Memory per agent: the Markov model's bounds (``max_tokens``, ``max_transitions``: ~0.5 MB worst
case at the defaults) plus ``max_open_sessions`` open sessions (~30 KB worst case).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolwatch.detectors.base import PerAgentDetector
from toolwatch.detectors.events import Batch, Finding, ToolCall
from toolwatch.detectors.sequence import LengthStats, MarkovConfig, MarkovModel, containment
from toolwatch.detectors.sessions import START, Session, SessionTracker

__all__ = ["SequenceConfig", "SequenceDetector"]


def fleet_prior(models, config=None):
    """Frozen copy of main's ``sequence.fleet_prior`` (one ``add_scaled`` per member)."""
    prior = MarkovModel(config)
    n = 0
    total = 0.0
    for m in models:
        if m.mass > 0:
            prior.add_scaled(m, 1.0 / m.mass)
            n += 1
            total += m.mass
    if n == 0:
        return None
    prior_scale = total / n / n
    prior.uni = {t: c * prior_scale for t, c in prior.uni.items()}
    prior.bi = {p: {t: c * prior_scale for t, c in r.items()} for p, r in prior.bi.items()}
    prior._recount()
    return prior

LEARNING, ACTIVE, FROZEN = "learning", "active", "frozen"


@dataclass(frozen=True, slots=True)
class SequenceConfig:
    """Settings of ``SequenceDetector`` (YAML section ``detectors.sequence``)."""

    min_calls: int = 150
    min_sessions: int = 10
    threshold_bits: float = 9.0
    after_instructions_bits: float = 5.0
    length_k: float = 3.0
    length_floor: int = 25
    use_fleet_prior: bool = True
    prior_min_containment: float = 0.6
    max_open_sessions: int = 32
    session_idle_s: float = 1800.0
    markov: MarkovConfig = field(default_factory=MarkovConfig)

    def validate(self) -> "SequenceConfig":
        if self.min_calls < 0 or self.min_sessions < 0:
            raise ValueError("sequence.min_calls and sequence.min_sessions must be >= 0")
        if not self.threshold_bits > 0 or not self.after_instructions_bits > 0:
            raise ValueError("sequence.threshold_bits and sequence.after_instructions_bits must be > 0")
        if self.length_floor < 1 or self.length_k <= 0:
            raise ValueError("sequence.length_floor must be >= 1 and sequence.length_k > 0")
        if not 0.0 < self.prior_min_containment <= 1.0:
            raise ValueError("sequence.prior_min_containment must be in (0, 1]")
        if self.max_open_sessions < 1 or self.session_idle_s <= 0:
            raise ValueError("sequence.max_open_sessions must be >= 1 and sequence.session_idle_s > 0")
        self.markov.validate()
        return self


class _Agent:
    """One agent's sequence state."""

    def __init__(self, cfg: SequenceConfig) -> None:
        self.model = MarkovModel(cfg.markov)
        self.sessions = SessionTracker(max_open=cfg.max_open_sessions, idle_s=cfg.session_idle_s)
        self.lengths = LengthStats()
        self.n_calls = 0
        self.n_sessions = 0
        self.mean_bits = 0.0
        self.frozen = False
        self.limit_stale = True
        """``lengths`` changed since ``limit`` was computed."""
        self.limit: float | None = None

    def length_limit(self, k: float, floor: int) -> float | None:
        """Session length above which a session is unusual (``None`` with under 5 sessions seen);
        cached, since it changes only when a session closes."""
        if self.limit_stale:
            self.limit = self.lengths.limit(k, floor) if self.lengths.n >= 5 else None
            self.limit_stale = False
        return self.limit

    def status(self, cfg: SequenceConfig) -> str:
        if self.frozen:
            return FROZEN
        if self.n_calls >= cfg.min_calls and self.n_sessions >= cfg.min_sessions:
            return ACTIVE
        return LEARNING


class SequenceDetector(PerAgentDetector[_Agent]):
    """Per-agent call-sequence baseline; see the module docstring."""

    name = "sequence"

    def __init__(self, config: SequenceConfig | None = None) -> None:
        super().__init__()
        self.config = (config or SequenceConfig()).validate()

    # --- PerAgentDetector ----------------------------------------------------------------------
    def new_state(self) -> _Agent:
        return _Agent(self.config)

    def state_to_dict(self, st: _Agent) -> dict[str, Any]:
        return {
            "model": st.model.to_dict(), "sessions": st.sessions.to_dict(), "lengths": st.lengths.to_dict(),
            "n_calls": st.n_calls, "n_sessions": st.n_sessions, "mean_bits": st.mean_bits, "frozen": st.frozen,
        }

    def state_from_dict(self, d: dict[str, Any]) -> _Agent:
        st = _Agent(self.config)
        st.model = MarkovModel.from_dict(d["model"], self.config.markov)
        st.sessions.load(d["sessions"])
        st.lengths = LengthStats.from_dict(d["lengths"])
        st.n_calls, st.n_sessions = int(d["n_calls"]), int(d["n_sessions"])
        st.mean_bits, st.frozen = float(d["mean_bits"]), bool(d["frozen"])
        return st

    # --- operator controls and gauges ----------------------------------------------------------
    def agent_states(self) -> dict[str, str]:
        """``learning`` / ``active`` / ``frozen`` per agent."""
        return {a: st.status(self.config) for a, st in self._state.items()}

    def freeze(self, agent_id: str) -> None:
        self.state_for(agent_id).frozen = True

    def unfreeze(self, agent_id: str) -> None:
        self.state_for(agent_id).frozen = False

    # --- detection -----------------------------------------------------------------------------
    def observe(self, batch: Batch) -> list[Finding]:
        return self.observe_scored(batch)[0]

    def observe_scored(self, batch: Batch) -> tuple[list[Finding], np.ndarray]:
        """Findings, and per call (aligned with ``batch.calls``) the margin over the threshold in
        bits (> 0 alerts; NaN when the agent is not scored yet): for ROC/PR curves.

        Calls are handled in batch order (a learning agent's fleet prior is read from its peers'
        models as they stand at its first call), in one loop with the Markov lookups and session
        bookkeeping inlined: this runs once per span."""
        cfg = self.config
        calls = batch.calls
        margins: list[float] = []
        findings: list[Finding] = []
        states = self._state
        min_calls, min_sessions = cfg.min_calls, cfg.min_sessions
        mature = [st for st in states.values() if st.status(cfg) != LEARNING]
        use_prior = cfg.use_fleet_prior
        priors: dict[str, tuple[MarkovModel | None, float | None]] = {}
        batch_vocab: dict[str, set[str]] | None = None
        markov = cfg.markov  # every agent's model is built with it (new_state, state_from_dict)
        alpha, beta = markov.alpha, markov.beta
        max_mass, max_tokens, max_transitions = markov.max_mass, markov.max_tokens, markov.max_transitions
        thr_plain, thr_instr = cfg.threshold_bits, cfg.after_instructions_bits
        length_k, length_floor = cfg.length_k, cfg.length_floor
        log2, exp, nan = math.log2, math.exp, math.nan
        for c in calls:
            agent_id = c.agent_id
            st = states.get(agent_id)
            if st is None:
                st = states[agent_id] = self.new_state()
            frozen = st.frozen
            if frozen:
                status = FROZEN
            elif st.n_calls >= min_calls and st.n_sessions >= min_sessions:
                status = ACTIVE
            else:
                status = LEARNING
            prior, peer_limit = None, None
            if status == LEARNING and use_prior:
                got = priors.get(agent_id)
                if got is None:
                    if batch_vocab is None:
                        batch_vocab = {}
                        for x in calls:
                            batch_vocab.setdefault(x.agent_id, set()).add(x.token)
                    got = priors[agent_id] = self._fleet(st.model.vocab | batch_vocab[agent_id],
                                                         [p for p in mature if p is not st])
                prior, peer_limit = got
            # Session context: SessionTracker.touch inlined (same operations).
            tracker = st.sessions
            opened = tracker.open
            t = c.time_ns
            sid = c.session_id
            if opened and t - tracker.floor_ns > tracker.idle_ns:
                closed = tracker.expire(t)
                if closed and not frozen:
                    add_length = st.lengths.add
                    for _sid, old in closed:
                        add_length(old.n)
                    st.limit_stale = True
            s = opened.get(sid)
            if s is None:
                # Sessions this one pushes out close after the idle ones, in the same way (they leave
                # before it is added rather than after: the same ones leave, in the same order). The
                # last to leave becomes the new session: nothing else holds it, and reusing it
                # spares an allocation and a release per new session at high session churn.
                old = None
                while len(opened) >= tracker.max_open:
                    old = opened.popitem(False)[1]
                    if not frozen:
                        st.lengths.add(old.n)
                        st.limit_stale = True
                if old is None:
                    s = Session(START, 0, t, t, 0, 0.0, False, False, [], {})
                else:
                    s = old
                    s.reset(t)
                opened[sid] = s
                if t < tracker.floor_ns:
                    tracker.floor_ns = t
            else:
                opened.move_to_end(sid)
            n_in = s.n
            if n_in == 0:
                st.n_sessions += 1
            server = c.server
            token = server + "/" + c.tool if server else c.tool
            prev = s.prev
            scored = status != LEARNING or prior is not None
            model = st.model
            uni = model.uni
            row = model.bi.get(prev)
            if prior is None:
                # MarkovModel.prob without a prior, inlined (same operations, same rounding); the
                # counts read here are the ones learning below adds to (nothing changes in between).
                n_tok = uni.get(token, 0.0)
                p1 = (n_tok + beta * (1.0 / (len(uni) + 1))) / (model.mass + beta)
                n_pt = row.get(token) if row is not None else None
                n_out = model.out.get(prev, 0.0)
                bits = -log2(((0.0 if n_pt is None else n_pt) + alpha * p1) / (n_out + alpha))
            else:
                n_tok, n_pt, n_out = uni.get(token, 0.0), row.get(token) if row is not None else None, None
                bits = model.surprisal(prev, token, prior)
            after_instr = s.prev_instructions
            thr = thr_instr if after_instr else thr_plain
            flagged = scored and bits >= thr
            if flagged:
                findings.append(self._transition_finding(st, c, prev, bits, thr, after_instr, status, prior))
            # SessionTracker.advance inlined.
            if n_in:
                d_ns = t - s.last_ns
                s.rate = s.rate * exp(-(d_ns if d_ns > 0 else 0) / 1e9 / tracker.rate_window_s) + 1.0
            else:
                s.rate = s.rate * 0.0 + 1.0
            s.prev = token
            s.n = n_in + 1
            if t > s.last_ns:
                s.last_ns = t
            if c.error_type:
                s.errors += 1
            labels = c.result_labels
            s.prev_instructions = c.result_injection_score >= 0.5 or (bool(labels) and "instructions" in labels)
            servers = s.servers
            if server not in servers and len(servers) < tracker.max_servers:
                servers.append(server)
            if c.result_fingerprints:
                tracker.remember_fps(s, c.result_fingerprints, server)
            if scored and not s.flagged_length and s.n > length_floor:  # every limit is >= the floor
                limit = st.length_limit(length_k, length_floor)
                if limit is None and prior is not None:
                    limit = peer_limit
                if limit is not None and s.n > limit:
                    s.flagged_length = True
                    findings.append(self._length_finding(st, c, s.n, limit, status))
            st.n_calls += 1
            if not flagged and not frozen:
                # MarkovModel.learn(prev, token) inlined (same operations, same order), on the
                # counts looked up for scoring.
                uni[token] = n_tok + 1.0
                if row is None:
                    row = model.bi[prev] = {}
                if n_pt is None:
                    model.n_transitions += 1
                    row[token] = 1.0
                else:
                    row[token] = n_pt + 1.0
                out = model.out
                if n_out is None:
                    n_out = out.get(prev, 0.0)
                out[prev] = n_out + 1.0
                model.mass += 1.0
                if model.mass > max_mass:
                    model._scale(0.5)
                if len(model.uni) > max_tokens or model.n_transitions > max_transitions:
                    model._prune()
                n = st.n_calls
                st.mean_bits += (bits - st.mean_bits) / (n if n < 500 else 500)
            margins.append((bits - thr) if scored else nan)
        return findings, np.array(margins, dtype=np.float64)

    def _fleet(self, vocab: set[str], peers: list[_Agent]) -> tuple[MarkovModel | None, float | None]:
        """Fleet prior for a learning agent: the sequence models of mature agents that use its
        tools, and the median of their session-length limits."""
        cfg = self.config
        if not vocab:
            return None, None
        similar = [p for p in peers if containment(vocab, p.model.vocab) >= cfg.prior_min_containment]
        limits = [p.lengths.limit(cfg.length_k, cfg.length_floor) for p in similar if p.lengths.n >= 5]
        return fleet_prior((p.model for p in similar), cfg.markov), (float(np.median(limits)) if limits else None)

    def _transition_finding(self, st: _Agent, c: ToolCall, prev: str, bits: float, thr: float,
                            after_instr: bool, status: str, prior: MarkovModel | None) -> Finding:
        unseen = c.token not in st.model.uni and (prior is None or c.token not in prior.uni)
        what = "never-seen tool" if unseen else "unusual next tool"
        ctx = " right after a result that addressed the model" if after_instr else ""
        return Finding.about(
            c,
            detector=self.name,
            severity="high" if after_instr or bits >= thr + 5 else "medium",
            reason=(f"{what} {c.token} after {prev}{ctx}: {bits:.1f} bits of surprise "
                    f"(threshold {thr:g}, usual {st.mean_bits:.1f})"),
            score=round(bits, 4),
            evidence={
                "explanation": [{"feature": "surprisal", "observed": round(bits, 4),
                                 "baseline": round(st.mean_bits, 4), "contribution": 1.0}],
                "previous": prev,
                "expected_next": st.model.expected(prev) or (prior.expected(prev) if prior else []),
                "unseen_tool": unseen,
                "after_instructions": after_instr,
                "state": status,
                "basis": "fleet_prior" if prior is not None else "agent",
            },
            dedup_key=f"{self.name}:{c.agent_id}:{c.session_id}",
        )

    def _length_finding(self, st: _Agent, c: ToolCall, n: int, limit: float, status: str) -> Finding:
        usual = math.expm1(st.lengths.mean)
        return Finding.about(
            c,
            detector=self.name,
            severity="medium",
            reason=f"session {c.session_id} reached {n} calls; usual length is about {usual:.0f} (limit {limit:.0f})",
            score=float(n),
            evidence={
                "explanation": [{"feature": "session_length", "observed": n, "baseline": round(usual, 2),
                                 "contribution": 1.0}],
                "state": status,
            },
            dedup_key=f"{self.name}:{c.agent_id}:{c.session_id}:length",
        )
