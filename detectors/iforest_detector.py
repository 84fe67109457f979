"""``IsolationForestDetector``: flags calls whose features (``features.FEATURE_NAMES``) are unlike
the agent's baseline, with the features that pushed the score as the explanation.

Per agent it keeps the feature context (sessions, known destinations), a sequence model for the
``surprisal`` feature, and a ring buffer of the last ``max_rows`` feature rows of calls that raised
no alert: the baseline window. A forest is fitted per agent once it has ``min_rows`` clean rows;
until then the agent is scored by a *group* model (fitted on the pooled windows of mature agents
that use the same set of servers, chosen when it covers at least ``prior_min_containment`` of the
agent's servers), so a new agent is not blind; an agent no group covers is not scored yet, nor is
one its group flags too often (``group_max_alert_rate``: the group does not describe it).
Each model's threshold is calibrated to ``target_alert_rate`` on its training rows.

Scoring is batched: one flattened-forest pass per micro-batch for every model in the
``ForestBank`` (each model's trees in a fixed slot), never one row per call.
Fitting is the slow part (~0.1–0.3 s per model) and stays off the hot path when
``auto_retrain=False``: the collector calls ``needs_retrain()`` after a batch and runs
``retrain(keys)`` in a worker thread; new models are swapped in whole, so a concurrent
``observe`` sees either the old or the new model. With ``auto_retrain=True`` (tests, the evaluation
harness) ``observe`` retrains inline.

Agent states (``agent_states()``): ``learning`` (no own model yet; scored by a group model if one
covers and fits it), ``active`` (own model), ``frozen`` (scores, learns and retrains nothing).

Memory per agent: ``max_rows x 15`` float64 (240 KB at 2048 rows), its fitted model (the sample
again plus ~100 trees of <= 511 nodes: ~1.5 MB) and its bank slot (~0.8 MB), the session tracker
and destination bounds, and
the sequence model's bounds. Snapshots store training samples, never pickles; restore refits
deterministically (same ``random_state``), so restored models give identical scores.
"""

from __future__ import annotations

import math
import threading
from itertools import chain
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np

from .array_codec import decode_matrix, encode_matrix
from .base import PerAgentDetector
from .events import Batch, Finding, ToolCall
from .features import FEATURE_NAMES, N_FEATURES, AgentContext, Group, append_batch, finish
from .iforest import ForestBank, ForestModel, ForestParams, SlotConstants, explain_many
from .pyround import py_round
from .sequence import MarkovConfig, MarkovModel, fleet_prior, select_prior
from .sessions import START, SessionTracker

__all__ = ["ForestConfig", "IsolationForestDetector", "finding_severity"]

LEARNING, ACTIVE, FROZEN = "learning", "active", "frozen"
MISFIT_SESSIONS = 3
"""A group model is retired for an agent only if its hits fell in at least this many sessions:
one attack session flagged call after call is what a group model is for, not a misfit."""
_MAX_TOKENS = 16384
"""Bound of the detector's table of token objects (``IsolationForestDetector._canonical_token``)."""
GROUPS = "groups"
"""The key that asks ``retrain`` to refit the group models."""


@dataclass(frozen=True, slots=True)
class ForestConfig:
    """Settings of ``IsolationForestDetector`` (YAML section ``detectors.iforest``)."""

    forest: ForestParams = field(default_factory=ForestParams)
    markov: MarkovConfig = field(default_factory=MarkovConfig)
    min_rows: int = 300
    max_rows: int = 2048
    retrain_every: int = 2000
    """Clean rows an agent gathers before its model is refitted."""
    group_retrain_every: int = 5000
    """Clean rows (all agents) gathered before the group models are refitted."""
    group_check_calls: int = 200
    """A learning agent's fit to its group model is judged every this many calls the group scores."""
    group_max_alert_rate: float = 0.01
    """A group model that flags more than this share of a learning agent's calls (over
    ``group_check_calls``, in at least ``MISFIT_SESSIONS`` sessions) does not describe that agent:
    it stops scoring it, and the agent is unscored by the forest until its own model is fitted.
    Without this, a group model that fits badly flooded operators (in the fleet bench a median
    learning agent had 3 % of its calls flagged, some over 20 %) and, as flagged sessions never join
    the baseline, kept the agent from ever gathering the ``min_rows`` clean rows its own model needs."""
    warm_calls: int = 100
    """Rows are kept for training only once the agent's sequence model (or a fleet prior) has
    seen this many calls, so early, inflated surprisal does not become the baseline."""
    prior_min_containment: float = 0.6
    auto_retrain: bool = True
    max_open_sessions: int = 32
    session_idle_s: float = 1800.0
    max_destinations: int = 1024
    habit_calls: float = 3.0
    """A server belongs to an agent's habits (and so its group) once its tools have this much
    (decayed) count in the agent's sequence model: one stray call does not change the group."""
    train_max_surprisal: float = 12.0
    """Rows more surprising than this (bits) never join a baseline window, so that calls to
    never-seen tools made before any model covered the agent do not become normal."""
    max_pending_rows: int = 256
    """Rows held per open session until it closes (longer sessions keep their first rows)."""
    explain_top: int = 3
    high_margin: float = 0.08
    """Score this far above the threshold makes a finding ``high`` instead of ``medium``."""
    medium_margin: float = 0.03
    """Below this margin over the threshold (and with no feature ``medium_range_excess`` out of
    range) a finding is ``low``: the calibrated tail (``target_alert_rate``) of a model is a
    statistical signal for dashboards, not a page."""
    medium_range_excess: float = 2.0
    """A feature this many ``range_k`` range-widths outside the baseline range makes it ``medium``
    (``high`` at 4)."""

    def validate(self) -> "ForestConfig":
        self.forest.validate()
        self.markov.validate()
        if self.min_rows < 16:
            raise ValueError(f"iforest.min_rows must be >= 16 (got {self.min_rows})")
        if self.max_rows < self.min_rows:
            raise ValueError(f"iforest.max_rows ({self.max_rows}) must be >= iforest.min_rows ({self.min_rows})")
        if self.retrain_every < 1 or self.group_retrain_every < 1:
            raise ValueError("iforest.retrain_every and iforest.group_retrain_every must be >= 1")
        if self.group_check_calls < 1:
            raise ValueError(f"iforest.group_check_calls must be >= 1 (got {self.group_check_calls})")
        if not 0.0 < self.group_max_alert_rate <= 1.0:
            raise ValueError(f"iforest.group_max_alert_rate must be in (0, 1] (got {self.group_max_alert_rate})")
        if self.habit_calls <= 0 or self.train_max_surprisal <= 0:
            raise ValueError("iforest.habit_calls and iforest.train_max_surprisal must be > 0")
        if self.warm_calls < 0 or self.explain_top < 1:
            raise ValueError("iforest.warm_calls must be >= 0 and iforest.explain_top >= 1")
        if not 0.0 < self.prior_min_containment <= 1.0:
            raise ValueError("iforest.prior_min_containment must be in (0, 1]")
        if self.max_open_sessions < 1 or self.session_idle_s <= 0 or self.max_destinations < 1:
            raise ValueError("iforest.max_open_sessions and iforest.max_destinations must be >= 1, "
                             "iforest.session_idle_s > 0")
        if self.max_pending_rows < 1:
            raise ValueError(f"iforest.max_pending_rows must be >= 1 (got {self.max_pending_rows}): "
                             "the rows an open session holds until it closes")
        if not 0.0 <= self.medium_margin <= self.high_margin or not 0.0 <= self.medium_range_excess <= 4.0:
            raise ValueError("iforest.medium_margin must be in [0, high_margin] and "
                             "iforest.medium_range_excess in [0, 4]")
        return self


