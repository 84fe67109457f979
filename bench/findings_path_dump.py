"""Dump what the pipeline leaves behind for a fixed replay: alert rows, outbox, metrics, log lines.

    .venv/bin/python bench/findings_path_dump.py OUT.json

Same-run A/B of behaviour: run it with this checkout and with another one (PYTHONPATH=<a tree
with a toolwatch package>, e.g. main's) and compare the two files byte for byte (``cmp``). The
real detectors' findings on bench/ingest.py's workload plus synthetic ones (NaN/inf/-0.0 scores,
four severities, out-of-order times, grouped repeats) go through a real Daemon with two routed
webhooks (not started) under fixed clocks. Not a test: it needs two checkouts.
"""
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

T0 = 1_780_000_000.0
time.time_ns = lambda: int(T0 * 1e9)  # the workload's event times, fixed
sys.path.insert(0, str(Path(__file__).resolve().parent))
import findings_path as fp  # noqa: E402
from stages import workload  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402

from toolwatch.collector import pipeline as pl  # noqa: E402
from toolwatch.collector.config import Config, WebhookConfig  # noqa: E402
from toolwatch.collector.daemon import Daemon, build_detectors  # noqa: E402
from toolwatch.detectors.events import Batch, Finding  # noqa: E402


class Lines(logging.Handler):
    """Keeps the log sink's lines and their ``alert`` JSON."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), record.alert))  # type: ignore[attr-defined]


def main(out_path: str) -> None:
    handler = Lines()
    lines = handler.lines
    lg = logging.getLogger("toolwatch.alerts")
    lg.addHandler(handler)
    lg.propagate = False
    lg.setLevel(logging.WARNING)
    _, calls = workload(40000, 500, 75000)
    warm, measured = calls[:20000], calls[20000:]
    dets = build_detectors(Config())
    for i in range(0, len(warm), 500):
        b = Batch(calls=list(warm[i:i+500]), watermark_ns=warm[i+499].time_ns)
        for det in dets:
            det.observe(b)
    rng = random.Random(3)
    batches, answers = [], []
    for i in range(0, len(measured), 1500):
        chunk = measured[i:i+1500]
        b = Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns)
        found = [f for d in dets for f in d.observe(b)]
        # extra: scores with NaN/inf/-0.0, several detectors/severities, repeats, out-of-order times
        for c in chunk[::37]:
            k = rng.randrange(40)
            f = Finding.about(c, detector=("volume", "sequence", "policy")[k % 3], severity=("low", "medium", "high", "critical")[k % 4],
                              reason="x", score=rng.choice([0.3, 7.5, float("nan"), float("inf"), -0.0, 1.0, 0.99]),
                              dedup_key=f"x:{k}", evidence={"k": k, "s": "é\"\\"})
            f.time_ns -= rng.randrange(10**9)
            found.append(f)
        batches.append([chunk[j:j+500] for j in range(0, len(chunk), 500)]); answers.append(found)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(otlp_http="off", otlp_grpc="off", listen="127.0.0.1:0", data_dir=tmp, fingerprint_key="k", webhook_secret="s",
                     webhooks=[WebhookConfig(url="http://127.0.0.1:9/a", name="hi", min_severity="medium"),
                               WebhookConfig(url="http://127.0.0.1:9/b", name="all", min_severity="info")])
        cfg.alerts.group_window_s = 0.5
        now = [T0]
        d = Daemon(cfg, detectors=dets, clock=lambda: now[0])
        replay = fp.Replay(); d.pipeline.detectors = [replay]; d.pipeline.batch_listeners.remove(d.retrainer)
        d.pipeline.clock = lambda: now[0]
        async def drive():
            for items, found in zip(batches, answers):
                replay.answers.append(found); now[0] += 1.25
                await d.pipeline._process([pl._Item(list(c), [], now[0] - 0.01, 0) for c in items])
        asyncio.run(drive())
        db = d.store.db
        out = {
            "alerts": [list(r) for r in db.execute("SELECT rowid, * FROM alerts ORDER BY rowid")],
            "outbox": [list(r) for r in db.execute("SELECT * FROM outbox ORDER BY seq")],
            "metrics": sorted(l for l in generate_latest(d.metrics.registry).decode().splitlines()
                              if not l.startswith(("process_", "python_", "# ")) and "_created" not in l),
            "log": lines,
            "scores": {k: repr(v) for k, v in d.agent_metrics._scores.items()},
        }
        print(len(out["alerts"]), len(out["outbox"]), len(out["metrics"]), len(lines), file=sys.stderr)
        json.dump(out, open(out_path, "w"), sort_keys=True, default=repr)


if __name__ == "__main__":
    main(sys.argv[1])
