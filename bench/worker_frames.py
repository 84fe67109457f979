"""CPU per span of the OTLP worker frames (collector/receivers/worker_frames.py), old code against new.

With ``otlp_processes`` >= 1 the daemon's interpreter is the bottleneck (issue #4): what it spends
turning a worker's INGEST frame back into calls (``unframe`` + ``read_ingest``) and what the
detectors then spend on those calls are what count; the worker's share (``ingest_frame``) only
has to stay affordable. The old code is ``worker_frames.py`` of a git revision (``--ref``, default
``main``), loaded beside this tree's; both run in this process on the same fleet requests, in
interleaved rounds, and the medians of process CPU time are printed. "worker: normalise +
ingest_frame" times the worker's whole path from a decoded request: this tree's worker normalises
into rows (``Normalizer(rows=True)``, when this tree's ``ingest_frame`` takes them) and the old
code normalises into ``ToolCall``s, with this tree's normaliser in both.

    .venv/bin/python bench/worker_frames.py [--workload fleet] [--requests 80] [--rounds 9] [--ref main] [--detectors]

Where this tree has a value table (``worker_frames.ValueTable``), the daemon's side of its frames is
timed too, in the steady state: a mirror that has read the frames of the next ``--requests`` requests first.

``--detectors``: also time every detector on the calls each path gives (fitted models, batches of
``--batch``), batch by batch in alternating order, to see what one object per equal agent, tool
and session across requests (``worker_frames.Canon``) saves the detectors.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads as wl  # noqa: E402
from toolwatch.collector import otlp  # noqa: E402
from toolwatch.collector.normalize import Normalizer  # noqa: E402
from toolwatch.collector.receivers import worker_frames as new  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PATH = "collector/receivers/worker_frames.py"


def old_module(ref: str) -> ModuleType:
    """``worker_frames`` as of git revision ``ref``, imported beside the current one."""
    source = subprocess.run(["git", "show", f"{ref}:{PATH}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    name = "toolwatch.collector.receivers._worker_frames_ref"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "toolwatch.collector.receivers"
    sys.modules[name] = module
    exec(compile(source, f"{ref}:{PATH}", "exec"), module.__dict__)
    return module


def decoded(n: int, spans: int, workload: str = "fleet") -> list[Any]:
    if workload == "random":
        bodies = [wl.make_body(spans, seed) for seed in range(n)]
    else:
        bodies = wl.bodies(workload, n * spans, spans, anomaly_rate=0.001, rate=75_000)
    return [otlp.decode_export(b, otlp.PROTOBUF).request for b in bodies[:n]]


def cpu_us(fn: Callable[[], Any] | Primed, n_spans: int) -> float:
    state = fn.setup() if isinstance(fn, Primed) else None
    gc.collect()
    gc.disable()
    try:
        t0 = time.process_time_ns()
        fn.run(state) if isinstance(fn, Primed) else fn()
        return (time.process_time_ns() - t0) / n_spans / 1e3
    finally:
        gc.enable()


def daemon_side(wf: ModuleType, frames: list[bytes], canon: Any) -> list[list[Any]]:
    size = wf.HEADER.size
    if canon is None:
        return [wf.read_ingest(wf.unframe(f[size:]))[2].calls for f in frames]
    return [wf.read_ingest(wf.unframe(f[size:]), canon)[2].calls for f in frames]


@dataclass
class Primed:
    """A timed run that needs state made first, untimed (``cpu_us`` calls ``setup`` before its clock)."""

    setup: Callable[[], Any]
    run: Callable[[Any], Any]


def tabled_side(wf: ModuleType, frames: list[bytes], canon: Any, mirror: Any) -> list[list[Any]]:
    """``daemon_side`` of frames built with a ``ValueTable``, read with its ``mirror``."""
    size = wf.HEADER.size
    return [wf.read_ingest(wf.unframe(f[size:]), canon, mirror)[2].calls for f in frames]


def primed(wf: ModuleType, primer: list[bytes], canon: Any) -> Any:
    """A ``TableMirror`` that has read ``primer``: the steady state, where most values are defined."""
    mirror, size = wf.TableMirror(), wf.HEADER.size
    for f in primer:
        wf.read_ingest(wf.unframe(f[size:]), canon, mirror)
    return mirror


def detectors_on(paths: dict[str, list[Any]], batch: int, warm: int) -> dict[str, dict[str, float]]:
    """µs/span per detector on each path's calls (same calls, same order), batch by batch, alternating."""
    from toolwatch.collector.config import Config
    from toolwatch.collector.daemon import build_detectors
    from toolwatch.detectors.events import Batch

    import stages

    dets = {}
    for name, calls in paths.items():
        dets[name] = build_detectors(Config())
        stages.warm_up(dets[name], calls[:warm], 500, True, None, quiet=True)
    spent: dict[str, dict[str, int]] = {name: {} for name in paths}
    names = list(paths)
    measured = len(next(iter(paths.values()))) - warm
    for k, i in enumerate(range(warm, warm + measured, batch)):
        for name in names if k % 2 == 0 else names[::-1]:
            chunk = paths[name][i : i + batch]
            for det in dets[name]:
                b = Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns)
                t0 = time.process_time_ns()
                det.observe(b)
                asks = getattr(det, "needs_retrain", None)
                if asks is not None:
                    asks()
                spent[name][det.name] = spent[name].get(det.name, 0) + time.process_time_ns() - t0
    return {name: {d: ns / measured / 1e3 for d, ns in by.items()} for name, by in spent.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=80)
    ap.add_argument("--spans", type=int, default=500, help="spans per request (bench/ingest.py sends 500)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--workload", choices=wl.WORKLOADS, default=wl.DEFAULT_WORKLOAD, help="see bench/workloads.py")
    ap.add_argument("--ref", default="main", help="git revision of the old worker_frames.py")
    ap.add_argument("--detectors", action="store_true", help="also time the detectors on each path's calls")
    ap.add_argument("--batch", type=int, default=2000, help="--detectors: calls per batch")
    ap.add_argument("--warm", type=int, default=60_000, help="--detectors: warm-up calls (then models are fitted)")
    args = ap.parse_args(argv)

    old = old_module(args.ref)
    n_req = max(args.requests, (args.warm + 40_000) // args.spans if args.detectors else 0)
    raw = decoded(n_req, args.spans, args.workload)
    in_process = Normalizer()
    reqs = [in_process.normalize(r) for r in raw]
    timed, raw = reqs[: args.requests], raw[: args.requests]
    rows = "rows" in inspect.signature(new.ingest_frame).parameters
    worker = Normalizer(rows=True) if rows else Normalizer()
    kw = {"rows": True} if rows else {}
    n = sum(len(r.calls) for r in timed)
    old_frames = [old.ingest_frame(1, "otlp_http", r, 0, ()) for r in timed]
    new_frames = [new.ingest_frame(1, "otlp_http", r, 0, ()) for r in timed]
    canon = new.Canon()
    old_canon = old.Canon() if hasattr(old, "Canon") else None  # the same work on both sides, where the ref has one
    for got, r in zip(daemon_side(new, new_frames, canon), timed):
        assert got == r.calls and [c.token for c in got] == [c.token for c in r.calls]
    worker_frames = [new.ingest_frame(1, "otlp_http", worker.normalize(r), 0, (), **kw) for r in raw]
    for got, r in zip(daemon_side(new, worker_frames, new.Canon()), timed):
        assert got == r.calls and [c.token for c in got] == [c.token for c in r.calls]
    # A worker connection's value table (where this tree has one), in its steady state: the frames
    # of the requests before the timed ones define most values (``tabled_side`` reads those first).
    tabled_frames: tuple[list[bytes], list[bytes]] | None = None
    if hasattr(new, "ValueTable"):
        table, primer = new.ValueTable(), decoded(2 * args.requests, args.spans, args.workload)[args.requests :]
        tabled_frames = (
            [new.ingest_frame(1, "otlp_http", in_process.normalize(r), 0, (), table=table) for r in primer],
            [new.ingest_frame(1, "otlp_http", r, 0, (), table=table) for r in timed],
        )
        check = new.Canon()
        for got, r in zip(tabled_side(new, tabled_frames[1], check, primed(new, tabled_frames[0], check)), timed):
            assert got == r.calls and [c.token for c in got] == [c.token for c in r.calls]
    runs: dict[str, Callable[[], Any] | Primed] = {
        f"daemon: unframe + read_ingest, {args.ref}": lambda: daemon_side(old, old_frames, old_canon),
        "daemon: unframe + read_ingest, this tree": lambda: daemon_side(new, new_frames, canon),
        **({"daemon: unframe + read_ingest, this tree, value table": Primed(
            lambda: primed(new, tabled_frames[0], canon), lambda mirror: tabled_side(new, tabled_frames[1], canon, mirror)
        )} if tabled_frames else {}),
        f"worker: ingest_frame, {args.ref}": lambda: [old.ingest_frame(1, "otlp_http", r, 0, ()) for r in timed],
        "worker: ingest_frame, this tree": lambda: [new.ingest_frame(1, "otlp_http", r, 0, ()) for r in timed],
        f"worker: normalise + ingest_frame, {args.ref}": lambda: [
            old.ingest_frame(1, "otlp_http", in_process.normalize(r), 0, ()) for r in raw
        ],
        "worker: normalise + ingest_frame, this tree": lambda: [
            new.ingest_frame(1, "otlp_http", worker.normalize(r), 0, (), **kw) for r in raw
        ],
    }
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for k in range(args.rounds):
        order = list(runs) if k % 2 == 0 else list(runs)[::-1]
        for name in order:
            figures[name].append(cpu_us(runs[name], n))
    print(f"worker frames bench: {len(timed)} {args.workload} requests of {args.spans} spans, {args.rounds} interleaved rounds, "
          f"median CPU µs/span")
    width = max(map(len, runs))
    for name, values in figures.items():
        print(f"  {name:<{width}} {statistics.median(values):7.3f}   (min {min(values):.3f}, max {max(values):.3f})")
    print(f"  frame bytes/span: {args.ref} {sum(map(len, old_frames)) / n:.1f}, this tree {sum(map(len, new_frames)) / n:.1f}")

    if args.detectors:
        frames_old = [old.ingest_frame(1, "otlp_http", r, 0, ()) for r in reqs]
        frames_new = [new.ingest_frame(1, "otlp_http", r, 0, ()) for r in reqs]
        paths = {
            args.ref: [c for calls in daemon_side(old, frames_old, None) for c in calls],
            "this tree": [c for calls in daemon_side(new, frames_new, new.Canon()) for c in calls],
        }
        # Event times advancing as in bench/stages.py (the pool's bodies were stamped once).
        step, start = int(1e9 / 75_000), time.time_ns() - int(len(paths[args.ref]) / 75_000 * 1e9)
        for calls in paths.values():
            for i, c in enumerate(calls):
                c.time_ns = start + i * step
        assert paths[args.ref] == paths["this tree"]
        per = detectors_on(paths, args.batch, args.warm)
        print(f"detectors on each path's calls ({len(paths[args.ref]) - args.warm:,} calls after {args.warm:,}, "
              f"fitted, batches of {args.batch}), CPU µs/span:")
        for det in per[args.ref]:
            a, b = per[args.ref][det], per["this tree"][det]
            if a + b > 0.02:
                print(f"  {det:<14} {args.ref} {a:6.2f}   this tree {b:6.2f}")
        print(f"  {'total':<14} {args.ref} {sum(per[args.ref].values()):6.2f}   this tree {sum(per['this tree'].values()):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