def finding_severity(cfg: ForestConfig, margin: float, excess: float, range_k: float) -> str:
    """``high`` for a clear outlier, ``medium`` for a moderate one, ``low`` for the calibrated tail:
    ``margin`` = score - threshold, ``excess`` = range-widths outside the baseline range."""
    if margin >= cfg.high_margin or excess >= 4 * range_k:
        return "high"
    if margin >= cfg.medium_margin or excess >= cfg.medium_range_excess * range_k:
        return "medium"
    return "low"


def _stored_rows(rows: Any, what: str) -> np.ndarray:
    """Feature rows from a snapshot as a float64 matrix, or an error that says what is wrong."""
    X = decode_matrix(rows, f"iforest snapshot: {what}")
    if X.size == 0:
        return X.reshape(0, N_FEATURES)
    if X.ndim != 2 or X.shape[1] != N_FEATURES:
        raise ValueError(f"iforest snapshot: {what} must be rows of {N_FEATURES} features (got shape {X.shape}); "
                         "the snapshot is from another feature list: drop the agent's state to relearn it")
    return X


def _pending_to_dict(pending: dict[str, list[bytes]]) -> dict[str, Any]:
    """Pending session rows as one matrix (sessions' rows one after the other) with the sessions and
    their row counts beside it. Why: a fleet has thousands of open sessions with a few rows each, and
    a matrix per session (the older ``"pending"`` form, still read) cost a base64 string, a dict and
    a shape list each, every snapshot."""
    return {"pending_sessions": list(pending), "pending_counts": [len(rows) for rows in pending.values()],
            "pending_rows": encode_matrix(rows_array([r for rows in pending.values() for r in rows]), narrow=True)}


def _pending_from_dict(d: dict[str, Any]) -> dict[str, list[bytes]]:
    """``_pending_to_dict``'s form, or the older one (``"pending"``: a matrix per session)."""
    if "pending_rows" not in d:
        return {str(k): row_bytes(_stored_rows(v, f"pending rows of session {k!r}"))
                for k, v in d.get("pending", {}).items()}
    sessions, counts = d["pending_sessions"], d["pending_counts"]
    rows = row_bytes(_stored_rows(d["pending_rows"], "pending rows"))
    if (not isinstance(sessions, list) or not isinstance(counts, list) or len(sessions) != len(counts)
            or not all(type(n) is int and n >= 0 for n in counts) or sum(counts) != len(rows)):
        raise ValueError("iforest snapshot: pending_sessions and pending_counts must match, one count a "
                         f"session, counting the {len(rows)} pending rows")
    out: dict[str, list[bytes]] = {}
    at = 0
    for sid, n in zip(sessions, counts):
        out[str(sid)] = rows[at : at + n]
        at += n
    return out


class _Hit(NamedTuple):
    """What a finding about one hit row shows: its score and range excess, and those rounded as the
    finding stores them, its features rounded, its explanation."""

    score: float
    excess: float
    features4: list[float]
    explanation: list[dict[str, Any]]
    score6: float
    excess4: float


def _group_key(servers: Iterable[str]) -> str:
    return "group:" + ",".join(sorted(servers))


@dataclass(slots=True)
class _GroupTally:
    """A group model's calls and hits on one learning agent since the last check
    (``ForestConfig.group_check_calls``), and the sessions the hits fell in."""

    key: str | None = None
    calls: int = 0
    hits: int = 0
    sessions: set[str] = field(default_factory=set)


def _tally_to_dict(t: _GroupTally) -> dict[str, Any]:
    return {"key": t.key, "calls": t.calls, "hits": t.hits, "sessions": sorted(t.sessions)}


def _tally_from_dict(d: dict[str, Any]) -> _GroupTally:
    """A saved tally, so a restart goes on judging the group where it was (a fresh tally would let a
    badly-fitting group score up to ``group_check_calls`` more calls before it is retired)."""
    key, calls, hits, sessions = d["key"], d["calls"], d["hits"], d["sessions"]
    if not (isinstance(key, str) and type(calls) is int and type(hits) is int and 0 <= hits <= calls
            and isinstance(sessions, list) and all(isinstance(x, str) for x in sessions)):
        raise ValueError(f"group_tally: expected a group key, calls >= hits >= 0 and session ids, got {d!r}"[:300])
    return _GroupTally(key, calls, hits, set(sessions))


