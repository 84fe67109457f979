"""Every detector finds the same on calls that came through worker frames as on the normaliser's own.

The daemon builds calls from frames without ``ToolCall.__init__`` and shares one object per equal
agent, tool, session... across requests (``worker_frames.Canon``): equal calls, so the detectors
must give the same findings, in the same order, with the same scores, and end in the same state.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from toolwatch.collector import otlp
from toolwatch.collector.config import Config
from toolwatch.collector.daemon import build_detectors
from toolwatch.collector.normalize import Normalizer
from toolwatch.collector.receivers import worker_frames as wf
from toolwatch.detectors.events import Batch, ToolCall

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import workloads as wl  # noqa: E402

SPANS = 500


def _run(calls: list[ToolCall], warm: int) -> tuple[list[dict], dict[str, str]]:
    detectors = build_detectors(Config())
    findings = []
    for i in range(0, len(calls), 2 * SPANS):
        if i == warm:  # fit the models the detectors ask for, as the daemon's retrainer would
            for det in detectors:
                asks = getattr(det, "needs_retrain", None)
                for _ in range(10):
                    keys = asks() if asks else None
                    if not keys:
                        break
                    det.retrain(keys)
        chunk = calls[i : i + 2 * SPANS]
        batch = Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns)
        for det in detectors:
            findings += [f.to_dict() for f in det.observe(batch)]
    states = {det.name: json.dumps(det.snapshot(), sort_keys=True, default=repr) for det in detectors}
    return findings, states


def test_findings_scores_order_and_state_match_the_in_process_calls():
    n_requests, warm = 32, 12_000
    # 20 agents: each has the rows an IsolationForest model needs by the fit (fleet's default is 200)
    bodies = wl.fleet_bodies(n_requests * SPANS, SPANS, wl.FleetConfig(agents=20, anomaly_rate=0.01), rate=75_000)
    normalizer = Normalizer()
    step, start = int(1e9 / 75_000), time.time_ns() - int(n_requests * SPANS / 75_000 * 1e9)

    def timed(calls: list[ToolCall]) -> list[ToolCall]:
        for i, c in enumerate(calls):
            c.time_ns = start + i * step
        return calls

    direct = timed([c for b in bodies[:n_requests] for c in normalizer.normalize(otlp.decode_export(b, otlp.PROTOBUF).request).calls])
    canon = wf.Canon()
    framed = []
    for b in bodies[:n_requests]:
        norm = normalizer.normalize(otlp.decode_export(b, otlp.PROTOBUF).request)
        data = wf.ingest_frame(1, "otlp_http", norm, 0, ())
        framed += wf.read_ingest(wf.unframe(data[wf.HEADER.size :]), canon)[2].calls
    framed = timed(framed)
    assert framed == direct and [c.token for c in framed] == [c.token for c in direct]

    want, want_states = _run(direct, warm)
    got, got_states = _run(framed, warm)
    assert len(want) > 50  # the workload's anomalies and fitted models do find something
    assert {f["detector"] for f in want} >= {"iforest", "sequence", "new_tool"}
    assert got == want  # scores rounded to 6 digits: compared as they are stored
    assert got_states == want_states
