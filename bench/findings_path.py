"""µs/span of the pipeline's own work around the detectors: the findings path and its accounting.

    .venv/bin/python bench/findings_path.py [--warm 60000] [--measure 60000] [--request 500] [--batch 2000]
                                            [--extra 0] [--reps 3]

The workload is bench/ingest.py's (50 agents, 6 tools), event time advancing at 75k spans/s as in
bench/stages.py. The real detectors are warmed, then run once over the measured calls to record
what they find for each micro-batch (the realistic finding rate); ``--extra`` adds that share of
synthetic findings per span on top (repeats of a few hundred dedup keys, so most group into open
alerts, as a noisy fleet's would). The timed part is everything the pipeline does per batch *except*
the detectors: a real Daemon (no receivers) whose detector list is swapped for one that hands back
the recorded findings, driven through ``Pipeline._process`` -- assembling the batch, the worker
thread hand-off, metrics, alert routing (SQLite store + outbox), per-agent metrics, batch
listeners (the retrainer is left out: refits are detector CPU) and lag. Rows below the total time
single parts on their own (``AlertRouter.route``, ``AgentMetrics.after_batch``) on fresh state.

Times are CPU time of the process (all threads), the median of ``--reps`` runs, each on a fresh
daemon and store. Only public entry points and ``Pipeline._process`` are used, so the same script
runs against another checkout for an A/B (PYTHONPATH=<tree with a toolwatch package>).
Prints figures; never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stages import workload  # noqa: E402
from toolwatch.collector.config import Config  # noqa: E402
from toolwatch.collector.daemon import Daemon, build_detectors  # noqa: E402
from toolwatch.detectors.base import Detector  # noqa: E402
from toolwatch.detectors.events import Batch, Finding, ToolCall  # noqa: E402


class Replay(Detector):
    """Hands back recorded findings, batch by batch: the detectors' answers without their CPU."""

    name = "replay"

    def __init__(self) -> None:
        self.answers: deque[list[Finding]] = deque()

    def observe(self, batch: Batch) -> list[Finding]:
        return list(self.answers.popleft())

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        return None


def synthetic(calls: list[ToolCall], share: float, rng: random.Random) -> list[Finding]:
    """About ``share`` findings per call, over 300 dedup keys (grouped repeats, some new alerts)."""
    out = []
    for c in calls:
        if rng.random() < share:
            k = rng.randrange(300)
            out.append(Finding.about(c, detector=("volume", "sequence", "args_shape")[k % 3],
                                     severity=("low", "medium", "high")[k % 3], reason="synthetic",
                                     score=rng.random() * 6, dedup_key=f"synthetic:{k}",
                                     evidence={"k": k, "rate": rng.random()}))
    return out


def record(args: argparse.Namespace) -> tuple[list[Detector], list[list[list[ToolCall]]], list[list[Finding]]]:
    """Warm real detectors, then record their findings for each measured batch (items of requests)."""
    _, calls = workload(args.warm + args.measure, args.request, args.rate)
    warm, measured = calls[: args.warm], calls[args.warm:]
    detectors = build_detectors(Config())
    for i in range(0, len(warm), args.request):
        chunk = warm[i: i + args.request]
        b = Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns)
        for det in detectors:
            det.observe(b)
    rng = random.Random(7)
    batches: list[list[list[ToolCall]]] = []
    answers: list[list[Finding]] = []
    for i in range(0, len(measured), args.batch):
        chunk = measured[i: i + args.batch]
        b = Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns)
        found: list[Finding] = []
        for det in detectors:
            found.extend(det.observe(b))
        found.extend(synthetic(chunk, args.extra, rng))
        batches.append([chunk[j: j + args.request] for j in range(0, len(chunk), args.request)])
        answers.append(found)
    return detectors, batches, answers


def fresh_daemon(tmp: str, detectors: list[Detector], replay: Replay) -> Daemon:
    cfg = Config(otlp_http="off", otlp_grpc="off", listen="127.0.0.1:0", data_dir=tmp,
                 fingerprint_key="bench", webhook_secret="bench")
    d = Daemon(cfg, detectors=detectors)
    d.pipeline.detectors = [replay]
    d.pipeline.batch_listeners.remove(d.retrainer)
    return d


def cpu(fn: Callable[[], None]) -> float:
    gc.collect()
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def run_pipeline(tmp: str, detectors: list[Detector], batches: list, answers: list) -> float:
    replay = Replay()
    d = fresh_daemon(tmp, detectors, replay)
    p = d.pipeline
    from toolwatch.collector import pipeline as pl

    async def drive() -> None:
        for items, found in zip(batches, answers):
            replay.answers.append(found)
            await p._process([pl._Item(list(calls), [], p.clock(), 0) for calls in items])

    try:
        return cpu(lambda: asyncio.run(drive()))
    finally:
        d.store.close()


def run_route(tmp: str, detectors: list[Detector], answers: list) -> float:
    d = fresh_daemon(tmp, detectors, Replay())
    try:
        return cpu(lambda: [d.router.route(list(found)) for found in answers])
    finally:
        d.store.close()


def run_agent_metrics(tmp: str, detectors: list[Detector], batches: list, answers: list) -> float:
    d = fresh_daemon(tmp, detectors, Replay())
    whole = [Batch(calls=[c for calls in items for c in calls]) for items in batches]
    try:
        return cpu(lambda: [d.agent_metrics.after_batch(b, found) for b, found in zip(whole, answers)])
    finally:
        d.store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warm", type=int, default=60_000)
    ap.add_argument("--measure", type=int, default=60_000)
    ap.add_argument("--request", type=int, default=500, help="spans per request (pipeline item)")
    ap.add_argument("--batch", type=int, default=2_000, help="spans per micro-batch")
    ap.add_argument("--rate", type=float, default=75_000, help="event-time spans/s")
    ap.add_argument("--extra", type=float, default=0.0, help="synthetic findings per span on top of the real ones")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    logging.getLogger("toolwatch.alerts").addHandler(logging.NullHandler())  # formatted, then dropped
    logging.getLogger("toolwatch.alerts").propagate = False

    detectors, batches, answers = record(args)
    n = sum(len(calls) for items in batches for calls in items)
    n_found = sum(len(f) for f in answers)
    print(f"toolwatch findings-path bench: {n:,} spans in {len(batches)} batches of {args.batch} "
          f"({args.request} per request), {n_found:,} findings ({n_found / n:.2%} per span, "
          f"{args.extra:.1%} synthetic)")
    rows: dict[str, list[float]] = {"pipeline around the detectors": [], "of which AlertRouter.route": [],
                                    "of which AgentMetrics.after_batch": []}
    for _ in range(args.reps):
        with tempfile.TemporaryDirectory() as tmp:
            rows["pipeline around the detectors"].append(run_pipeline(tmp + "/a", detectors, batches, answers))
            rows["of which AlertRouter.route"].append(run_route(tmp + "/b", detectors, answers))
            rows["of which AgentMetrics.after_batch"].append(run_agent_metrics(tmp + "/c", detectors, batches, answers))
    width = max(map(len, rows))
    for name, secs in rows.items():
        us = [s / n * 1e6 for s in secs]
        print(f"  {name:<{width}} {statistics.median(us):>7.2f} µs/span  (runs: {', '.join(f'{u:.2f}' for u in us)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