class _Agent:
    """One agent's state: feature context, sequence model, baseline window."""

    def __init__(self, cfg: ForestConfig) -> None:
        self.ctx = AgentContext(SessionTracker(max_open=cfg.max_open_sessions, idle_s=cfg.session_idle_s),
                                max_destinations=cfg.max_destinations)
        self.markov = MarkovModel(cfg.markov)
        self.buf = np.zeros((cfg.max_rows, N_FEATURES))
        """Ring buffer of the window's older rows; ``head`` is where the next row goes."""
        self.head = 0
        self.n_flushed = 0
        """Rows held in ``buf`` (at most ``max_rows``)."""
        self.staged: list[bytes] = []
        """Newer rows not yet written to ``buf``: commits are a few rows per session, so they are
        written to the ring buffer in bulk (one ``frombuffer`` per ``max_rows`` rows)."""
        self.n_buf = 0
        """Rows in the window (``buf`` and ``staged`` together, at most ``max_rows``)."""
        self.window_lock = threading.Lock()
        """Held while rows move from ``staged`` to ``buf``, and by ``window()``: the retrainer reads
        the window from another thread and must never see rows in neither place (an empty window)."""
        self.since_fit = 0
        self.refitting = 0
        """``since_fit`` as it was when the refit in flight started (0: none is): the refit zeroes
        ``since_fit`` when it starts, so a snapshot taken before its model is in place adds this back
        and records the refit as still wanted (a restart from it refits at once, not
        ``retrain_every`` rows later)."""
        self.frozen = False
        self.pending: dict[str, list[bytes]] = {}
        """Rows of open sessions, committed to the window when the session closes clean."""
        self.tainted: set[str] = set()
        """Open sessions with a finding: none of their rows will join the baseline."""
        self.habits: tuple[dict[str, float], int, list[str], frozenset[str], str] | None = None
        """Cache of ``IsolationForestDetector._servers`` (asked for every agent after every batch):
        the ``markov.uni`` dict it was computed from, that dict's size, its ``server/tool`` tokens
        still under ``habit_calls``, the servers, and their group key."""
        self.vocab: tuple[dict[str, float], int, frozenset[str]] | None = None
        """Cache of ``markov.vocab`` (asked for every learning agent in every batch): the ``uni``
        dict it was computed from, that dict's size, and the vocabulary. Valid while the dict is
        the same object of the same size (``MarkovModel`` only adds keys in place)."""
        self.group: tuple[Any, dict[str, frozenset[str]], str | None] | None = None
        """Cache of ``IsolationForestDetector._model_key``'s group choice: the ``habits`` tuple and
        the groups dict (never changed in place) it was made from, and the group chosen."""
        self.group_tally = _GroupTally()
        self.misfits: set[str] = set()
        """Group models that flagged too many of this agent's calls (``group_max_alert_rate``):
        they no longer score it."""

    def add_rows(self, rows: Sequence[bytes] | Sequence[Sequence[float]] | np.ndarray) -> None:
        """Append rows to the baseline window (only the last ``max_rows`` are kept). Rows are
        ``ROW_BYTES`` each (``row_bytes``), as ``observe`` keeps them; float rows are converted."""
        if len(rows) and not isinstance(rows[0], bytes):
            rows = row_bytes(np.asarray(rows, dtype=np.float64).reshape(-1, N_FEATURES))
        cap = len(self.buf)
        n = len(rows)
        if n >= cap:  # the whole window is these rows
            with self.window_lock:
                self.staged = list(rows[-cap:])
                self.head = self.n_flushed = 0
        else:
            self.staged.extend(rows)  # type: ignore[arg-type]
        if len(self.staged) >= cap:
            self._flush()
        self.n_buf = min(cap, self.n_buf + n)
        self.since_fit += n

    def _flush(self) -> None:
        """Write the staged rows into the ring buffer (observe's thread only)."""
        with self.window_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        staged, self.staged = self.staged, []
        cap = len(self.buf)
        keep = rows_array(staged)[-cap:]
        k = len(keep)
        head = self.head
        first = min(k, cap - head)
        self.buf[head : head + first] = keep[:first]
        if k > first:
            self.buf[: k - first] = keep[first:]
        self.head = (head + k) % cap
        self.n_flushed = min(cap, self.n_flushed + k)

    def window(self) -> np.ndarray:
        """Baseline rows, oldest first (a copy: safe to use from another thread)."""
        with self.window_lock:
            return self._window_locked()

    def _window_locked(self) -> np.ndarray:
        staged = list(self.staged)
        cap = len(self.buf)
        if self.n_flushed < cap:
            ring = self.buf[: self.n_flushed]
        else:
            ring = np.concatenate([self.buf[self.head :], self.buf[: self.head]])
        if not staged:
            return ring.copy()
        return np.concatenate([ring, rows_array(staged)])[-cap:]


ROW_BYTES = N_FEATURES * 8
"""A feature row as kept between batches (pending in a session, staged for the window): its
float64 values as ``bytes``. Bytes are copied out of the batch's matrix in one slice, turn back
into a matrix with one ``frombuffer``, and are not tracked by the garbage collector: rows kept
as lists of floats (tens of thousands per agent) made every full collection walk them all."""


def row_bytes(X: np.ndarray) -> list[bytes]:
    """Each row of a float64 feature matrix as ``ROW_BYTES`` bytes."""
    b = np.ascontiguousarray(X, dtype=np.float64).tobytes()
    return [b[i : i + ROW_BYTES] for i in range(0, len(b), ROW_BYTES)]


def rows_array(rows: Sequence[bytes]) -> np.ndarray:
    """Rows from ``row_bytes`` as one (read-only) float64 matrix."""
    return np.frombuffer(b"".join(rows), dtype=np.float64).reshape(-1, N_FEATURES)


