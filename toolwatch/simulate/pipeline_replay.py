"""Replay labelled traffic through the collector's real ``Pipeline`` and score what it found.

``evaluate.replay`` calls detectors directly; this goes the way a span does in the daemon: the
detectors an operator gets (``build_detectors(Config())`` unless given), ``Pipeline.submit`` in
chunks, micro-batches cut by the pipeline, the daemon's ``Retrainer`` as a batch listener (waited
for after every batch, so replays are deterministic), an ``AlertRouter`` (no sinks) over a
``Store`` in a temporary directory, and findings captured from ``Pipeline.listeners``. Scoring is
``evaluate.score`` over the captured findings, counting only those at or above ``min_severity``:
``info``/``low`` findings are signals for the API and dashboards, not pages.

    reports = pipeline_replay(generate(seed=1))             # default config, >= medium
    print(format_reports(reports))
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Sequence

from prometheus_client import CollectorRegistry

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.config import Config
from toolwatch.collector.detector_registry import build_detectors
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.retrain import Retrainer
from toolwatch.collector.store import Store
from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import SEVERITIES, Finding, ToolCall, ToolListing, severity_rank

from .evaluate import DetectorReport, score
from .traffic import Traffic

__all__ = ["pipeline_findings", "pipeline_replay", "run_pipeline", "score_at"]


async def run_pipeline(
    detectors: Sequence[Detector],
    events: Sequence[ToolCall | ToolListing],
    data_dir: Path,
    *,
    batch_max_size: int = 512,
    submit_chunk: int = 64,
) -> list[Finding]:
    """Submit ``events`` (time order) to a real ``Pipeline`` in chunks of ``submit_chunk``, as a
    receiver would per export request, and return every finding it routed."""
    metrics = Metrics(CollectorRegistry())
    store = Store(data_dir / "toolwatch.db")
    found: list[Finding] = []
    try:
        router = AlertRouter(store, metrics, [], group_window_ns=0)
        pipe = Pipeline(detectors, router, store, metrics, batch_max_size=batch_max_size,
                        batch_max_delay_s=0.0, queue_max=max(200_000, 4 * submit_chunk),
                        snapshot_interval_s=1e9)
        pipe.listeners.append(found.extend)
        retrainer = Retrainer(list(detectors))  # as the daemon wires it: refits off the hot path
        pipe.batch_listeners.append(retrainer)
        await pipe.start()

        async def settle() -> None:
            await pipe.drained(timeout=600)
            # A replay runs far faster than event time; waiting for the refit keeps it deterministic
            # and gives the models a live daemon would have had by then.
            await retrainer.wait()

        for i in range(0, len(events), submit_chunk):
            chunk = events[i:i + submit_chunk]
            calls = [e for e in chunk if isinstance(e, ToolCall)]
            listings = [e for e in chunk if isinstance(e, ToolListing)]
            while not pipe.submit(calls, listings):  # queue full: back off like an exporter
                await settle()
            if pipe.depth >= batch_max_size:
                await settle()
        await settle()
        await pipe.shutdown()
        await retrainer.shutdown()
    finally:
        store.close()
    return found


def pipeline_findings(
    traffic: Traffic, detectors: Sequence[Detector] | None = None, *, batch_max_size: int = 512
) -> tuple[list[str], list[Finding]]:
    """Every finding (all severities) the pipeline produced for ``traffic``, and the detector names
    (``build_detectors(Config())`` when ``detectors`` is None)."""
    dets = list(detectors) if detectors is not None else build_detectors(Config())
    with tempfile.TemporaryDirectory(prefix="toolwatch-replay-") as tmp:
        found = asyncio.run(run_pipeline(dets, traffic.events, Path(tmp), batch_max_size=batch_max_size))
    return [d.name for d in dets if d.name != "capabilities"], found


def score_at(traffic: Traffic, names: Sequence[str], findings: Sequence[Finding],
             min_severity: str = "medium") -> dict[str, DetectorReport]:
    """Reports counting as alerts only ``findings`` at or above ``min_severity``."""
    if min_severity not in SEVERITIES:
        raise ValueError(f"min_severity: {min_severity!r} is not one of {', '.join(SEVERITIES)}")
    floor = severity_rank(min_severity)
    return score(traffic, [f for f in findings if severity_rank(f.severity) >= floor], names)


def pipeline_replay(
    traffic: Traffic,
    detectors: Sequence[Detector] | None = None,
    *,
    min_severity: str = "medium",
    batch_max_size: int = 512,
) -> dict[str, DetectorReport]:
    """Per-detector reports plus ``"any"`` (the union) for ``traffic`` through the real pipeline,
    counting findings at or above ``min_severity`` as alerts."""
    if min_severity not in SEVERITIES:
        raise ValueError(f"min_severity: {min_severity!r} is not one of {', '.join(SEVERITIES)}")
    names, found = pipeline_findings(traffic, detectors, batch_max_size=batch_max_size)
    return score_at(traffic, names, found, min_severity)
