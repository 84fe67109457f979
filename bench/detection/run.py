"""Detection quality of the ML detectors on labelled synthetic traffic, over several seeds.

Replays ``toolwatch.simulate.traffic`` in time order, 512-event micro-batches, through
``SequenceDetector`` and ``IsolationForestDetector`` (and their union, ``any``); prints precision,
false-positive rate, recall and median detection delay per attack kind, for each seed and pooled,
plus recall on agents with little history; writes ROC and PR curves (per-call scores) to a PNG.

    .venv/bin/python bench/detection/run.py [--seeds 1 2 3] [--plot roc_pr.png]

The CI floor test (tests/unit/detectors/test_eval_floor.py) runs the same code on one small seed.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from toolwatch.detectors.iforest_detector import IsolationForestDetector  # noqa: E402
from toolwatch.detectors.sequence_detector import SequenceDetector  # noqa: E402
from toolwatch.simulate.evaluate import DetectorReport, curve_points, format_reports, replay  # noqa: E402
from toolwatch.simulate.traffic import ATTACK_KINDS, generate  # noqa: E402

OWNED = ("exfiltration", "sequence_hijack", "volume_spike", "tool_shadowing")
"""Kinds the statistical detectors are expected to catch (shadowing: the call to the shadow tool)."""


def pooled(runs: list[dict[str, DetectorReport]]) -> dict[str, DetectorReport]:
    out: dict[str, DetectorReport] = {}
    for name in runs[0]:
        p = DetectorReport(name)
        for r in (run[name] for run in runs):
            p.benign_events += r.benign_events
            p.false_positives += r.false_positives
            p.clean_events += r.clean_events
            p.clean_false_positives += r.clean_false_positives
            p.true_positives += r.true_positives
            p.findings += r.findings
            for k, v in r.incidents.items():
                p.incidents[k] = p.incidents.get(k, 0) + v
            for k, v in r.detected.items():
                p.detected[k] = p.detected.get(k, 0) + v
            for k, v in r.delays_s.items():
                p.delays_s.setdefault(k, []).extend(v)
            p.scores.extend(r.scores)
        out[name] = p
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--agents", type=int, default=3, help="agents per archetype")
    ap.add_argument("--sessions", type=int, default=150, help="sessions per agent")
    ap.add_argument("--new-agents", type=int, default=2, help="little-data agents per archetype")
    ap.add_argument("--new-sessions", type=int, default=20, help="sessions of each little-data agent")
    ap.add_argument("--plot", default="roc_pr.png")
    args = ap.parse_args()
    runs = []
    newcomer: dict[str, list[float]] = {"sequence": [], "iforest": [], "any": []}
    for seed in args.seeds:
        t = time.perf_counter()
        traffic = generate(seed=seed, agents_per_archetype=args.agents, sessions_per_agent=args.sessions,
                           new_agents_per_archetype=args.new_agents, new_agent_sessions=args.new_sessions)
        reps = replay([SequenceDetector(), IsolationForestDetector()], traffic)
        runs.append(reps)
        few = [a for a in traffic.attacks if "-new" in a.agent_id and a.kind in OWNED]
        for name in newcomer:
            newcomer[name].append(reps[name].recall_where(few))
        n_calls = sum(1 for _ in traffic.calls)
        print(f"\nseed {seed}: {len(traffic.events)} events ({n_calls} calls), {len(traffic.attacks)} incidents, "
              f"{time.perf_counter() - t:.1f} s")
        print(format_reports(reps))
    total = pooled(runs)
    print(f"\npooled over seeds {args.seeds}")
    print(format_reports(total))
    print("\nrecall on owned kinds for agents with only "
          f"{args.new_sessions} sessions (fleet priors / group models):")
    for name, v in newcomer.items():
        print(f"  {name:<9} " + " ".join(f"{x:.2f}" for x in v))
    print("\nowned kinds (statistical):", ", ".join(OWNED), "| left to rules:",
          ", ".join(k for k in ATTACK_KINDS if k not in OWNED))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in ("sequence", "iforest"):
        for kind in OWNED:
            p = curve_points(total[name].scores, kind)
            axes[0].plot(p["fpr"], p["tpr"], label=f"{name} / {kind} (AUC {float(p['auc']):.3f})")
            axes[1].plot(p["recall"], p["precision"], label=f"{name} / {kind}")
    axes[0].set(xscale="log", xlim=(1e-4, 1), xlabel="false-positive rate (benign calls)",
                ylabel="true-positive rate (attack calls)", title="ROC per call")
    axes[1].set(xlabel="recall (attack calls)", ylabel="precision", title="precision-recall per call")
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
