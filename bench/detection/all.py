"""Detection quality of the whole daemon: every default detector, through the real pipeline.

Generates labelled traffic (``toolwatch.simulate.traffic``) for several seeds, replays it through
the collector's ``Pipeline`` with ``build_detectors(Config())`` (what an operator gets, with the
daemon's off-path ``Retrainer`` for the IsolationForest), and prints
per-detector and union FPR / precision / recall and median delay per attack kind, counting as
alerts only findings at or above ``--min-severity`` (default ``medium``: info/low findings are
signals for the API and dashboards, not pages). The same run with ``--min-severity info`` is the
naive baseline: everything any detector said.

    .venv/bin/python bench/detection/all.py [--seeds 1 2 3] [--min-severity medium]

The CI floor test (tests/integration/detection/test_detection_floor.py) runs one small seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import pooled  # noqa: E402

from toolwatch.detectors.events import SEVERITIES  # noqa: E402
from toolwatch.simulate.evaluate import format_reports  # noqa: E402
from toolwatch.simulate.pipeline_replay import pipeline_findings, score_at  # noqa: E402
from toolwatch.simulate.traffic import ATTACK_KINDS, generate  # noqa: E402

TARGET_RECALL = 0.95
TARGET_FPR = 0.005


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--agents", type=int, default=2, help="agents per archetype")
    ap.add_argument("--sessions", type=int, default=60, help="sessions per agent")
    ap.add_argument("--min-severity", choices=SEVERITIES, default="medium")
    ap.add_argument("--baseline", action="store_true", help="also print the all-severities (info) union")
    ap.add_argument("--batch-max-size", type=int, default=512,
                    help="the pipeline's micro-batch size in the replay (the daemon's default is 4096, but a replay "
                         "cuts every batch full and detectors learn from a batch after scoring it: on this "
                         "traffic 4096 is two batches per seed; docs/detection-quality.md)")
    args = ap.parse_args()
    runs, base_runs = [], []
    for seed in args.seeds:
        t = time.perf_counter()
        traffic = generate(seed=seed, agents_per_archetype=args.agents, sessions_per_agent=args.sessions)
        names, findings = pipeline_findings(traffic, batch_max_size=args.batch_max_size)
        reps = score_at(traffic, names, findings, args.min_severity)
        runs.append(reps)
        print(f"\nseed {seed}: {len(traffic.events)} events, {len(traffic.attacks)} incidents, "
              f"alerts >= {args.min_severity}, {time.perf_counter() - t:.1f} s")
        print(format_reports(reps))
        if args.baseline:
            base_runs.append(score_at(traffic, names, findings, "info"))
    total = pooled(runs)
    print(f"\npooled over seeds {args.seeds}, alerts >= {args.min_severity}")
    print(format_reports(total))
    if base_runs:
        base = pooled(base_runs)
        print(f"\nbaseline (every finding, >= info) pooled: union FPR {base['any'].fpr:.4f}, "
              f"precision {base['any'].precision:.3f}")
    ok = True
    print(f"\nunion target: recall >= {TARGET_RECALL} per kind, FPR <= {TARGET_FPR} on every seed")
    for seed, reps in zip(args.seeds, runs):
        u = reps["any"]
        low = [k for k in ATTACK_KINDS if u.incidents.get(k) and u.recall(k) < TARGET_RECALL]
        met = not low and u.fpr <= TARGET_FPR
        ok &= met
        print(f"  seed {seed}: FPR {u.fpr:.4f}, min recall "
              f"{min(u.recall(k) for k in u.incidents):.2f} {'met' if met else 'NOT met: ' + ', '.join(low)}")
    print("all seeds meet the target" if ok else "target not met on every seed")


if __name__ == "__main__":
    main()