class _Peers:
    """Fleet priors of learning agents (``select_prior``), cheaper: which mature models make the
    prior of a vocabulary is remembered while the mature models and their vocabularies stay the
    same (containment against every mature model was computed per learning agent and batch), and
    agents that choose the same models in a batch share one prior. Priors are rebuilt every batch
    from the models as they stand (their counts change), with ``fleet_prior``'s lazy rows: the
    same values as ``select_prior``'s prior, built only where read."""

    def __init__(self) -> None:
        self.models: list[MarkovModel] = []
        self.seen: list[tuple[MarkovModel, dict[str, float], int]] = []
        """Each mature model with its ``uni`` dict and that dict's size when ``vocabs`` was valid."""
        self.vocabs: list[frozenset[str]] | None = None
        self.similar: dict[frozenset[str], tuple[int, ...]] = {}
        """Vocabulary -> positions in ``models`` of the mature models that hold enough of it."""
        self.built: dict[tuple[int, ...], tuple[MarkovModel | None, dict[tuple[str, str], tuple[float, float]]]] = {}
        """This batch's priors, per choice of models, each with its memo of probabilities for
        ``append_rows`` (shared by the agents with that prior)."""

    def check(self, mature: dict[str, MarkovModel]) -> None:
        """Start a batch: forget the choices if any mature model or its vocabulary changed
        (``uni`` replaced or grown: ``MarkovModel`` only adds keys in place)."""
        self.built = {}
        seen = self.seen
        models = list(mature.values())
        if len(seen) == len(models) and all(m is s[0] and m.uni is s[1] and len(m.uni) == s[2]
                                            for m, s in zip(models, seen)):
            return
        self.models = models
        self.seen = [(m, m.uni, len(m.uni)) for m in models]
        self.vocabs = None
        self.similar = {}

    def prior(self, vocab: frozenset[str], min_containment: float, config: MarkovConfig
              ) -> tuple[MarkovModel | None, dict[tuple[str, str], tuple[float, float]] | None]:
        """``select_prior(vocab, mature, min_containment, config)`` for this batch, and its memo."""
        if not vocab:
            return None, None
        chosen = self.similar.get(vocab)
        if chosen is None:
            if self.vocabs is None:
                self.vocabs = [frozenset(m.vocab) for m in self.models]
            n = len(vocab)
            chosen = tuple(i for i, v in enumerate(self.vocabs) if len(vocab & v) / n >= min_containment)
            if len(self.similar) >= 4096:  # bounded: vocabularies of agents that come and go
                self.similar.clear()
            self.similar[vocab] = chosen
        got = self.built.get(chosen)
        if got is None:
            got = self.built[chosen] = (fleet_prior([self.models[i] for i in chosen], config, lazy_rows=True), {})
        return got


