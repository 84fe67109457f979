"""Scoring throughput: flattened forest vs scikit-learn, one row at a time and batched.

Prints calls/s for each method and batch size, and checks on the way that the scores agree.
Also times the whole IsolationForestDetector.observe (features + scoring + learning) per call.

    .venv/bin/python bench/scoring.py [--trees 100] [--rows 20000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from sklearn.ensemble import IsolationForest

from toolwatch.detectors.features import N_FEATURES
from toolwatch.detectors.iforest import FlatForest
from toolwatch.detectors.iforest_detector import ForestConfig, IsolationForestDetector
from toolwatch.detectors.sequence_detector import SequenceDetector
from toolwatch.simulate.traffic import batches, generate


def rate(fn, X: np.ndarray, batch: int, budget_s: float = 1.5) -> float:
    """Rows per second scoring X in slices of ``batch`` for about ``budget_s`` (best of the passes)."""
    n = 0
    best = 0.0
    t_end = time.perf_counter() + budget_s
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        for lo in range(0, len(X), batch):
            fn(X[lo : lo + batch])
        dt = time.perf_counter() - t
        n += 1
        best = max(best, len(X) / dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--rows", type=int, default=16384)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    train = rng.normal(size=(2048, N_FEATURES))
    X = rng.normal(scale=1.5, size=(args.rows, N_FEATURES))
    forest = IsolationForest(n_estimators=args.trees, max_samples=256, random_state=0).fit(train)
    flat = FlatForest(forest)
    diff = np.abs(flat.score_samples(X[:4096]) - forest.score_samples(X[:4096])).max()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {args.trees} trees, "
          f"max_samples 256, {N_FEATURES} features; max |flat - sklearn| = {diff:.1e}")
    one = X[:300]
    print(f"{'sklearn score_samples, one row per call':<44} {rate(forest.score_samples, one, 1):>12,.0f} rows/s")
    for b in (512, 4096):
        print(f"{f'sklearn score_samples, batch {b}':<44} {rate(forest.score_samples, X, b):>12,.0f} rows/s")
    for b in (512, 4096):
        print(f"{f'FlatForest.score_samples, batch {b}':<44} {rate(flat.score_samples, X, b):>12,.0f} rows/s")

    traffic = generate(seed=1, agents_per_archetype=3, sessions_per_agent=150)
    det = IsolationForestDetector(ForestConfig(auto_retrain=False))
    evs = list(batches(traffic.events, 512))
    warm, timed = evs[: len(evs) // 2], evs[len(evs) // 2 :]
    for b in warm:
        det.observe(b)
        det.retrain()  # what the collector's worker thread does
    t = time.perf_counter()
    n = 0
    for b in timed:
        det.observe(b)
        n += len(b.calls)
    dt = time.perf_counter() - t
    print(f"{'IsolationForestDetector.observe, hot path':<44} {n / dt:>12,.0f} calls/s "
          f"(features + scoring + learning, no retraining; 512-event batches)")
    seq = SequenceDetector()
    for b in warm:
        seq.observe(b)
    t = time.perf_counter()
    for b in timed:
        seq.observe(b)
    print(f"{'SequenceDetector.observe':<44} {n / (time.perf_counter() - t):>12,.0f} calls/s")


if __name__ == "__main__":
    main()
