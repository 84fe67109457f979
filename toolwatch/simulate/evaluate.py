"""Scoring detectors against labelled traffic (``traffic.generate``): the logic behind
``bench/detection/run.py`` and the CI floor test.

``replay(detectors, traffic, batch_size=512)`` feeds the events in time order, in micro-batches,
to every detector's ``observe`` (or ``observe_scored`` when it has one, to collect per-call scores
for ROC/PR curves) and returns one ``DetectorReport`` per detector plus ``"any"``, the union.
``score(traffic, findings, names)`` does the same scoring for findings gathered elsewhere (the
collector's real pipeline: ``pipeline_replay``).

Metrics, per detector:

- recall per attack kind: share of *incidents* (``Attack``) with at least one labelled event
  named in a finding's ``span_ids``;
- false-positive rate: benign events named in findings / benign events; and ``fpr_clean``, the
  same over sessions that carry no attack at all (an alert on the benign call right after a
  burst, in the burst's own session, counts in ``fpr`` but not in ``fpr_clean``);
- precision: labelled events named in findings / events named in findings;
- detection delay: seconds from an incident's first event to the first finding naming it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .traffic import ATTACK_KINDS, Attack, Traffic, batches

__all__ = ["DetectorReport", "replay", "score", "format_reports", "curve_points"]


@dataclass
class DetectorReport:
    """How one detector did on one traffic sample."""

    name: str
    benign_events: int = 0
    false_positives: int = 0
    clean_events: int = 0
    """Benign events in sessions without any attack."""
    clean_false_positives: int = 0
    true_positives: int = 0
    findings: int = 0
    incidents: dict[str, int] = field(default_factory=dict)
    detected: dict[str, int] = field(default_factory=dict)
    delays_s: dict[str, list[float]] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict, repr=False)
    """span_id -> time of the first finding naming it."""
    scores: list[tuple[float, str]] = field(default_factory=list, repr=False)
    """(score margin, attack kind or "") per scored call, when the detector reports scores."""

    @property
    def fpr(self) -> float:
        return self.false_positives / self.benign_events if self.benign_events else 0.0

    @property
    def fpr_clean(self) -> float:
        return self.clean_false_positives / self.clean_events if self.clean_events else 0.0

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 0.0

    def recall(self, kind: str) -> float:
        n = self.incidents.get(kind, 0)
        return self.detected.get(kind, 0) / n if n else 0.0

    def recall_where(self, attacks: Sequence[Attack]) -> float:
        """Share of the given incidents detected (e.g. only those on agents with little history)."""
        return sum(any(s in self.flagged for s in a.span_ids) for a in attacks) / len(attacks) if attacks else 0.0

    def median_delay_s(self, kind: str) -> float:
        d = self.delays_s.get(kind, [])
        return statistics.median(d) if d else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "fpr": self.fpr, "fpr_clean": self.fpr_clean, "precision": self.precision, "findings": self.findings,
            "recall": {k: self.recall(k) for k in self.incidents},
            "median_delay_s": {k: self.median_delay_s(k) for k in self.incidents},
        }


def replay(detectors: Sequence[Any], traffic: Traffic, batch_size: int = 512) -> dict[str, DetectorReport]:
    """Run ``detectors`` over ``traffic``; see the module docstring."""
    labels = traffic.labels
    flagged: dict[str, dict[str, int]] = {d.name: {} for d in detectors}  # span -> first finding time
    reports = {d.name: DetectorReport(d.name) for d in detectors}
    for batch in batches(traffic.events, batch_size):
        for d in detectors:
            rep = reports[d.name]
            if hasattr(d, "observe_scored"):
                found, margins = d.observe_scored(batch)
                for c, m in zip(batch.calls, margins):
                    if np.isfinite(m):
                        rep.scores.append((float(m), labels.get(c.span_id, "")))
            else:
                found = d.observe(batch)
            rep.findings += len(found)
            seen = flagged[d.name]
            for f in found:
                for s in f.span_ids:
                    seen.setdefault(s, f.time_ns)
    _fill(traffic, flagged, reports)
    return reports


def score(traffic: Traffic, findings: Sequence[Any], names: Sequence[str] = ()) -> dict[str, DetectorReport]:
    """Reports for findings gathered elsewhere (e.g. through the collector's pipeline): one per
    detector in ``names`` (even when it found nothing) or seen in ``findings``, plus ``"any"``."""
    flagged: dict[str, dict[str, int]] = {n: {} for n in names}
    reports = {n: DetectorReport(n) for n in names}
    for f in findings:
        seen = flagged.setdefault(f.detector, {})
        reports.setdefault(f.detector, DetectorReport(f.detector)).findings += 1
        for s in f.span_ids:
            seen[s] = min(f.time_ns, seen.get(s, f.time_ns))
    _fill(traffic, flagged, reports)
    return reports


def _fill(traffic: Traffic, flagged: dict[str, dict[str, int]], reports: dict[str, DetectorReport]) -> None:
    """Add the union ``"any"`` and compute every report's counts from span -> first-finding time."""
    labels = traffic.labels
    union: dict[str, int] = {}
    for seen in flagged.values():
        for s, t in seen.items():
            union[s] = min(t, union.get(s, t))
    flagged["any"] = union
    reports["any"] = DetectorReport("any", findings=sum(r.findings for r in reports.values()))
    n_benign = sum(1 for e in traffic.events if e.span_id not in labels)
    attacked = {a.session_id for a in traffic.attacks}
    clean = {e.span_id for e in traffic.events if e.session_id not in attacked}
    for name, seen in flagged.items():
        rep = reports[name]
        rep.flagged = seen
        rep.benign_events = n_benign
        rep.true_positives = sum(1 for s in seen if s in labels)
        rep.false_positives = len(seen) - rep.true_positives
        rep.clean_events = len(clean)
        rep.clean_false_positives = sum(1 for s in seen if s in clean)
        for a in traffic.attacks:
            rep.incidents[a.kind] = rep.incidents.get(a.kind, 0) + 1
            hits = [seen[s] for s in a.span_ids if s in seen]
            if hits:
                rep.detected[a.kind] = rep.detected.get(a.kind, 0) + 1
                rep.delays_s.setdefault(a.kind, []).append(max(0, min(hits) - a.time_ns) / 1e9)


def format_reports(reports: dict[str, DetectorReport], kinds: Sequence[str] = ATTACK_KINDS) -> str:
    """A plain-text table: per detector FPR, precision, and recall / median delay per kind."""
    head = f"{'detector':<10} {'FPR':>7} {'FPRcln':>7} {'prec':>6}  " + "  ".join(f"{k[:14]:>14}" for k in kinds)
    lines = [head, "-" * len(head)]
    for name, r in reports.items():
        cells = []
        for k in kinds:
            if r.incidents.get(k):
                cells.append(f"{r.recall(k):>5.2f} {r.median_delay_s(k):>6.1f}s ")
            else:
                cells.append(f"{'-':>14}")
        lines.append(f"{name:<10} {r.fpr:>7.4f} {r.fpr_clean:>7.4f} {r.precision:>6.3f}  "
                     + "  ".join(f"{c:>14}" for c in cells))
    lines.append("FPR: benign events flagged / benign events; FPRcln: the same in sessions without attacks; "
                 "cells: incident recall, median detection delay (event time)")
    return "\n".join(lines)


def curve_points(scores: Sequence[tuple[float, str]], kind: str | None = None) -> dict[str, np.ndarray]:
    """ROC (fpr, tpr) and PR (recall, precision) points over per-call score margins: attack calls
    (of ``kind`` only, when given) against benign calls; ``auc`` is the area under the ROC."""
    pairs = [(x, k) for x, k in scores if kind is None or k in ("", kind)]
    if not pairs:
        z = np.zeros(1)
        return {"fpr": z, "tpr": z, "recall": z, "precision": z, "auc": np.float64(0.0)}
    s = np.array([x for x, _ in pairs])
    y = np.array([bool(k) for _, k in pairs], dtype=bool)
    order = np.argsort(-s, kind="stable")
    y = y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    P, N = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr, tpr = np.concatenate([[0.0], fp / N]), np.concatenate([[0.0], tp / P])
    return {"fpr": fpr, "tpr": tpr, "recall": tp / P, "precision": tp / np.maximum(tp + fp, 1),
            "auc": np.float64(np.trapezoid(tpr, fpr))}
