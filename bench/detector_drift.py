"""Do the detectors get slower, or bigger, the longer a daemon runs? Per window of calls, in one process.

    .venv/bin/python bench/detector_drift.py [--calls 3000000] [--window 250000] [--batch 4096] [--rate 75000]

The soak (bench/ingest.py --soak) shows every detector's µs/span rising over 150 s, but there the
machine's other processes, the queue and refits all move at once. Here the ``fleet`` workload
(bench/workloads.py, re-stamped per request as the soak's load generators do, event time at
``--rate`` spans/s) goes through the normaliser, the OTLP worker's column frames and every detector
in micro-batches of ``--batch``, as in the daemon, with nothing else running. After each window of
``--window`` calls it prints:

- each detector's thread CPU µs/span over the window (``needs_retrain`` included, as the daemon's
  Retrainer asks after every batch), and their total;
- ``ref``: the CPU ms of a fixed piece of interpreter work (a dict of 200,000 strings and their sort)
  in a fresh process. The machine's speed drifts by tens of percent within minutes; ``total/ref``
  is the detectors' cost in units of that work, which drifts only if the detectors do;
- the process's RSS now (not its peak) and the IsolationForest's models: the ``ForestModel`` objects
  alive in the process against the distinct ones the detector holds (group models are shared
  between keys), so a refit that left its old model reachable would show.

Models are refitted at each window's end, in this process and off the clock (the daemon fits in its
refit worker), for every key the detectors ask for (``stages.fit``). The first windows include the learning
phase and the first fits; compare the later ones. Prints figures; never pass/fail.
"""

from __future__ import annotations

import argparse
import gc
import marshal
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stages  # noqa: E402
import workloads as wl  # noqa: E402
from toolwatch.collector.config import Config  # noqa: E402
from toolwatch.collector.daemon import build_detectors  # noqa: E402
from toolwatch.collector.interpreter import InterpreterSettings  # noqa: E402
from toolwatch.collector.normalize import Normalizer  # noqa: E402
from toolwatch.collector.receivers import worker_frames  # noqa: E402
from toolwatch.detectors.iforest import ForestModel  # noqa: E402


REFERENCE = ("import random, time\n"
             "words = [str(random.Random(0).random() + k) for k in range(200_000)]\n"
             "t0 = time.thread_time()\n"
             "table = {w: len(w) for w in words}\n"
             "sorted(words)\n"
             "print(time.thread_time() - t0)\n")


def reference_ms() -> float:
    """CPU ms of a fixed piece of interpreter work in a fresh process: the machine's speed right now,
    untouched by this process's heap (the same work in here slowed as the detectors' state grew)."""
    out = subprocess.run([sys.executable, "-c", REFERENCE], capture_output=True, text=True, check=True)
    return float(out.stdout) * 1e3


def rss_mb() -> int:
    """Resident set size now, in MB (``ru_maxrss`` would be the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE") // 2**20


def live_models(detectors: list[Any]) -> str:
    """The IsolationForest's model count against the ``ForestModel`` objects alive in the process."""
    det = next((d for d in detectors if d.name == "iforest"), None)
    if det is None:
        return ""
    alive = sum(1 for o in gc.get_objects() if type(o) is ForestModel)
    held = len({id(m) for m in det._models.values()})
    return f"iforest models {held} (alive {alive})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=3_000_000)
    ap.add_argument("--window", type=int, default=250_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rate", type=float, default=75_000, help="event-time spans/s")
    ap.add_argument("--pool", type=int, default=400_000, help="fleet calls encoded once, re-stamped per request")
    args = ap.parse_args(argv)
    InterpreterSettings(Config().pipeline.gc_young_threshold, 0).apply()  # the GC as the daemon runs it
    traffic = wl.FleetTraffic(wl.fleet_templates(args.pool, args.batch, 0, 1, wl.FleetConfig()), rate=args.rate)
    norm, canon = Normalizer(), worker_frames.Canon()
    detectors = build_detectors(Config())
    print(f"detector drift bench: {args.calls:,} fleet calls in batches of {args.batch:,}, event rate {args.rate:,.0f}/s, "
          f"a line per {args.window:,} calls (µs/span of thread CPU; ref: ms of the reference work)")
    start_ns = time.time_ns() - int(args.calls / args.rate * 1e9)
    spent = dict.fromkeys((d.name for d in detectors), 0.0)
    clock = time.thread_time
    done = in_window = i = 0
    while done < args.calls:
        body = traffic.body(i, now_ns=start_ns + int(done / args.rate * 1e9))
        i += 1
        calls = norm.normalize(stages.decode(body)).calls
        cols = marshal.loads(marshal.dumps(worker_frames.calls_to_columns(calls)))
        batch = stages.batch_of(worker_frames.columns_to_calls(cols, canon))
        for det in detectors:
            t0 = clock()
            det.observe(batch)
            if hasattr(det, "needs_retrain"):
                det.needs_retrain()
            spent[det.name] += clock() - t0
        done += len(batch.calls)
        in_window += len(batch.calls)
        if in_window >= args.window or done >= args.calls:
            ref = reference_ms()
            total = sum(spent.values()) / in_window * 1e6
            top = sorted(spent.items(), key=lambda kv: -kv[1])[:6]
            print(f"{done:>10,}  total {total:6.2f}  ref {ref:5.1f}  total/ref {total / ref:5.3f}  "
                  f"RSS {rss_mb():,} MB  {live_models(detectors)}")
            print("            " + "  ".join(f"{name} {s / in_window * 1e6:.2f}" for name, s in top))
            spent = dict.fromkeys(spent, 0.0)
            in_window = 0
            stages.fit(detectors, None, quiet=True)  # every model asked for, as a retrainer given time
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
