"""The forest bank's walk: the compiled kernel against NumPy's level-by-level gathers, same rows.

    .venv/bin/python bench/forest_walk.py [--warm 300000] [--measure 80000] [--batch 4096] [--rounds 3]

An IsolationForest detector sees ``--warm`` calls of the ``fleet`` workload (bench/workloads.py), its
models are fitted (as a daemon's retrainer would, given time), and the rows it scores in the next
``--measure`` calls are recorded with their slots and hit limits. Then the same rows are walked,
alternating, by:

- ``compiled, bounded``: what ``observe`` runs (``ForestBank.path_lengths_bounded``: a row stops once
  proven no hit);
- ``compiled, every tree``: ``ForestBank.path_lengths`` (what ``observe_scored`` runs);
- ``NumPy, every tree``: the naive baseline, ``iforest._walk``'s level-by-level gathers over the same
  bank (its nodes as ``NODE`` records, converted once, untimed) and NumPy's sum over the trees:
  how the bank was walked before the kernel. Its sums are checked equal to the kernel's.

Times are CPU µs per row (process time), the best and the median of ``--rounds``. Prints figures;
never pass/fail.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stages  # noqa: E402
from toolwatch.collector.config import Config  # noqa: E402
from toolwatch.collector.daemon import build_detectors  # noqa: E402
from toolwatch.detectors.iforest import NODE, ForestBank, _walk  # noqa: E402


def numpy_walk(nodes: np.ndarray, bank: ForestBank, X: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Every tree of every row's slot, level by level with ``np.take`` (the bank's walk before the kernel)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, F = X.shape
    rows = np.tile(np.arange(n, dtype=np.intp) * F, bank.n_trees)
    idx = bank.roots.take(slots, axis=1).ravel()
    depth = int(bank.depth[slots].max())
    return _walk(nodes, bank.leaf_value, X.ravel(), rows, idx, depth).reshape(bank.n_trees, n).sum(axis=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warm", type=int, default=300_000)
    ap.add_argument("--measure", type=int, default=80_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    _bodies, calls = stages.workload(args.warm + args.measure, args.batch, 75_000, "fleet", 0.001)
    calls = stages.as_daemon_sees(calls, args.batch)
    det = next(d for d in build_detectors(Config()) if d.name == "iforest")  # as the daemon configures it
    stages.warm_up([det], calls[: args.warm], args.batch, True, None, quiet=True)
    seen: list[tuple[ForestBank, np.ndarray, np.ndarray, np.ndarray]] = []
    bounded = ForestBank.path_lengths_bounded

    def spy(bank: ForestBank, X: np.ndarray, slots: np.ndarray, limit: np.ndarray, *rest: object) -> np.ndarray:
        seen.append((bank, np.array(X, dtype=np.float32), np.array(slots), np.array(limit)))
        return bounded(bank, X, slots, limit, *rest)

    ForestBank.path_lengths_bounded = spy  # type: ignore[method-assign]
    try:
        rest = calls[args.warm :]
        for i in range(0, len(rest), args.batch):
            det.observe(stages.batch_of(rest[i : i + args.batch]))
    finally:
        ForestBank.path_lengths_bounded = bounded  # type: ignore[method-assign]
    if not seen:
        print("no banked rows were scored: raise --warm")
        return 1
    bank = seen[-1][0]
    as_node = np.empty(len(bank.nodes), dtype=NODE)  # the bank's records with absolute children, for _walk
    as_node["child"] = np.arange(len(bank.nodes)) + bank.nodes["rel"]
    as_node["feature"] = bank.nodes["feature"]
    as_node["threshold"] = bank.nodes["threshold"]
    n = sum(len(x) for _b, x, _s, _l in seen)
    for b, X, s, _l in seen:
        if numpy_walk(as_node, b, X, s).tobytes() != b.path_lengths(X, s).tobytes():
            raise SystemExit("the compiled walk's sums differ from NumPy's: a bug")
    ways = {
        "compiled, bounded (observe)": lambda b, X, s, lim: b.path_lengths_bounded(X, s, lim),
        "compiled, every tree": lambda b, X, s, lim: b.path_lengths(X, s),
        "NumPy, every tree (naive)": lambda b, X, s, lim: numpy_walk(as_node, b, X, s),
    }
    spent: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            gc.collect()
            t0 = time.process_time()
            for b, X, s, lim in seen:
                way(b, X, s, lim)
            spent[name].append((time.process_time() - t0) / n * 1e6)
    print(f"forest bank walk: {n:,} rows in {len(seen)} batches of up to {args.batch:,}, {len(bank.depth)} slots "
          f"({bank.nodes.nbytes / 1e6:.0f} MB of nodes), {bank.n_trees} trees, after {args.warm:,} fleet calls")
    for name, got in spent.items():
        print(f"  {name:<30} best {min(got):6.2f}  median {statistics.median(got):6.2f} µs/row")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
