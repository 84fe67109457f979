"""``SequenceDetector``: flags calls an agent would not make at that point of a session.

Per agent it keeps a ``MarkovModel`` of ``server/tool`` transitions, open-session context and the
usual session length. Each call is scored (surprisal in bits) before it is learned; a call at or
above the threshold is a finding and is not learned, so an attack does not become normal. The
threshold is lower right after a result labelled ``instructions`` (a likely prompt injection):
that is where hijacks start.

Never-seen tools: an unseen tool's surprisal grows with the model's mass, so a tool the agent first
meets while it is scored would, never being learned, be flagged on every call for good. Instead
its findings share one dedup key per agent and tool (one alert while it recurs within the alert
grouping window), and it is learned (the transitions into it that were flagged) at its first call
in a new session once it has recurred in ``learn_novel_sessions`` distinct sessions that have ended
(idle for ``session_idle_s`` or pushed out) without raising another finding, and where it did not
follow an ``instructions`` result. Only an ended session vouches: an open one may still raise a
finding, and learning cannot be taken back. A frozen agent learns none.

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
from itertools import compress
from operator import attrgetter, is_
from statistics import median
from typing import Any

import numpy as np

from .base import PerAgentDetector
from .events import Batch, Finding, ToolCall
from .sequence import LengthStats, MarkovConfig, MarkovModel, fleet_prior
from .sessions import START, Session, SessionTracker

__all__ = ["SequenceConfig", "SequenceDetector"]

LEARNING, ACTIVE, FROZEN = "learning", "active", "frozen"

_TOKENS_MAX = 4096
"""Distinct tokens ``SequenceDetector._tokens`` holds before it starts over (a bound against
endless made-up tool names; starting over costs speed only)."""

_agent_id = attrgetter("agent_id")


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
    learn_novel_sessions: int = 10
    """A never-seen tool is learned once it has recurred in this many distinct sessions that ended
    without another finding (0: never, every call of it stays a finding)."""
    max_novel_tools: int = 32
    """Never-seen tools waiting to be learned, per agent (the oldest is forgotten first)."""
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
        if self.learn_novel_sessions < 0 or self.max_novel_tools < 1:
            raise ValueError("sequence.learn_novel_sessions must be >= 0 and sequence.max_novel_tools >= 1")
        self.markov.validate()
        return self


@dataclass(slots=True)
class _Novel:
    """A never-seen tool waiting to be learned: the clean sessions it was seen in (in order) and
    the flagged transitions into it (previous token -> count), learned when it is accepted."""

    sessions: dict[str, None] = field(default_factory=dict)
    """Sessions it was called in that have raised no other finding so far (open or ended)."""
    prevs: dict[str, float] = field(default_factory=dict)

    def ended(self, open_sessions: dict[str, Session]) -> int:
        """How many of ``sessions`` have ended (are no longer open): only those vouch for the tool,
        since an open session may still raise another finding."""
        return sum(1 for sid in self.sessions if sid not in open_sessions)


class _Agent:
    """One agent's sequence state."""

    def __init__(self, cfg: SequenceConfig) -> None:
        self.model = MarkovModel(cfg.markov)
        self.sessions = self.new_tracker(cfg)
        self.lengths = LengthStats()
        self.n_calls = 0
        self.n_sessions = 0
        self.mean_bits = 0.0
        self.frozen = False
        self.limit_stale = True
        """``lengths`` changed since ``limit`` was computed."""
        self.limit: float | None = None
        self.novel: dict[str, _Novel] = {}
        """Never-seen tools flagged and not yet learned (at most ``max_novel_tools``)."""
        self.dirty: dict[str, None] = {}
        """Recent sessions that raised a finding other than a never-seen tool (bounded): they do not
        count towards learning a never-seen tool."""

    @staticmethod
    def new_tracker(cfg: SequenceConfig) -> SessionTracker:
        """An agent's session tracker (one place, so the batch loop may read its settings from any)."""
        return SessionTracker(max_open=cfg.max_open_sessions, idle_s=cfg.session_idle_s)

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


