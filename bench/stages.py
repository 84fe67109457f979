"""Where one span's CPU goes: µs/span per ingest stage and per detector, in one process, no network.

    .venv/bin/python bench/stages.py [--warm 60000] [--measure 40000] [--batch 500] [--rate 75000] [--only NAME]
                                     [--fit]

The workload is ``--workload`` from bench/workloads.py (default ``fleet``: 200 agents with
routines and rare anomalies; ``random``: make_body's 50 agents, 6 tools, 500 never-ending sessions;
``routine``: 40 agents alternating two tools), 13 attributes per span. Event time advances at
``--rate`` spans/s so windows and sessions turn over as they would under that load.
Every detector first sees ``--warm`` calls (so baselines leave their learning phase), then the
next ``--measure`` calls are timed, detector by detector, in micro-batches of ``--batch``.
The calls are the daemon's: they go through the OTLP worker's column frames and back with one
``worker_frames.Canon`` (so equal agents, tools and sessions are one string object, as detectors
see them in a daemon with ``otlp_processes`` >= 1; ``--fresh-strings`` keeps the normaliser's own
objects), each micro-batch is one ``Batch`` that every detector shares, declared in time order as
the pipeline does, and the garbage collector runs at the daemon's young threshold
(``pipeline.gc_young_threshold``).
Then the next ``--measure`` calls go through the detectors interleaved, each batch through every
detector in turn as the pipeline runs them (the ``interleaved`` column): timed one at a time, a
detector finds its state still in the CPU caches, which in the daemon the other detectors' work
(above all the IsolationForest's walk of its forest bank) has evicted.
Times are CPU time of this process, so neighbours on a shared machine inflate them less.
The implied single-core ceiling is 1e6 / (sum of µs/span). A naive baseline (one call per
batch through every detector) runs on a slice of the same calls in the same run.

The daemon refits models off the hot path (``collector/retrain.py``), so after the warm-up no
detector has fitted models unless ``--fit`` is given: it then fits every model the detectors ask
for (``retrain()`` until ``needs_retrain()`` is empty; its CPU time is printed, not in the total)
before the last warm-up batch (which so pays the one-off loading of the new models), and the
timed runs also make the daemon's per-batch ``needs_retrain()`` call. Scoring then walks real
forests, as in a daemon that has been up a while. With the default warm-up a third of the fleet's
agents are still learning; ``--warm 300000`` comes close to the soak's steady state.
Prints figures; never pass/fail.
"""

from __future__ import annotations

import argparse
import gc
import marshal
import sys
import time
from operator import attrgetter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

import workloads as wl  # noqa: E402
from toolwatch.collector import otlp  # noqa: E402
from toolwatch.collector.config import Config  # noqa: E402
from toolwatch.collector.daemon import build_detectors  # noqa: E402
from toolwatch.collector.interpreter import InterpreterSettings  # noqa: E402
from toolwatch.collector.event_time import EventTimeRule, judge  # noqa: E402
from toolwatch.collector.metrics import Metrics  # noqa: E402
from toolwatch.collector.normalize import Normalizer  # noqa: E402
from toolwatch.collector.receivers import worker_frames  # noqa: E402
from toolwatch.detectors.events import Batch, ToolCall  # noqa: E402


def workload(n: int, batch: int, rate: float, name: str = "random",
             anomaly_rate: float = 0.001) -> tuple[list[bytes], list[ToolCall]]:
    """Encoded bodies, and the calls they carry with event time advancing at ``rate``. ``random``
    cycles 8 bodies (as this bench always did, and the default here: bench/findings_path.py and
    findings_path_dump.py import this); ``fleet`` and ``routine`` cover the ``n`` calls once."""
    if name == "random":
        bodies = [wl.make_body(batch, seed) for seed in range(8)]
    else:
        bodies = wl.bodies(name, n, batch, anomaly_rate=anomaly_rate, rate=rate)
    norm = Normalizer()
    calls: list[ToolCall] = []
    start = time.time_ns() - int(n / rate * 1e9)
    step = int(1e9 / rate)
    i = 0
    while len(calls) < n:
        for c in norm.normalize(decode(bodies[i % len(bodies)])).calls:
            c.time_ns = start + len(calls) * step
            calls.append(c)
        i += 1
    return bodies, calls[:n]


def as_daemon_sees(calls: list[ToolCall], batch: int) -> list[ToolCall]:
    """``calls`` as the daemon rebuilds them from an OTLP worker's frames, ``batch`` per frame, with
    one ``Canon`` for the run: detectors' dict lookups then compare identical string objects, as
    in the daemon (fresh strings per call would charge them a character compare per lookup)."""
    canon = worker_frames.Canon()
    out: list[ToolCall] = []
    for i in range(0, len(calls), batch):
        cols = marshal.loads(marshal.dumps(worker_frames.calls_to_columns(calls[i : i + batch])))
        out.extend(worker_frames.columns_to_calls(cols, canon))
    return out


