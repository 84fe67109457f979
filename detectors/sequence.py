"""Per-agent call-sequence baseline: a smoothed first-order Markov model over ``server/tool`` tokens.

Why a bigram model: MCP sessions are short (a few to a few dozen calls) and per-agent data is
small, so a model with few parameters that backs off gracefully beats anything deeper.

Probability of token ``t`` after ``p`` (counts are decayed floats)::

    P1(t)   = (c(t) + beta * base(t)) / (N + beta)              base = fleet prior unigram, else 1/(V+1)
    P2(t|p) = (c(p,t) + w * Q(t|p) + alpha * P1(t)) / (c(p) + w + alpha)

where ``Q`` is the fleet prior's own ``P2`` and ``w`` its weight (0 without a prior). Surprisal is
``-log2 P2`` in bits: an unseen transition costs roughly ``log2((c(p)+alpha)/(alpha*P1(t)))`` and an
unseen tool more, since ``P1`` gives it only ``beta/(V+1)`` of one count.

Decay and memory: when the total count mass exceeds ``max_mass`` every count is halved and counts
under ``min_count`` are dropped, so the model weights recent behaviour and forgets stale habits.
At most ``max_tokens`` tokens and ``max_transitions`` transitions are kept (smallest dropped
first): about 100 bytes per transition, i.e. under 0.5 MB per agent at the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from .sessions import START

__all__ = ["MarkovConfig", "MarkovModel", "LengthStats", "fleet_prior", "containment", "select_prior"]


@dataclass(frozen=True, slots=True)
class MarkovConfig:
    """Smoothing and memory bounds of one agent's sequence model."""

    alpha: float = 2.0
    beta: float = 1.0
    prior_weight: float = 10.0
    max_mass: float = 20_000.0
    min_count: float = 0.25
    max_tokens: int = 256
    max_transitions: int = 4096

    def validate(self) -> None:
        for name in ("alpha", "beta", "max_mass", "min_count"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sequence.{name} must be > 0 (got {getattr(self, name)!r})")
        if self.prior_weight < 0:
            raise ValueError(f"sequence.prior_weight must be >= 0 (got {self.prior_weight!r})")
        if self.max_tokens < 2 or self.max_transitions < 2:
            raise ValueError("sequence.max_tokens and sequence.max_transitions must be >= 2")


class MarkovModel:
    """Counts of tokens and transitions for one agent (or a fleet prior)."""

    def __init__(self, config: MarkovConfig | None = None) -> None:
        self.config = config or MarkovConfig()
        self.uni: dict[str, float] = {}
        self.bi: dict[str, dict[str, float]] = {}
        self.out: dict[str, float] = {}
        """Total count leaving each previous token."""
        self.mass = 0.0
        self.n_transitions = 0

    # --- scoring -------------------------------------------------------------------------------
    def p_unigram(self, tok: str, prior: "MarkovModel | None" = None) -> float:
        cfg = self.config
        if prior is not None and prior.mass > 0:
            base = prior.p_unigram(tok)
        else:
            base = 1.0 / (len(self.uni) + 1)
        return (self.uni.get(tok, 0.0) + cfg.beta * base) / (self.mass + cfg.beta)

    def prob(self, prev: str, tok: str, prior: "MarkovModel | None" = None) -> float:
        cfg = self.config
        p1 = self.p_unigram(tok, prior)
        row = self.bi.get(prev)
        c = row.get(tok, 0.0) if row else 0.0
        out = self.out.get(prev, 0.0)
        w = 0.0
        q = 0.0
        if prior is not None and prior.mass > 0:
            w = cfg.prior_weight
            q = prior.prob(prev, tok)
        return (c + w * q + cfg.alpha * p1) / (out + w + cfg.alpha)

    def row(self, prev: str) -> dict[str, float] | None:
        """Counts of the tokens seen after ``prev`` (``None`` if none): what ``prob`` reads."""
        return self.bi.get(prev)

    def surprisal(self, prev: str, tok: str, prior: "MarkovModel | None" = None) -> float:
        """Bits of surprise at ``tok`` following ``prev``; higher = less expected."""
        return -math.log2(self.prob(prev, tok, prior))

    def expected(self, prev: str, k: int = 3) -> list[str]:
        """The ``k`` most usual next tokens after ``prev`` (for explanations)."""
        row = self.bi.get(prev, {})
        return [t for t, _ in sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]

    # --- learning ------------------------------------------------------------------------------
    def learn(self, prev: str, tok: str, weight: float = 1.0) -> None:
        self.uni[tok] = self.uni.get(tok, 0.0) + weight
        row = self.bi.setdefault(prev, {})
        if tok not in row:
            self.n_transitions += 1
        row[tok] = row.get(tok, 0.0) + weight
        self.out[prev] = self.out.get(prev, 0.0) + weight
        self.mass += weight
        cfg = self.config
        if self.mass > cfg.max_mass:
            self._scale(0.5)
        if len(self.uni) > cfg.max_tokens or self.n_transitions > cfg.max_transitions:
            self._prune()

    def learn_many(self, pairs: Iterable[tuple[str, str]]) -> None:
        """``learn(prev, tok)`` for each pair in turn (weight 1), with the lookups kept local. The
        bounds are checked after the first pair, then only after a pair that adds a token or a
        transition: before it the model is within them (checked, or pruned to within), and
        nothing else makes it grow (decay only drops counts)."""
        cfg = self.config
        max_mass, max_tokens, max_transitions = cfg.max_mass, cfg.max_tokens, cfg.max_transitions
        uni, bi, out = self.uni, self.bi, self.out
        mass, n_transitions = self.mass, self.n_transitions
        check = True
        try:
            for prev, tok in pairs:
                c = uni.get(tok)
                if c is None:
                    uni[tok] = 1.0  # 0.0 + 1.0, as learn adds
                    check = True
                else:
                    uni[tok] = c + 1.0
                row = bi.get(prev)
                if row is None:
                    row = bi[prev] = {}
                c = row.get(tok)
                if c is None:
                    n_transitions += 1
                    row[tok] = 1.0
                    check = True
                else:
                    row[tok] = c + 1.0
                out[prev] = out.get(prev, 0.0) + 1.0
                mass += 1.0
                if mass > max_mass:
                    self.mass, self.n_transitions = mass, n_transitions
                    self._scale(0.5)
                    uni, bi, out = self.uni, self.bi, self.out
                    mass, n_transitions = self.mass, self.n_transitions
                if check:
                    check = False
                    if len(uni) > max_tokens or n_transitions > max_transitions:
                        self.mass, self.n_transitions = mass, n_transitions
                        self._prune()
                        uni, bi, out = self.uni, self.bi, self.out
                        mass, n_transitions = self.mass, self.n_transitions
        finally:
            self.mass, self.n_transitions = mass, n_transitions

    def _scale(self, f: float) -> None:
        """Decay: multiply every count by ``f`` and drop what falls under ``min_count``."""
        lo = self.config.min_count
        self.uni = {t: c * f for t, c in self.uni.items() if c * f >= lo}
        bi: dict[str, dict[str, float]] = {}
        for p, row in self.bi.items():
            kept = {t: c * f for t, c in row.items() if c * f >= lo}
            if kept:
                bi[p] = kept
        self.bi = bi
        self._recount()

    def _prune(self) -> None:
        """Keep the heaviest 3/4 of each bound, so pruning runs once per many new entries."""
        cfg = self.config
        if len(self.uni) > cfg.max_tokens:
            keep = sorted(self.uni.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.max_tokens * 3 // 4]
            self.uni = dict(keep)
        edges = sorted(((c, p, t) for p, row in self.bi.items() for t, c in row.items()
                        if t in self.uni), key=lambda e: (-e[0], e[1], e[2]))[: cfg.max_transitions * 3 // 4]
        self.bi = {}
        for c, p, t in edges:
            self.bi.setdefault(p, {})[t] = c
        self._recount()

    def _recount(self) -> None:
        self.out = {p: sum(row.values()) for p, row in self.bi.items()}
        self.mass = sum(self.uni.values())
        self.n_transitions = sum(len(r) for r in self.bi.values())

    def add_scaled(self, other: "MarkovModel", f: float) -> None:
        """Add ``f`` times another model's counts (building a fleet prior); no pruning."""
        for t, c in other.uni.items():
            self.uni[t] = self.uni.get(t, 0.0) + c * f
        for p, row in other.bi.items():
            mine = self.bi.setdefault(p, {})
            for t, c in row.items():
                mine[t] = mine.get(t, 0.0) + c * f
        self._recount()

    # --- state ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"uni": dict(self.uni), "bi": {p: dict(r) for p, r in self.bi.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any], config: MarkovConfig | None = None) -> "MarkovModel":
        m = cls(config)
        m.uni = {str(t): float(c) for t, c in d.get("uni", {}).items()}
        m.bi = {str(p): {str(t): float(c) for t, c in r.items()} for p, r in d.get("bi", {}).items()}
        m._recount()
        return m

    @property
    def vocab(self) -> set[str]:
        return {t for t in self.uni if t != START}


def containment(small: Iterable[str], big: set[str]) -> float:
    """Share of ``small``'s tokens that ``big`` also uses (0 when ``small`` is empty)."""
    s = set(small)
    return len(s & big) / len(s) if s else 0.0


class _PartialPrior(MarkovModel):
    """A fleet prior with only some transition rows: a learning agent reads the rows of the few
    previous tokens its calls in one batch can have, so only those are summed. Every value it
    holds is the one the full prior holds (``_prior_row``: the same products, summed in the same
    order). Built with ``rows``, reading another row is a programming error, not a smaller
    probability; built with ``lazy_rows``, a row is summed when first read (for callers, such as
    agents sharing one prior in a batch, that cannot list their rows in advance)."""

    _rows: set[str]
    _scaled: "list[tuple[dict[str, dict[str, float]], float]] | None"
    _scale: float

    def _check(self, prev: str) -> None:
        if prev in self._rows:
            return
        if self._scaled is None:
            raise LookupError(f"fleet prior row {prev!r} was not built (built: {sorted(self._rows)}); "
                              "pass every previous token the caller may read to fleet_prior(rows=...)")
        self._rows.add(prev)
        mine = _prior_row(self._scaled, prev, self._scale)
        if mine is not None:
            self.bi[prev] = mine
            self.out[prev] = sum(mine.values())

    def row(self, prev: str) -> dict[str, float] | None:
        """The (scaled) transition row after ``prev``, ``None`` if no member has one."""
        self._check(prev)
        return self.bi.get(prev)

    def prob(self, prev: str, tok: str, prior: "MarkovModel | None" = None) -> float:
        self._check(prev)
        return super().prob(prev, tok, prior)

    def expected(self, prev: str, k: int = 3) -> list[str]:
        self._check(prev)
        return super().expected(prev, k)

    def to_dict(self) -> dict[str, Any]:
        raise TypeError("a partial fleet prior has only some rows: it is not a model's state")


def _prior_row(scaled: list[tuple[dict[str, dict[str, float]], float]], p: str,
               prior_scale: float) -> dict[str, float] | None:
    """Row ``p`` of a fleet prior: each member's row times its unit-mass factor, summed in member
    order (0.0 + x is x, so a count's first member is copied scaled), then scaled to the prior's
    mass; ``None`` if no member has the row."""
    mine: dict[str, float] | None = None
    for member_bi, f in scaled:  # plain loops, no comprehensions: most rows hold two or three tokens
        row = member_bi.get(p)
        if row is None:
            continue
        if mine is None:
            mine = {}
            for t, c in row.items():
                mine[t] = c * f
        else:
            for t, c in row.items():
                if t in mine:
                    mine[t] += c * f
                else:
                    mine[t] = c * f
    if mine is not None:
        for t, c in mine.items():
            mine[t] = c * prior_scale
    return mine


def fleet_prior(models: Iterable[MarkovModel], config: MarkovConfig | None = None,
                rows: Iterable[str] | None = None, lazy_rows: bool = False) -> MarkovModel | None:
    """Average of several agents' models, each scaled to unit mass so no agent dominates. With
    ``rows`` only the transition rows of those previous tokens are built; with ``lazy_rows`` each
    row is built when first read. Either way only ``prob``, ``expected`` and ``row`` of rows, and
    ``uni`` and ``mass``, may be read (``_PartialPrior``)."""
    # add_scaled for each member, with one recount at the end instead of one per member: every
    # count is summed over the members in member order, as adding member after member does, so
    # every value is the same. This runs per learning agent and batch; a row's sums involve that
    # row only, hence ``rows`` and ``lazy_rows``.
    uni: dict[str, float] = {}
    scaled: list[tuple[dict[str, dict[str, float]], float]] = []
    total = 0.0
    for m in models:
        mass = m.mass
        if mass > 0:
            f = 1.0 / mass
            for t, c in m.uni.items():
                if t in uni:
                    uni[t] += c * f
                else:
                    uni[t] = c * f
            scaled.append((m.bi, f))
            total += mass
    n = len(scaled)
    if n == 0:
        return None
    # Sum of unit-mass models has mass n; rescale to one average member's mass so the prior's
    # own smoothing behaves like that of a well-trained agent.
    prior_scale = total / n / n
    bi: dict[str, dict[str, float]] = {}
    out: dict[str, float] = {}
    if not lazy_rows:
        want = dict.fromkeys(p for bi_, _ in scaled for p in bi_) if rows is None else dict.fromkeys(rows)
        for p in want:
            mine = _prior_row(scaled, p, prior_scale)
            if mine is not None:
                bi[p] = mine
                out[p] = sum(mine.values())
    for t, c in uni.items():
        uni[t] = c * prior_scale
    partial = rows is not None or lazy_rows
    prior = MarkovModel.__new__(_PartialPrior if partial else MarkovModel)
    prior.config = config or MarkovConfig()
    prior.uni, prior.bi, prior.out = uni, bi, out
    prior.mass = sum(uni.values())
    prior.n_transitions = 0 if partial else sum(len(r) for r in bi.values())
    if partial:
        prior._rows = set() if lazy_rows else set(want)  # type: ignore[attr-defined]
        prior._scaled = scaled if lazy_rows else None  # type: ignore[attr-defined]
        prior._scale = prior_scale  # type: ignore[attr-defined]
    return prior


def select_prior(vocab: set[str], candidates: dict[str, MarkovModel], min_containment: float,
                 config: MarkovConfig | None = None) -> MarkovModel | None:
    """Fleet prior for an agent that uses ``vocab``: the average of the candidate (mature) models
    whose vocabulary holds at least ``min_containment`` of the agent's tokens; ``None`` if none do.
    Agents with the same tools share behaviour; agents with other tools say nothing about it."""
    if not vocab:
        return None
    similar = [m for m in candidates.values() if containment(vocab, m.vocab) >= min_containment]
    return fleet_prior(similar, config)


@dataclass(slots=True)
class LengthStats:
    """Decayed mean and variance of log session length, to flag unusually long sessions."""

    n: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    decay: float = 0.995

    def add(self, length: int) -> None:
        x = math.log1p(length)
        self.n = self.n * self.decay + 1.0
        d = x - self.mean
        self.mean += d / self.n
        self.m2 = self.m2 * self.decay + d * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n > 1 else 0.0

    def limit(self, k: float, floor: int) -> float:
        """Session length above which a session is unusual: ``exp(mean + k*std)``, at least ``floor``."""
        return max(float(floor), math.expm1(self.mean + k * max(self.std, 0.25)))

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: dict[str, Any], decay: float = 0.995) -> "LengthStats":
        return cls(float(d["n"]), float(d["mean"]), float(d["m2"]), decay)