@dataclass(slots=True)
class _PeerCache:
    """Which mature agents make the fleet prior of a given vocabulary: containment against every
    peer is computed once per vocabulary, not per learning agent and batch. Valid for one list of
    mature agents (the same objects, in order) and one vocabulary epoch."""

    mature: list[_Agent] = field(default_factory=list)
    epoch: int = -1
    vocabs: list[tuple[_Agent, frozenset[str]]] | None = None
    similar: dict[frozenset[str], tuple[list[_Agent], list[MarkovModel]]] = field(default_factory=dict)
    """Per vocabulary, the peers whose models make its prior, and their models."""

    def check_mature(self, mature: list[_Agent], need: float) -> None:
        """Follow a change of the mature agents (once per batch). Agents only joining (the usual
        change: learning agents mature) keep every selection none of them qualifies for (``need``:
        the containment that qualifies); any other change forgets everything."""
        old = self.mature
        if len(old) == len(mature) and all(map(is_, old, mature)):
            self.mature = mature
            return
        vocabs = self.vocabs
        joined = _joined(old, mature) if vocabs is not None else None
        self.mature = mature
        if joined is None:
            self.vocabs, self.similar = None, {}
            return
        new = {a: frozenset(a.model.vocab) for a in joined}
        known = dict(vocabs)
        known.update(new)
        self.vocabs = [(a, known[a]) for a in mature]
        # A selection lists its qualifying peers in mature order: one a joiner qualifies for must
        # be made again (when next asked for); the others stand as they are.
        added = list(new.values())
        self.similar = {v: got for v, got in self.similar.items()
                        if not any(len(v & w) / len(v) >= need for w in added)}

    def check_epoch(self, epoch: int) -> None:
        """Forget the vocabularies and selections if any mature agent's vocabulary changed."""
        if epoch != self.epoch:
            self.epoch, self.vocabs, self.similar = epoch, None, {}


def _learners_calls(calls: list[ToolCall], states: dict[str, _Agent], min_calls: int,
                    min_sessions: int) -> dict[str, list[ToolCall]]:
    """Per agent of ``calls`` learning (or new) now, its calls in order. Made at the first call of
    the batch that needs a fleet prior: every agent with a call before it is mature (a learning
    one would have needed its prior there), and an agent's status changes only at its own calls,
    so each agent that needs its prior later in the batch is learning now. Mature agents' calls
    (most, once a fleet has settled) are only passed over."""
    ids = list(map(_agent_id, calls))
    learning: set[str] = set()
    for a in set(ids):
        st = states.get(a)
        # _Agent.status(cfg) == LEARNING, inlined.
        if st is None or not (st.frozen or (st.n_calls >= min_calls and st.n_sessions >= min_sessions)):
            learning.add(a)
    own_of: dict[str, list[ToolCall]] = {}
    for x in compress(calls, map(learning.__contains__, ids)):
        own = own_of.get(x.agent_id)
        if own is None:
            own_of[x.agent_id] = [x]
        else:
            own.append(x)
    return own_of


def _reachable_prevs(tracker: SessionTracker, own: list[ToolCall]) -> set[str]:
    """Every previous token an agent's calls in one batch (``own``, in order) can be scored
    after, from its sessions as they stand before the first:
    the open session's last token at a session's first call here, the session's call before it
    here at the next ones, and ``START`` if any session may begin anew (a session not open, or
    sessions idling out: the only ways one ends). Its fleet prior builds just these rows."""
    opened = tracker.open
    floor, idle = tracker.floor_ns, tracker.idle_ns
    last: dict[str, str] = {}
    prevs: set[str] = set()
    start = not opened
    for c in own:
        sid, t = c.session_id, c.time_ns
        p = last.get(sid)
        if p is None:
            s = opened.get(sid)
            if s is None:
                start = True  # a new session; it may push an open one out, which then begins anew
            else:
                prevs.add(s.prev)
        else:
            prevs.add(p)
        last[sid] = c.token
        if t - floor > idle:
            start = True
    if start:
        prevs.add(START)
    return prevs