def batch_of(chunk: list[ToolCall]) -> Batch:
    """One micro-batch as the pipeline hands it to the detectors: its calls in time order, declared."""
    b = Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns)
    b.calls_in_time_order()
    return b


def decode(body: bytes) -> object:
    return otlp.decode_export(body, otlp.PROTOBUF).request


def per_span(fn, items: list, n_spans: int) -> float:
    """CPU µs per span (process time: on a shared machine wall time mostly measures the neighbours)."""
    gc.collect()
    t0 = time.process_time()
    for it in items:
        fn(it)
    return (time.process_time() - t0) / n_spans * 1e6


def fit(detectors: list, only: list[str] | None, quiet: bool = False) -> None:
    """Fit every model the detectors ask for, as the daemon's retrainer would given time."""
    for det in detectors:
        if (only and det.name not in only) or not hasattr(det, "needs_retrain"):
            continue
        t0 = time.process_time()
        fitted: list[str] = []
        for _ in range(10):  # agents first, then the groups their models make possible
            keys = det.needs_retrain()
            if not keys:
                break
            fitted += det.retrain(keys)
        took = time.process_time() - t0
        if not quiet:
            print(f"  fitted {len(fitted)} {det.name} models in {took:.2f} s CPU "
                  f"({took / max(len(fitted), 1) * 1e3:.0f} ms/model)")


def warm_up(detectors: list, warm: list[ToolCall], batch: int, with_fit: bool, only: list[str] | None,
            quiet: bool = False) -> None:
    """Every detector observes the warm-up calls; with ``with_fit``, models are fitted before the
    last warm-up batch, so that batch (not the timed ones) pays the one-off loading of new models
    (e.g. into iforest's forest bank), as a daemon does once per refit."""
    starts = list(range(0, len(warm), batch))
    for i in starts:
        if with_fit and i == starts[-1]:
            fit(detectors, only, quiet)
        b = batch_of(warm[i : i + batch])
        for det in detectors:
            det.observe(b)


