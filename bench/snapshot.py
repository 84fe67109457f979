"""What one detector-state snapshot costs the daemon's event loop, per detector, after a fleet warm-up.

    .venv/bin/python bench/snapshot.py [--warm 300000] [--workload fleet] [--rounds 3]

The pipeline saves every detector's ``snapshot()`` as JSON into SQLite every
``pipeline.snapshot_interval_s`` (30 s), on the event loop: while it runs, no batch is processed.
Per detector: CPU ms of ``snapshot()`` and of ``Store.save_state`` (msgspec's JSON, collector/state_json.py,
and SQLite), medians of ``--rounds``, and the JSON size. The naive baseline, in the same run, writes
the same state with float matrices as nested lists of float64 (how state was written before
detectors/array_codec.py) by ``json.dumps`` (as before collector/state_json.py): its cost is ``tolist``
of each matrix plus ``json.dumps`` and the SQLite write of that text.
Per-detector figures are taken with garbage collection paused as ``Pipeline.save_state`` pauses it
(collector/gc_pause.py; code from before it had no pause, and this bench then times without one).
``Pipeline.save_state`` is then timed itself, all detectors in one go, as the daemon runs it; the
last line times a snapshot process (``pipeline.snapshot_process``, collector/snapshot_process.py).
Timed with the daemon's generation-0 GC threshold (``pipeline.gc_young_threshold``) unless
``--gc-young-threshold`` says otherwise (0: Python's default, as this bench timed before).
Models are fitted after the warm-up (as in ``stages.py --fit``). Prints figures; never pass/fail.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stages  # noqa: E402
import workloads as wl  # noqa: E402
from toolwatch.collector.alerts import AlertRouter  # noqa: E402
from toolwatch.collector.config import Config  # noqa: E402
from toolwatch.collector.daemon import build_detectors  # noqa: E402
from toolwatch.collector.interpreter import InterpreterSettings  # noqa: E402
from toolwatch.collector.metrics import Metrics  # noqa: E402
from toolwatch.collector.pipeline import Pipeline  # noqa: E402
from toolwatch.collector.store import Store  # noqa: E402
from toolwatch.detectors.array_codec import decode_matrix  # noqa: E402

try:
    from toolwatch.collector.gc_pause import gc_paused
except ImportError:  # code from before the pause (run against an older checkout to compare)
    gc_paused = nullcontext


def _decoded(state: Any) -> Any:
    """The state with each base64 matrix as a NumPy array (untimed: the naive side starts from arrays)."""
    if isinstance(state, dict):
        if "f8" in state and "shape" in state:
            return decode_matrix(state, "bench")
        return {k: _decoded(v) for k, v in state.items()}
    return [_decoded(v) for v in state] if isinstance(state, list) else state


def _matrices(state: Any) -> list[np.ndarray]:
    if isinstance(state, np.ndarray):
        return [state]
    values = state.values() if isinstance(state, dict) else state if isinstance(state, list) else ()
    return [m for v in values for m in _matrices(v)]


def _as_lists(state: Any) -> Any:
    if isinstance(state, np.ndarray):
        return state.tolist()
    if isinstance(state, dict):
        return {k: _as_lists(v) for k, v in state.items()}
    return [_as_lists(v) for v in state] if isinstance(state, list) else state


def _save_json(store: Store, name: str, state: Any) -> None:
    """``Store.save_state`` as it was before msgspec: ``json.dumps`` text."""
    store.state_db.execute(
        "INSERT INTO detector_state(name, state, updated_at) VALUES (?,?,?)"
        " ON CONFLICT(name) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at",
        (name, json.dumps(state, separators=(",", ":")), 0.0))


def _ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.process_time()
    out = fn()
    return 1e3 * (time.process_time() - t), out


def process_rounds(detectors: list, store: Store, calls: list, batch: int, rounds: int) -> None:
    """``pipeline.snapshot_process``: what the fork costs the daemon, what the child takes, and what
    the detectors' work costs while a child runs (pages the daemon writes are copied then) against
    the same work with no child, alternating."""
    from toolwatch.collector.snapshot_process import fork_snapshot
    from toolwatch.detectors.events import Batch

    def observe() -> None:
        for i in range(0, len(calls), batch):
            b = Batch(calls=calls[i : i + batch], listings=[])
            for det in detectors:
                det.observe(b)

    got: list[tuple[float, float, float, float, float]] = []
    for _ in range(rounds):
        alone, _ = _ms(observe)
        wall = time.perf_counter()
        fork_ms, child = _ms(lambda: fork_snapshot(detectors, store.state_path, 0, store.reserve_generation(), 0.0))
        beside, _ = _ms(observe)
        error = child.wait(600)
        wall = time.perf_counter() - wall
        assert error is None, error
        got.append((fork_ms, 1e3 * child.cpu_s, 1e3 * wall, beside, alone))
    fork_ms, child_ms, wall_ms, beside, alone = (statistics.median(r[i] for r in got) for i in range(5))
    print(f"snapshot process: the fork {fork_ms:.1f} ms of the daemon's CPU; the child {child_ms:.0f} ms CPU, "
          f"{wall_ms:.0f} ms from fork to end; {len(calls):,} calls through the detectors meanwhile "
          f"{beside:.0f} ms CPU against {alone:.0f} ms with no child (medians of {rounds})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warm", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rate", type=float, default=75_000, help="event-time spans/s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workload", choices=wl.WORKLOADS, default=wl.DEFAULT_WORKLOAD, help="see bench/workloads.py")
    ap.add_argument("--gc-young-threshold", type=int, default=Config().pipeline.gc_young_threshold,
                    help="generation-0 GC threshold while timing, as the daemon sets it (0: Python's default, 700)")
    ap.add_argument("--process-calls", type=int, default=20_000,
                    help="calls the detectors observe while a snapshot process runs (and alone, to compare)")
    args = ap.parse_args(argv)

    _, calls = stages.workload(args.warm, args.batch, args.rate, args.workload, 0.001)
    detectors = build_detectors(Config())
    stages.warm_up(detectors, calls, args.batch, True, None, quiet=True)
    print(f"toolwatch snapshot bench: state after {len(calls):,} calls of workload {wl.describe(args.workload, 0.001)}")
    interpreter = InterpreterSettings(args.gc_young_threshold, 0)
    interpreter.apply()  # as the daemon runs (pipeline.gc_young_threshold)
    print(f"GC thresholds while timing: {gc.get_threshold()}")
    print(f"{'detector':14s} {'snapshot':>9s} {'save':>8s} {'total':>8s} {'MB':>7s}"
          f" | naive: {'tolist':>8s} {'save':>8s} {'total':>8s} {'MB':>7s}   (CPU ms, medians; save = JSON + SQLite)")
    sums = [0.0, 0.0]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "state.db")
        for det in detectors:
            rounds: list[tuple[float, float, float, float]] = []
            for _ in range(args.rounds):
                with gc_paused():
                    t_snap, state = _ms(det.snapshot)
                    t_save, _ = _ms(lambda s=state: store.save_state(det.name, s))
                arrays = _decoded(state)
                with gc_paused():
                    t_lists, _ = _ms(lambda a=_matrices(arrays): [m.tolist() for m in a])
                    plain = _as_lists(arrays)
                    t_save_old, _ = _ms(lambda p=plain: _save_json(store, det.name, p))
                rounds.append((t_snap, t_save, t_lists, t_save_old))
            snap, save, lists, save_old = (statistics.median(r[i] for r in rounds) for i in range(4))
            mb, mb_old = (len(json.dumps(x, separators=(",", ":"))) / 1e6 for x in (state, plain))
            # The naive side's snapshot() is this one's (its base64 included: a slight overstatement).
            sums[0] += snap + save
            sums[1] += snap + lists + save_old
            print(f"{det.name:14s} {snap:9.1f} {save:8.1f} {snap + save:8.1f} {mb:7.2f}"
                  f" | naive: {lists:8.1f} {save_old:8.1f} {snap + lists + save_old:8.1f} {mb_old:7.2f}")
        print(f"all detectors: {sums[0]:.0f} ms of the event loop per snapshot (naive, matrices as lists: {sums[1]:.0f} ms)")
        metrics = Metrics()
        pipeline = Pipeline(detectors, AlertRouter(store, metrics, [], group_window_ns=0), store, metrics)
        whole = statistics.median(_ms(pipeline.save_state)[0] for _ in range(args.rounds))
        print(f"Pipeline.save_state: {whole:.0f} ms (all detectors, median of {args.rounds})")
        process_rounds(detectors, store, calls[-args.process_calls:], args.batch, args.rounds)
    interpreter.restore()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