def _keeps_own_limit(lengths: LengthStats) -> bool:
    """Whether an agent has its own session-length limit now and at every later call: it has one
    once its decayed count of ended sessions ``n`` reaches 5 (``_Agent.length_limit``; at the
    sixth), and ``n`` then never falls back under 5
    (``n * decay + 1 >= 5`` for ``n >= 5`` when ``decay >= 0.8``). A learning agent for which this
    holds never reads its peers' limit, so its fleet prior does not work it out (a list and a
    median over its peers per learning agent and batch)."""
    return lengths.n >= 5 and lengths.decay >= 0.8


def _joined(old: list[_Agent], new: list[_Agent]) -> list[_Agent] | None:
    """The agents of ``new`` not in ``old`` if ``old`` is ``new`` with them left out (same objects,
    same order), else ``None``."""
    joined: list[_Agent] = []
    i, n = 0, len(old)
    for a in new:
        if i < n and a is old[i]:
            i += 1
        else:
            joined.append(a)
    return joined if i == n else None


class SequenceDetector(PerAgentDetector[_Agent]):
    """Per-agent call-sequence baseline; see the module docstring."""

    name = "sequence"

    def __init__(self, config: SequenceConfig | None = None) -> None:
        super().__init__()
        self.config = (config or SequenceConfig()).validate()
        self._vocab_epoch = 0
        """Bumped whenever a non-learning agent's vocabulary may have changed (a token learned or
        dropped): the peer selections below are valid while it stands still."""
        self._peers = _PeerCache()
        self._session_rules = _Agent.new_tracker(self.config)
        """A tracker made as every agent's is: the settings the batch loop reads once per batch."""
        self._tokens: dict[str, str] = {}
        """One string object per token, used for every token this detector stores or looks up:
        the models' keys are then those objects, and a lookup matches a key by identity instead of
        comparing it character by character with a string somewhere in memory (each key of each
        agent a likely cache miss). The same strings, so the same keys, values and order."""

    # --- PerAgentDetector ----------------------------------------------------------------------
    def new_state(self) -> _Agent:
        return _Agent(self.config)

    def state_to_dict(self, st: _Agent) -> dict[str, Any]:
        return {
            "model": st.model.to_dict(), "sessions": st.sessions.to_dict(), "lengths": st.lengths.to_dict(),
            "n_calls": st.n_calls, "n_sessions": st.n_sessions, "mean_bits": st.mean_bits, "frozen": st.frozen,
            "novel": {t: {"sessions": list(r.sessions), "prevs": dict(r.prevs)} for t, r in st.novel.items()},
            "dirty": list(st.dirty),
        }

    def state_from_dict(self, d: dict[str, Any]) -> _Agent:
        st = _Agent(self.config)
        st.model = MarkovModel.from_dict(d["model"], self.config.markov)
        st.sessions.load(d["sessions"])
        st.lengths = LengthStats.from_dict(d["lengths"])
        st.n_calls, st.n_sessions = int(d["n_calls"]), int(d["n_sessions"])
        st.mean_bits, st.frozen = float(d["mean_bits"]), bool(d["frozen"])
        st.novel = {str(t): _Novel(dict.fromkeys(map(str, r["sessions"])),
                                   {str(p): float(c) for p, c in r["prevs"].items()})
                    for t, r in d.get("novel", {}).items()}
        st.dirty = dict.fromkeys(map(str, d.get("dirty", ())))
        self._own_tokens(st)
        return st

    def _token(self, token: str) -> str:
        """This detector's object for ``token`` (see ``_tokens``)."""
        tokens = self._tokens
        same = tokens.get(token)
        if same is None:
            if len(tokens) >= _TOKENS_MAX:
                tokens.clear()
            tokens[token] = same = token
        return same

    def _own_tokens(self, st: _Agent) -> None:
        """Key a loaded agent's model, sessions and never-seen tools with this detector's token
        objects (``_tokens``): the same keys in the same order with the same values."""
        tok = self._token
        m = st.model
        m.uni = {tok(t): c for t, c in m.uni.items()}
        m.bi = {tok(p): {tok(t): c for t, c in row.items()} for p, row in m.bi.items()}
        m.out = {tok(p): c for p, c in m.out.items()}
        for s in st.sessions.open.values():
            s.prev = tok(s.prev)
        st.novel = {tok(t): _Novel(r.sessions, {tok(p): c for p, c in r.prevs.items()}) for t, r in st.novel.items()}

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
        """``observe_scored``'s findings, without the margins (the daemon reads none: building
        them was a list append per span and an array per batch)."""
        return self._observe(batch, with_margins=False)[0]

    def observe_scored(self, batch: Batch) -> tuple[list[Finding], np.ndarray]:
        """Findings, and per call (aligned with ``batch.calls``) the margin over the threshold in
        bits (> 0 alerts; NaN when the agent is not scored yet): for ROC/PR curves.

        Calls are handled in batch order (a learning agent's fleet prior is read from its peers'
        models as they stand at its first call), in one loop with the Markov lookups and session
        bookkeeping inlined: this runs once per span."""
        return self._observe(batch, with_margins=True)

    def _observe(self, batch: Batch, with_margins: bool) -> tuple[list[Finding], np.ndarray]:
        """``observe_scored``; without ``with_margins`` the margins returned are empty (findings and
        state are the same either way: margins are only read off the loop's values)."""
        cfg = self.config
        calls = batch.calls
        margins: list[float] = []
        findings: list[Finding] = []
        states = self._state
        min_calls, min_sessions = cfg.min_calls, cfg.min_sessions
        use_prior = cfg.use_fleet_prior
        mature: list[_Agent] = []
        if use_prior:
            # _Agent.status(cfg) != LEARNING, inlined (once per agent and batch).
            mature = [st for st in states.values()
                      if st.frozen or (st.n_calls >= min_calls and st.n_sessions >= min_sessions)]
            self._peers.check_mature(mature, cfg.prior_min_containment)
        priors: dict[str, tuple[MarkovModel | None, float | None]] = {}
        batch_ctx: dict[str, list[ToolCall]] | None = None
        """Per learning agent, its calls in this batch, for its fleet prior (``_learners_calls``)."""
        markov = cfg.markov  # every agent's model is built with it (new_state, state_from_dict)
        alpha, beta, prior_weight = markov.alpha, markov.beta, markov.prior_weight
        max_mass, max_tokens, max_transitions = markov.max_mass, markov.max_tokens, markov.max_transitions
        thr_plain, thr_instr = cfg.threshold_bits, cfg.after_instructions_bits
        learn_novel = cfg.learn_novel_sessions
        length_k, length_floor = cfg.length_k, cfg.length_floor
        log2, exp, nan = math.log2, math.exp, math.nan
        same_tokens = self._tokens
        # Every agent's tracker is made with the same settings (_Agent; load keeps them).
        rules = self._session_rules
        idle_ns, max_open, rate_window_s, max_servers = rules.idle_ns, rules.max_open, rules.rate_window_s, rules.max_servers
        for c in calls:
            token = c.token
            # self._token(c.token), inlined.
            same = same_tokens.get(token)
            if same is None:
                if len(same_tokens) >= _TOKENS_MAX:
                    same_tokens.clear()
                same_tokens[token] = token
            else:
                token = same
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
                    if batch_ctx is None:
                        batch_ctx = _learners_calls(calls, states, min_calls, min_sessions)
                    own = batch_ctx[agent_id]
                    # frozenset(st.model.vocab | own tokens), without the set made for model.vocab.
                    own_toks = [x.token for x in own]
                    vocab = frozenset(st.model.uni).union(own_toks)
                    if START in vocab and START not in own_toks:
                        vocab = vocab - {START}
                    got = priors[agent_id] = self._fleet(vocab, mature, st, _reachable_prevs(st.sessions, own))
                prior, peer_limit = got
            # Session context: SessionTracker.touch inlined (same operations).
            tracker = st.sessions
            opened = tracker.open
            t = c.time_ns
            sid = c.session_id
            if opened and t - tracker.floor_ns > idle_ns:
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
                while len(opened) >= max_open:
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
            prev = s.prev
            scored = status != LEARNING or prior is not None
            model = st.model
            novel = st.novel
            if novel and not frozen:
                rec = novel.get(token)
                if (rec is not None and sid not in rec.sessions and len(rec.sessions) >= learn_novel
                        and rec.ended(opened) >= learn_novel):
                    self._accept(st, token, rec)
            uni = model.uni
            row = model.bi.get(prev)
            mass = model.mass
            n_out = model.out.get(prev, 0.0)
            if prior is None:
                # MarkovModel.prob without a prior, inlined (same operations, same rounding); the
                # counts read here are the ones learning below adds to (nothing changes in between).
                n_tok = uni.get(token, 0.0)
                p1 = (n_tok + beta * (1.0 / (len(uni) + 1))) / (mass + beta)
                n_pt = row.get(token) if row is not None else None
                bits = -log2(((0.0 if n_pt is None else n_pt) + alpha * p1) / (n_out + alpha))
            else:
                # MarkovModel.surprisal(prev, token, prior) inlined: the prior's own P1 and P2 (it
                # has no prior: weight 0), then the agent's; the same operations in the same order.
                n_tok = uni.get(token, 0.0)
                n_pt = row.get(token) if row is not None else None
                p_uni = prior.uni
                base = (p_uni.get(token, 0.0) + beta * (1.0 / (len(p_uni) + 1))) / (prior.mass + beta)
                p_row = prior.row(prev)
                q = (((p_row.get(token, 0.0) if p_row else 0.0) + 0.0 * 0.0 + alpha * base)
                     / (prior.out.get(prev, 0.0) + 0.0 + alpha))
                p1 = (n_tok + beta * base) / (mass + beta)
                bits = -log2(((0.0 if n_pt is None else n_pt) + prior_weight * q + alpha * p1)
                             / (n_out + prior_weight + alpha))
            after_instr = s.prev_instructions
            thr = thr_instr if after_instr else thr_plain
            flagged = scored and bits >= thr
            if flagged:
                unseen = n_tok == 0.0 and (prior is None or token not in prior.uni)
                rec = self._note_novel(st, token, prev, sid, after_instr) if unseen and not frozen else None
                if not unseen or after_instr:
                    self._dirty(st, sid)
                findings.append(self._transition_finding(st, c, prev, bits, thr, after_instr, status, prior, rec))
            # SessionTracker.advance inlined.
            if n_in:
                d_ns = t - s.last_ns
                s.rate = s.rate * exp(-(d_ns if d_ns > 0 else 0) / 1e9 / rate_window_s) + 1.0
            else:
                s.rate = s.rate * 0.0 + 1.0
            s.prev = token
            s.n = n_now = n_in + 1
            if t > s.last_ns:
                s.last_ns = t
            if c.error_type:
                s.errors += 1
            labels = c.result_labels
            s.prev_instructions = c.result_injection_score >= 0.5 or (bool(labels) and "instructions" in labels)
            servers = s.servers
            if server not in servers and len(servers) < max_servers:
                servers.append(server)
            if c.result_fingerprints:
                tracker.remember_fps(s, c.result_fingerprints, server)
            if scored and not s.flagged_length and n_now > length_floor:  # every limit is >= the floor
                # st.length_limit(length_k, length_floor), its cached value read inline.
                limit = st.length_limit(length_k, length_floor) if st.limit_stale else st.limit
                if limit is None and prior is not None:
                    limit = peer_limit
                if limit is not None and n_now > limit:
                    s.flagged_length = True
                    self._dirty(st, sid)
                    findings.append(self._length_finding(st, c, n_now, limit, status))
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
                model.out[prev] = n_out + 1.0
                mass += 1.0
                model.mass = mass
                if n_tok == 0.0 and status != LEARNING:
                    self._vocab_epoch += 1
                if mass > max_mass:
                    model._scale(0.5)
                    self._vocab_epoch += 1
                if len(model.uni) > max_tokens or model.n_transitions > max_transitions:
                    model._prune()
                    self._vocab_epoch += 1
                n = st.n_calls
                st.mean_bits += (bits - st.mean_bits) / (n if n < 500 else 500)
                if novel and n_tok == 0.0:
                    novel.pop(token, None)  # learned the ordinary way (e.g. a prior now holds it)
            if with_margins:
                margins.append((bits - thr) if scored else nan)
        return findings, np.array(margins, dtype=np.float64)

    def _fleet(self, vocab: frozenset[str], mature: list[_Agent], st: _Agent,
               prevs: set[str]) -> tuple[MarkovModel | None, float | None]:
        """Fleet prior for learning agent ``st``: the sequence models of mature agents that use its
        tools, and the median of their session-length limits. Which agents those are is cached
        (``_PeerCache``); the prior itself is built from their models as they stand now, with the
        transition rows of ``prevs`` only (the previous tokens it will be read at)."""
        cfg = self.config
        if not vocab:
            return None, None
        cache = self._peers
        cache.check_epoch(self._vocab_epoch)
        got = cache.similar.get(vocab)
        if got is None:
            if cache.vocabs is None:
                cache.vocabs = [(p, frozenset(p.model.vocab)) for p in mature]
            need, size = cfg.prior_min_containment, len(vocab)
            similar = [p for p, v in cache.vocabs if len(vocab & v) / size >= need]
            got = cache.similar[vocab] = (similar, [p.model for p in similar])
        similar, models = got
        if st in similar:  # never, in practice: a learning agent is not mature
            similar = [p for p in similar if p is not st]
            models = [p.model for p in similar]
        prior = fleet_prior(models, cfg.markov, rows=prevs)
        if _keeps_own_limit(st.lengths):
            return prior, None  # the peers' limit would never be read this batch
        limits = [p.length_limit(cfg.length_k, cfg.length_floor) for p in similar if p.lengths.n >= 5]
        # statistics.median: the same value as np.median ((a + b) / 2 of the middle pair), without an array.
        return prior, (float(median(limits)) if limits else None)

    def _note_novel(self, st: _Agent, token: str, prev: str, sid: str, after_instr: bool) -> _Novel | None:
        """Remember a flagged call of a never-seen tool: the transition into it, and its session
        if that raised no other finding (``None`` when never-seen tools are never learned)."""
        cfg = self.config
        if cfg.learn_novel_sessions <= 0:
            return None
        novel = st.novel
        rec = novel.get(token)
        if rec is None:
            while len(novel) >= cfg.max_novel_tools:
                del novel[next(iter(novel))]
            rec = novel[token] = _Novel()
        if prev in rec.prevs or len(rec.prevs) < cfg.markov.max_tokens:
            rec.prevs[prev] = rec.prevs.get(prev, 0.0) + 1.0
        if not after_instr and sid not in st.dirty:
            rec.sessions[sid] = None
        return rec

    def _dirty(self, st: _Agent, sid: str) -> None:
        """Session ``sid`` raised a finding other than a never-seen tool: it vouches for no tool."""
        dirty = st.dirty
        dirty[sid] = None
        if len(dirty) > 4 * self.config.max_open_sessions:
            del dirty[next(iter(dirty))]
        for rec in st.novel.values():
            rec.sessions.pop(sid, None)

    def _accept(self, st: _Agent, token: str, rec: _Novel) -> None:
        """Learn a never-seen tool that recurred in enough sessions that ended clean: the flagged transitions
        into it, with their counts."""
        del st.novel[token]
        self._vocab_epoch += 1
        for prev, n in rec.prevs.items():
            st.model.learn(prev, token, n)

    def _transition_finding(self, st: _Agent, c: ToolCall, prev: str, bits: float, thr: float,
                            after_instr: bool, status: str, prior: MarkovModel | None,
                            novel: _Novel | None = None) -> Finding:
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
                **({"clean_sessions": novel.ended(st.sessions.open),
                    "learned_after_sessions": self.config.learn_novel_sessions}
                   if novel is not None else {}),
            },
            # A never-seen tool recurs in many sessions until it is learned: one alert per agent and tool.
            dedup_key=(f"{self.name}:{c.agent_id}:novel:{c.token}" if unseen
                       else f"{self.name}:{c.agent_id}:{c.session_id}"),
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