def interleaved(detectors: list, batches: list[Batch], only: list[str] | None, asks: bool) -> dict[str, float]:
    """CPU µs/span of each detector when every batch goes through all of them in turn, as in the
    pipeline. Timed one detector at a time over all batches (the rows above), a detector finds its
    own state in the CPU caches; interleaved, the others' work has evicted it (the IsolationForest's
    bank walk alone streams megabytes per batch), so this is the daemon's real figure."""
    n = sum(len(b.calls) for b in batches)
    spent = dict.fromkeys((d.name for d in detectors if not only or d.name in only), 0.0)
    clock = time.thread_time
    gc.collect()
    for b in batches:
        for det in detectors:
            if det.name not in spent:
                continue
            t0 = clock()
            det.observe(b)
            if asks and hasattr(det, "needs_retrain"):
                det.needs_retrain()
            spent[det.name] += clock() - t0
    return {name: s / n * 1e6 for name, s in spent.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warm", type=int, default=60_000)
    ap.add_argument("--measure", type=int, default=40_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rate", type=float, default=75_000, help="event-time spans/s")
    ap.add_argument("--only", action="append", help="time only these detectors")
    ap.add_argument("--naive", type=int, default=3_000, help="calls for the one-call-per-batch baseline")
    ap.add_argument("--fit", action="store_true", help="fit the detectors' models after the warm-up")
    ap.add_argument("--workload", choices=wl.WORKLOADS, default=wl.DEFAULT_WORKLOAD, help="see bench/workloads.py")
    ap.add_argument("--anomaly-rate", type=float, default=0.001, help="fleet: share of calls in injected anomalies")
    ap.add_argument("--fresh-strings", action="store_true",
                    help="detectors see the normaliser's own calls, not the daemon's rebuilt ones (one string object per equal value)")
    args = ap.parse_args(argv)
    InterpreterSettings(Config().pipeline.gc_young_threshold, 0).apply()  # the GC as the daemon runs it

    # The timed calls, then as many again for the interleaved run (fresh calls: a detector that saw
    # a batch once would see repeated event times the second time).
    bodies, calls = workload(args.warm + 2 * args.measure, args.batch, args.rate, args.workload, args.anomaly_rate)
    if not args.fresh_strings:
        calls = as_daemon_sees(calls, args.batch)
    warm, measured = calls[: args.warm], calls[args.warm : args.warm + args.measure]
    then = calls[args.warm + args.measure :]
    batches = [measured[i : i + args.batch] for i in range(0, len(measured), args.batch)]
    n = len(measured)
    print(f"toolwatch stages bench: {n:,} calls timed after {len(warm):,} warm-up, batches of {args.batch}, "
          f"event rate {args.rate:,.0f}/s, {'fresh strings per call' if args.fresh_strings else 'calls as the daemon rebuilds them'}, "
          f"GC young threshold {gc.get_threshold()[0]:,}")
    print(f"workload {wl.describe(args.workload, args.anomaly_rate)}")

    rows: list[tuple[str, float]] = []
    first = args.warm // args.batch  # the bodies of the timed calls (random: the 8 bodies, from the first)
    reqs = [bodies[(first + i) % len(bodies)] for i in range(len(batches))]
    # As the receivers decode: span attributes as a protobuf map (collector/otlp_attrmap.py).
    rows.append(("decode (otlp.decode_export)", per_span(decode, reqs, n)))
    # Freshly decoded requests for each run: upb makes a second walk of the same message slower.
    norm = Normalizer()
    rows.append(("normalise", per_span(norm.normalize, [decode(b) for b in reqs], n)))
    general = per_span(Normalizer(fast=False).normalize, [decode(b) for b in reqs], n)  # not in the total: a comparison
    plain = [ExportTraceServiceRequest.FromString(b) for b in reqs]
    as_list = per_span(norm.normalize, plain, n)  # the OTLP/JSON and salvage paths' request type
    rule = EventTimeRule()
    now = time.time_ns()
    rows.append(("event-time rule", per_span(lambda b: judge(rule, b, [], now, 0), batches, n)))
    metrics = Metrics(CollectorRegistry())
    labels = attrgetter("agent_id", "server", "tool")
    rows.append(("metrics per batch", per_span(lambda b: metrics.count_calls(map(labels, b)), batches, n)))

    detectors = build_detectors(Config())
    warm_up(detectors, warm, args.batch, args.fit, args.only)
    findings: dict[str, int] = {}
    tally = wl.FindingTally()
    shared = [batch_of(chunk) for chunk in batches]  # one Batch per micro-batch for every detector, as the pipeline does
    for det in detectors:
        if args.only and det.name not in args.only:
            continue
        found = 0
        asks = getattr(det, "needs_retrain", None) if args.fit else None

        got: list = []

        def run(b: Batch, det=det, asks=asks, got=got) -> None:
            nonlocal found
            out = det.observe(b)
            found += len(out)
            got.extend(out)
            if asks is not None:
                asks()  # the daemon's Retrainer asks after every batch

        rows.append((f"detector {det.name}", per_span(run, shared, n)))
        findings[det.name] = found
        tally(got)

    together = interleaved(detectors, [batch_of(then[i : i + args.batch]) for i in range(0, len(then), args.batch)],
                           args.only, args.fit)
    total = sum(us for _, us in rows)
    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        extra = f"   {findings[name[9:]]:>6} findings" if name.startswith("detector ") else ""
        if name.startswith("detector "):
            extra += f"   {together.get(name[9:], 0.0):>6.2f} interleaved"
        print(f"  {name:<{width}} {us:>8.2f} µs/span{extra}")
    print(f"  {'total':<{width}} {total:>8.2f} µs/span  -> single-core ceiling {1e6 / total:>10,.0f} spans/s")
    alone = sum(us for name, us in rows if name.startswith("detector "))
    both = sum(together.values())
    print(f"  detectors one at a time {alone:.2f} µs/span; interleaved as the pipeline runs them (each batch through "
          f"every detector in turn, the next {len(then):,} calls) {both:.2f} µs/span: {both - alone:+.2f} µs/span "
          f"is what they cost each other in the CPU caches")
    print(f"  timed calls: {tally.summary(n)}")
    print(f"  normalise without its GenAI fast path (general dialect path only): {general:.2f} µs/span")
    print(f"  normalise of an ExportTraceServiceRequest (attributes as a list, as OTLP/JSON decodes): {as_list:.2f} µs/span")

    # Naive baseline on fresh detectors warmed the same way: one call per batch.
    naive_dets = build_detectors(Config())
    warm_up(naive_dets, warm, args.batch, args.fit, args.only, quiet=True)
    sample = measured[: args.naive]

    def one(c: ToolCall) -> None:
        b = Batch(calls=[c], watermark_ns=c.time_ns)
        for det in naive_dets:
            if not args.only or det.name in args.only:
                det.observe(b)

    us = per_span(one, sample, len(sample))
    print(f"  naive (one call per batch, same detectors): {us:.2f} µs/span -> {1e6 / us:,.0f} spans/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