class IsolationForestDetector(PerAgentDetector[_Agent]):
    """Per-agent (or per-group) IsolationForest over call features; see the module docstring."""

    name = "iforest"

    def __init__(self, config: ForestConfig | None = None) -> None:
        super().__init__()
        self.config = (config or ForestConfig()).validate()
        self._models: dict[str, ForestModel] = {}
        self._groups: dict[str, frozenset[str]] = {}
        """Group key -> servers its members use."""
        self._group_since = 0
        """Rows committed to any window since the group models were fitted."""
        self._group_refitting = 0
        """``_group_since`` as it was when the full group refit in flight started (0: none is); a
        snapshot adds it back, as ``_Agent.refitting``."""
        self._bank: ForestBank | None = None
        """Every model's trees in one set of arrays, for one scoring pass per batch."""
        self._bank_items: list[tuple[str, ForestModel]] | None = None
        """The models dict's items when ``_banked`` was computed."""
        self._banked: dict[str, tuple[int, ForestModel]] = {}
        self._bank_consts: SlotConstants | None = None
        self._peers = _Peers()
        self._tokens: dict[str, str] = {}
        """Token -> the one string object used for it (``_canonical_token``)."""
        self.fitter: Callable[[np.ndarray, ForestParams], ForestModel] = ForestModel
        """Fits one model in ``retrain``: in-process by default; the daemon sets its refit worker
        process's ``fit`` (same models, fitted on the other core)."""

    # --- PerAgentDetector ----------------------------------------------------------------------
    def new_state(self) -> _Agent:
        return _Agent(self.config)

    def state_to_dict(self, st: _Agent) -> dict[str, Any]:
        return {"ctx": st.ctx.to_dict(), "markov": st.markov.to_dict(), "rows": encode_matrix(st.window(), narrow=True),
                "since_fit": st.since_fit + st.refitting, "frozen": st.frozen,
                **_pending_to_dict(st.pending), "tainted": sorted(st.tainted),
                **({"misfits": sorted(st.misfits)} if st.misfits else {}),
                **({"group_tally": _tally_to_dict(st.group_tally)} if st.group_tally.calls else {})}

    def state_from_dict(self, d: dict[str, Any]) -> _Agent:
        st = _Agent(self.config)
        st.ctx.load(d["ctx"])
        st.markov = self._canonical_model(MarkovModel.from_dict(d["markov"], self.config.markov))
        for sess in st.ctx.sessions.open.values():
            sess.prev = self._canonical_token(sess.prev)
        st.add_rows(_stored_rows(d["rows"], "window rows"))
        st.since_fit = int(d["since_fit"])
        st.frozen = bool(d["frozen"])
        st.pending = _pending_from_dict(d)
        st.tainted = set(d.get("tainted", []))
        st.misfits = set(d.get("misfits", []))
        if "group_tally" in d:
            st.group_tally = _tally_from_dict(d["group_tally"])
        return st

    def snapshot(self) -> dict[str, Any]:
        # A refit may end meanwhile (retrainer thread): read its marks before the models, so a mark
        # read as cleared means its model is among those read (a mark still set at worst refits twice).
        out = super().snapshot()
        group_since = self._group_since + self._group_refitting
        out["models"] = {k: m.to_dict() for k, m in list(self._models.items())}
        out["groups"] = {k: sorted(v) for k, v in list(self._groups.items())}
        out["group_since"] = group_since
        return out

    def after_fork_in_child(self) -> None:
        # The retrainer thread may have been copying a window at the fork. Only the detector thread
        # changes a window, and it was stopped (detector lock): every window is whole.
        for st in self._state.values():
            st.window_lock = threading.Lock()

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self._models = {k: ForestModel.from_dict(v) for k, v in state.get("models", {}).items()}
        self._groups = {k: frozenset(v) for k, v in state.get("groups", {}).items()}
        self._group_since = int(state.get("group_since", 0))

    def snapshot_agent(self, agent_id: str) -> dict[str, Any] | None:
        d = super().snapshot_agent(agent_id)
        if d is not None and agent_id in self._models:
            d["model"] = self._models[agent_id].to_dict()
        return d

    def restore_agent(self, agent_id: str, state: dict[str, Any]) -> None:
        super().restore_agent(agent_id, state)
        if "model" in state:
            self._models[agent_id] = ForestModel.from_dict(state["model"])

    def drop_agent(self, agent_id: str) -> None:
        super().drop_agent(agent_id)
        self._models.pop(agent_id, None)

    # --- operator controls and gauges ----------------------------------------------------------
    def agent_states(self) -> dict[str, str]:
        return {a: self._status(a, st) for a, st in list(self._state.items())}

    def scoring_counts(self) -> dict[str, int]:
        """Agents by the model that scores them now: ``own``, ``group``, or ``none`` (no group covers
        the agent, or the one that does was retired for it): how much of the fleet the forest sees."""
        out = {"own": 0, "group": 0, "none": 0}
        models = self._models
        for a, st in list(self._state.items()):
            if a in models:
                out["own"] += 1
            elif self._model_key(a, st) is not None:
                out["group"] += 1
            else:
                out["none"] += 1
        return out

    def _status(self, agent_id: str, st: _Agent) -> str:
        if st.frozen:
            return FROZEN
        return ACTIVE if agent_id in self._models else LEARNING

    def freeze(self, agent_id: str) -> None:
        self.state_for(agent_id).frozen = True

    def unfreeze(self, agent_id: str) -> None:
        self.state_for(agent_id).frozen = False

    # --- retraining (may run in a worker thread) -----------------------------------------------
    def needs_retrain(self) -> list[str]:
        """Model keys worth (re)fitting now: agents with enough new clean rows, then the groups."""
        cfg = self.config
        agents = list(self._state.items())  # observe() may add agents meanwhile (worker thread)
        models, min_rows, every = self._models, cfg.min_rows, cfg.retrain_every
        keys = [a for a, st in agents
                if not st.frozen and st.n_buf >= min_rows and (a not in models or st.since_fit >= every)]
        due, habits, groups = set(keys), self._habits, self._groups  # asked after every batch: no list scans
        with_model = [st for a, st in agents if a in models or a in due]
        uncovered = any(habits(st)[4] not in groups for st in with_model)
        if with_model and (uncovered or self._group_since >= cfg.group_retrain_every):
            keys.append(GROUPS)
        return keys

    def retrain_order(self, keys: Sequence[str]) -> list[str]:
        """``keys`` (from ``needs_retrain``) most urgent first, for a retrainer that fits a few per
        run: agents without a model of their own, then the group models, then refits, most rows
        since their last fit first (so under load every agent takes its turn). Stable otherwise."""
        def urgency(k: str) -> tuple[int, int]:
            if k == GROUPS:
                return (1, 0)
            st = self._state.get(k)
            if k not in self._models:
                return (0, 0)
            return (2, -(st.since_fit if st is not None else 0))

        return sorted(keys, key=urgency)

    def retrain(self, keys: Iterable[str] | None = None) -> list[str]:
        """Fit the given models (default: ``needs_retrain()``) and swap them in; returns the keys
        fitted. Agents first, then group models from the agents' current windows.

        Safe to run in one worker thread beside ``observe`` (it reads copies and iterates over
        snapshots of the dicts); do not run two ``retrain`` calls at once."""
        cfg = self.config
        keys = list(self.needs_retrain() if keys is None else keys)
        done: list[str] = []
        for k in keys:
            st = self._state.get(k)
            if st is None or st.n_buf < cfg.min_rows:
                continue
            # ``refitting`` first: a snapshot between the two lines counts the rows twice (still due),
            # never zero; it is cleared only once the new model is in ``_models``.
            st.refitting = st.since_fit
            since, st.since_fit = st.since_fit, 0
            try:
                self._models[k] = self.fitter(st.window(), cfg.forest)
            except BaseException:
                st.since_fit += since  # not refitted: ask again at the next check
                raise
            finally:
                st.refitting = 0
            done.append(k)
        if GROUPS in keys:
            done += self._fit_groups()
        return done

    def _fit_groups(self) -> list[str]:
        """One group per distinct habitual server set of mature agents. Only new groups are fitted,
        unless ``group_retrain_every`` rows arrived since the last full refit; a one-member group
        shares its member's model (same sample, same forest)."""
        cfg = self.config
        mature = {a: st for a, st in list(self._state.items()) if a in self._models and st.n_buf >= cfg.min_rows}
        if not mature:
            return []
        full = self._group_since >= cfg.group_retrain_every
        since = self._group_since
        if full:
            self._group_refitting = since  # first, as in ``retrain``
            self._group_since = 0
        try:
            new_models = self._fit_group_models(mature, full)
        except BaseException:
            if full:
                self._group_since += since  # not refitted: ask again at the next check
            raise
        finally:
            self._group_refitting = 0
        return new_models

    def _fit_group_models(self, mature: dict[str, _Agent], full: bool) -> list[str]:
        cfg = self.config
        by_servers: dict[frozenset[str], list[str]] = {}
        for a, st in mature.items():
            by_servers.setdefault(frozenset(self._servers(st)), []).append(a)
        groups = {_group_key(s): (s, members) for s, members in by_servers.items()}
        rng = np.random.default_rng(cfg.forest.random_state)
        new_models: dict[str, ForestModel] = {}
        for key, (_servers, members) in groups.items():
            if not full and key in self._groups and key in self._models:
                continue
            if len(members) == 1:
                new_models[key] = self._models[members[0]]
                continue
            pooled = np.concatenate([mature[a].window() for a in sorted(members)])
            if len(pooled) > cfg.max_rows:
                pooled = pooled[np.sort(rng.choice(len(pooled), cfg.max_rows, replace=False))]
            new_models[key] = self.fitter(pooled, cfg.forest)
        stale = [k for k in list(self._models) if k.startswith("group:") and k not in groups]
        self._models.update(new_models)
        for k in stale:
            self._models.pop(k, None)
        self._groups = {k: s for k, (s, _m) in groups.items()}
        return list(new_models)

    def _servers(self, st: _Agent) -> frozenset[str]:
        """Servers the agent habitually uses (derived from its bounded sequence model)."""
        return self._habits(st)[3]

    def _habits(self, st: _Agent) -> tuple[dict[str, float], int, list[str], frozenset[str], str]:
        """``_Agent.habits``, recomputed only when it may have changed. ``MarkovModel`` changes a
        ``uni`` dict in place only by adding tokens and raising counts (decay and pruning build a
        new dict), so while the dict is the same object of the same size, only a token that was
        under ``habit_calls`` can have changed the answer."""
        lim = self.config.habit_calls
        uni = st.markov.uni
        h = st.habits
        if h is not None and h[0] is uni and h[1] == len(uni):
            for t in h[2]:
                if uni.get(t, 0.0) >= lim:
                    break
            else:
                return h
        items = list(uni.items())  # one C-level copy: observe() may add tokens meanwhile (worker thread)
        servers = frozenset(t.split("/", 1)[0] for t, c in items if c >= lim and "/" in t)
        h = st.habits = (uni, len(items), [t for t, c in items if c < lim and "/" in t], servers,
                         _group_key(servers))
        return h

    def _model_key(self, agent_id: str, st: _Agent) -> str | None:
        if agent_id in self._models:
            return agent_id
        groups = self._groups
        if not groups:
            return None
        h = self._habits(st)
        got = st.group
        if got is not None and got[0] is h and got[1] is groups:
            best = got[2]
        else:  # the agent's servers or the groups changed: choose again
            best, best_cover = None, 0.0
            mine = h[3]
            for key, servers in list(groups.items()):
                if not mine:
                    continue
                cover = len(mine & servers) / len(mine)
                if cover >= self.config.prior_min_containment and cover > best_cover:
                    best, best_cover = key, cover
            st.group = (h, groups, best)
        return best if best in self._models and best not in st.misfits else None

    def _judge_group(self, st: _Agent, key: str, calls: int, hit_sessions: Iterable[str] = ()) -> None:
        """Count a group model's calls and hits (one session id per hit) on a learning agent; every
        ``group_check_calls`` calls, retire the group for this agent if it flagged more than
        ``group_max_alert_rate`` of them, in at least ``MISFIT_SESSIONS`` sessions."""
        tally = st.group_tally
        if tally.key != key:
            tally = st.group_tally = _GroupTally(key)
        tally.calls += calls
        for sid in hit_sessions:
            tally.hits += 1
            tally.sessions.add(sid)
        cfg = self.config
        if tally.calls >= cfg.group_check_calls:
            if tally.hits > cfg.group_max_alert_rate * tally.calls and len(tally.sessions) >= MISFIT_SESSIONS:
                st.misfits.add(key)
            st.group_tally = _GroupTally(key)

    def _canonical_token(self, token: str) -> str:
        """``token`` as the one string object this detector uses for it from now on. Each call
        brings its own copy of its token; with one object per token, the sequence models' dict
        lookups (and the session's previous token) match by identity, without reading the stored
        key's characters, which in a daemon under load are mostly out of the CPU caches. Bounded:
        past ``_MAX_TOKENS`` tokens (tools named anew) it starts over, which costs only speed."""
        same = self._tokens.get(token)
        if same is not None:
            return same
        if len(self._tokens) >= _MAX_TOKENS:
            self._tokens.clear()
        self._tokens[token] = token
        return token

    def _canonical_model(self, m: MarkovModel) -> MarkovModel:
        """``m`` with its tokens as ``_canonical_token``'s objects (same counts, same order)."""
        one = self._canonical_token
        m.uni = {one(t): c for t, c in m.uni.items()}
        m.bi = {one(p): {one(t): c for t, c in row.items()} for p, row in m.bi.items()}
        m.out = {one(p): c for p, c in m.out.items()}
        return m

    @staticmethod
    def _vocab(st: _Agent, agent_tokens: list[str]) -> frozenset[str]:
        """``st.markov.vocab`` plus the tokens of the agent's calls in this batch."""
        uni = st.markov.uni
        v = st.vocab
        if v is None or v[0] is not uni or v[1] != len(uni):
            v = st.vocab = (uni, len(uni), frozenset([t for t in uni if t != START]))
        vocab = v[2]
        return vocab if vocab.issuperset(agent_tokens) else vocab.union(agent_tokens)

    # --- detection -----------------------------------------------------------------------------
    def observe(self, batch: Batch) -> list[Finding]:
        """``observe_scored``'s findings (the same, bit for bit). Only hits need exact scores, so rows
        of banked models that are proven clean part-way through the trees are not walked further
        (``ForestBank.path_lengths_bounded``), and no margins are put back in batch order."""
        return self._observe(batch, exact=False, with_margins=False)[0]

    def observe_scored(self, batch: Batch) -> tuple[list[Finding], np.ndarray]:
        """Findings, and per call (aligned with ``batch.calls``) score minus threshold (> 0 alerts;
        NaN when no model covers the agent yet): for ROC/PR curves.

        Agents are handled in order of first appearance, each agent's calls in batch order; one
        feature matrix is built for the whole batch (rows grouped by agent) and scored with one
        forest pass per model."""
        return self._observe(batch, exact=True)

    def _observe(self, batch: Batch, exact: bool, with_margins: bool = True) -> tuple[list[Finding], np.ndarray]:
        """``observe_scored``; with ``exact=False`` the margins of rows that are no hits may be NaN;
        without ``with_margins`` the margins returned are all NaN (``observe`` needs none).

        A batch of the fleet holds a few calls per agent, so the per-agent steps are kept lean:
        calls are grouped once (no index lists), tokens are ``ToolCall.token`` as one object per token
        (``_canonical_token``), and the per-call pass is one ``append_batch`` for all agents."""
        cfg = self.config
        calls = batch.calls
        by_agent: dict[str, tuple[list[ToolCall], list[str]]] = {}
        canon = self._tokens
        for c in calls:
            token = c.token
            same = canon.get(token)
            if same is None:
                same = self._canonical_token(token)
            got = by_agent.get(c.agent_id)
            if got is None:
                by_agent[c.agent_id] = ([c], [same])
            else:
                got[0].append(c)
                got[1].append(same)
        models = self._models
        states = self._state
        mature = {a: states[a].markov for a in list(models) if a in states}
        peers = self._peers
        peers.check(mature)
        rows: list[float] = []
        prevs: list[str] = []
        tokens: list[str] = []
        groups: list[Group] = []
        work: list[tuple[str, _Agent, int, int, str | None, bool, list[str], list[ToolCall]]] = []
        no_ids: list[str] = []
        with_peers = len(mature) > 1
        min_containment, markov_cfg, warm_calls = cfg.prior_min_containment, cfg.markov, cfg.warm_calls
        off = 0
        for agent_id, (agent_calls, agent_tokens) in by_agent.items():
            st = states.get(agent_id)
            if st is None:
                st = self.state_for(agent_id)
            prior, memo = None, None
            own = agent_id in models
            if not own and (with_peers or (mature and agent_id not in mature)):
                if agent_id in mature:  # its model was dropped meanwhile: it is no peer of itself
                    vocab = st.markov.vocab | set(agent_tokens)
                    prior = select_prior(vocab, {a: m for a, m in mature.items() if a != agent_id},
                                         min_containment, markov_cfg)
                else:
                    prior, memo = peers.prior(self._vocab(st, agent_tokens), min_containment, markov_cfg)
            markov = st.markov
            groups.append((st.ctx, agent_calls, agent_tokens, markov, prior, memo, None))
            warm = prior is not None or markov.mass >= warm_calls
            key = agent_id if own else self._model_key(agent_id, st)
            end = off + len(agent_calls)
            work.append((agent_id, st, off, end, key, warm, no_ids, agent_calls))
            off = end
        closed_by = append_batch(groups, rows, prevs, tokens)
        for g, closed in closed_by.items():
            w = work[g]
            work[g] = w[:6] + ([sid for sid, _s in closed], w[7])
        X_all = finish(rows)
        n_rows = off
        m_all = s_all = r_all = None
        if any(w[4] is not None for w in work):
            s_all, r_all, m_all = self._score(work, X_all, models, exact)
        findings: list[Finding] = []
        flagged_rows: list[bool] = []
        hit_work: set[int] = set()
        hits: dict[int, _Hit] = {}
        if m_all is not None:
            hit_rows = np.flatnonzero(m_all > 0)  # NaN (not scored) is no hit
            if len(hit_rows):
                flagged_rows = (m_all > 0).tolist()
                hit_list = hit_rows.tolist()
                ends = [w[3] for w in work]
                work_of_hit = np.searchsorted(ends, hit_rows, side="right").tolist()
                hit_work = set(work_of_hit)
                assert s_all is not None and r_all is not None
                hits = self._hits(X_all, s_all, r_all, hit_list, [work[w][4] for w in work_of_hit], models)
        max_pending = cfg.max_pending_rows
        trainable = (X_all[:, 0] <= cfg.train_max_surprisal).tolist()  # surprisal: no log transform
        xb = X_all.tobytes() if n_rows else b""
        for w_i, (agent_id, st, off, end, key, warm, closed_ids, agent_calls) in enumerate(work):
            flagged = None
            if w_i in hit_work:
                assert key is not None
                flagged = flagged_rows[off:end]
                model = models[key]
                status = self._status(agent_id, st)
                threshold6 = round(model.threshold, 6)
                for j, hit in enumerate(flagged):
                    if hit:
                        findings.append(self._finding(agent_calls[j], hits[off + j], model, key, status, threshold6))
                if key != agent_id:
                    self._judge_group(st, key, end - off, [c.session_id for c, hit in zip(agent_calls, flagged) if hit])
            elif key is not None and key != agent_id:
                self._judge_group(st, key, end - off)
            if st.frozen:
                if closed_ids:
                    self._commit(st, closed_ids)
                continue
            pending, tainted = st.pending, st.tainted
            if flagged is None:
                st.markov.learn_many(zip(prevs[off:end], tokens[off:end]))
            else:
                st.markov.learn_many((prevs[off + j], tokens[off + j]) for j, hit in enumerate(flagged) if not hit)
            ctx = st.ctx
            for j, c in enumerate(agent_calls, off):
                sid = c.session_id
                if flagged is not None and flagged[j - off]:
                    tainted.add(sid)
                    pending.pop(sid, None)
                    continue
                dests = c.destinations
                if dests:
                    # AgentContext.remember, inlined (a third of the calls name a destination).
                    known = ctx.destinations
                    for d in dests:
                        known[d] = None
                        known.move_to_end(d)
                        if len(known) > ctx.max_destinations:
                            known.popitem(last=False)
                if warm and trainable[j] and sid not in tainted:
                    sess_rows = pending.get(sid)
                    if sess_rows is None:
                        sess_rows = pending[sid] = []
                    if len(sess_rows) < max_pending:
                        sess_rows.append(xb[j * ROW_BYTES : (j + 1) * ROW_BYTES])
            if closed_ids:
                self._commit(st, closed_ids)
        margins = np.full(len(calls), np.nan)
        if with_margins and m_all is not None:
            # Rows are grouped by agent; margins go back to the calls' places in the batch.
            rank = {a: k for k, a in enumerate(by_agent)}
            margins[np.argsort([rank[c.agent_id] for c in calls], kind="stable")] = m_all
        if cfg.auto_retrain:
            keys = self.needs_retrain()
            if keys:
                self.retrain(keys)
        return findings, margins

    def _score(self, work: list[Any], X_all: np.ndarray, models: dict[str, ForestModel],
               exact: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forest score, range excess and margin of every row of ``X_all`` (NaN where the agent has no
        model yet). Rows of models that fit the forest bank are scored in one pass (each row walking
        its model's slot, with that slot's constants); the others one pass per model. Without
        ``exact``, banked rows proven to be no hits get NaN scores and margins (``_bank_margins``)."""
        n = len(X_all)
        banked = self._bank_for(models)
        # Per work item: its model's bank slot, -1 without a model, -2 for a model outside the bank.
        slot_of = [-1 if w[4] is None else banked[w[4]][0] if w[4] in banked else -2 for w in work]
        lens = [w[3] - w[2] for w in work]
        row_slot = np.repeat(np.array(slot_of, dtype=np.intp), lens)
        if min(slot_of) >= 0:  # every row is scored in the bank (the usual case once models are fitted)
            assert self._bank is not None and self._bank_consts is not None
            return self._bank_margins(X_all, row_slot, exact)
        s_all, r_all, m_all = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        sel = np.flatnonzero(row_slot >= 0)
        if len(sel):
            assert self._bank is not None and self._bank_consts is not None
            X_b, slots = X_all[sel], row_slot[sel]
            s_all[sel], r_all[sel], m_all[sel] = self._bank_margins(X_b, slots, exact)
        if -2 in slot_of:
            by_model: dict[str, list[int]] = {}
            for w_i, slot in enumerate(slot_of):
                if slot == -2:
                    by_model.setdefault(work[w_i][4], []).append(w_i)
            for key, w_ids in by_model.items():
                at = np.concatenate([np.arange(work[w][2], work[w][3]) for w in w_ids])
                s_all[at], r_all[at], m_all[at] = models[key].margins(X_all[at])
        return s_all, r_all, m_all

    def _bank_margins(self, X: np.ndarray, slots: np.ndarray, exact: bool
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``SlotConstants.margins`` of rows scored in the bank. Without ``exact``, the walk stops for
        rows whose range excess does not alert and whose path sum is proven past their model's
        hit limit (NaN score and margin); every other row's values are the exact ones."""
        bank, consts = self._bank, self._bank_consts
        assert bank is not None and consts is not None
        if exact:
            return consts.margins(slots, X, bank.path_lengths(X, slots))
        r = consts.excess(slots, X)
        paths = bank.path_lengths_bounded(X, slots, consts.hit_limits(slots, r))
        return consts.margins_given(slots, paths, r)

    def _hits(self, X_all: np.ndarray, s_all: np.ndarray, r_all: np.ndarray, rows: list[int], keys: list[str],
              models: dict[str, ForestModel]) -> dict[int, _Hit]:
        """Per hit row: its score, range excess, rounded features and explanation under its model
        (``keys``): one ``explain_many`` pass and one rounding of the numbers findings show
        (``py_round``: Python's ``round``, bit for bit) for all of a batch's hits, whatever their models."""
        X = X_all[rows]
        hit_models = [models[k] for k in keys]
        expl = explain_many(X, np.array([m.median for m in hit_models]), np.array([m.spread for m in hit_models]),
                            FEATURE_NAMES, self.config.explain_top)
        s, r = s_all[rows], r_all[rows]
        n = len(rows)
        rounded = py_round(np.concatenate([r, X.ravel()]), 4)
        features = rounded[n:].reshape(X.shape).tolist()
        return {row: _Hit(sc, ex, x4, e, s6, r4) for row, sc, ex, x4, e, s6, r4 in
                zip(rows, s.tolist(), r.tolist(), features, expl, py_round(s, 6).tolist(), rounded[:n].tolist())}

    def _bank_for(self, models: dict[str, ForestModel]) -> dict[str, tuple[int, ForestModel]]:
        """Slot in the forest bank and model, per key of every current model that fits the bank's
        geometry (the others are scored on their own), and ``_bank_consts`` for those slots.
        Recomputed only when a model was added, replaced or dropped (checked by comparing the
        models dict's items with the last ones: one C-level pass). Runs in ``observe``'s thread only."""
        items = list(models.items())  # one C-level copy: retrain() may swap models meanwhile
        if items == self._bank_items:
            return self._banked
        params = self.config.forest
        if self._bank is None:
            self._bank = ForestBank(params.n_estimators, params.n_estimators * (2 * params.max_samples - 1),
                                    N_FEATURES)
        bank = self._bank
        current = [(k, m) for k, m in items if bank.fits(m.flat)]
        slots = bank.sync([m.flat for _k, m in current])
        self._banked = {k: (slot, m) for (k, m), slot in zip(current, slots)}
        self._bank_consts = SlotConstants([m for _k, m in current], slots, len(bank.depth), N_FEATURES)
        self._bank_items = items
        return self._banked

    def _commit(self, st: _Agent, closed: list[str]) -> None:
        """Closed sessions: clean ones join the baseline window, tainted ones are forgotten."""
        if not closed:
            return
        chunks: list[list[bytes]] = []
        for sid in closed:
            rows = st.pending.pop(sid, None)
            if sid in st.tainted:
                st.tainted.discard(sid)
            elif rows and not st.frozen:
                chunks.append(rows)
        if chunks:  # one append for the batch: the window is the same as after one per session
            rows = chunks[0] if len(chunks) == 1 else list(chain.from_iterable(chunks))
            st.add_rows(rows)
            self._group_since += len(rows)

    def _finding(self, c: ToolCall, hit: _Hit, model: ForestModel, key: str, status: str, threshold6: float
                 ) -> Finding:
        score, excess, expl = hit.score, hit.excess, hit.explanation
        top = ", ".join(f"{e['feature']} {e['observed']:g} (usual {e['baseline']:g})" for e in expl)
        basis = "agent" if key == c.agent_id else key
        if score > model.threshold:
            why = f"score {score:.3f} > threshold {model.threshold:.3f}"
        else:
            why = f"a feature {excess:.2f} range-widths outside the baseline range"
        return Finding.about(
            c,
            detector=self.name,
            severity=finding_severity(self.config, score - model.threshold, excess, model.params.range_k),
            reason=f"call {c.token} unlike the baseline ({basis}): {why}; {top}",
            score=hit.score6,
            evidence={"explanation": expl, "threshold": threshold6, "model": basis,
                      "range_excess": hit.excess4,
                      "state": status, "features": {n: v for n, v in zip(FEATURE_NAMES, hit.features4)
                                                    if math.isfinite(v)}},
            dedup_key=f"{self.name}:{c.agent_id}:{c.session_id}",
        )
