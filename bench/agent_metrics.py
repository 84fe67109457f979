"""Cost of the per-agent metrics per micro-batch, vs. a naive per-finding update, and scrape cost.

Run: .venv/bin/python bench/agent_metrics.py [--agents 200] [--findings 512] [--batches 200]
Prints microseconds per batch for AgentMetrics.after_batch (findings tallied before touching
prometheus_client) against a naive loop that calls ``labels().inc()`` per finding, plus the time of
one full /metrics exposition with all agents' bands and scores. Not a test.
"""

from __future__ import annotations

import argparse
import random
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from toolwatch.collector.agent_metrics import SCORE_BUCKETS, AgentMetrics
from toolwatch.detectors.events import Batch, Finding


class FakeBands:
    def __init__(self, agents: int) -> None:
        self.bands = {f"agent-{i}": (float(i % 7), 0.5, 9.0) for i in range(agents)}

    def rate_bands(self) -> dict[str, tuple[float, float, float]]:
        return self.bands


def findings(rng: random.Random, agents: int, n: int) -> list[Finding]:
    dets = ("volume", "new_tool", "rugpull", "poisoning")
    return [Finding(detector=rng.choice(dets), severity=rng.choice(("low", "medium", "high")),
                    agent_id=f"agent-{rng.randrange(agents)}", reason="r", time_ns=1, score=rng.random() * 8)
            for _ in range(n)]


def naive(reg: CollectorRegistry):
    c = Counter("naive_findings_total", "", ["agent", "detector", "severity"], registry=reg)
    h = Histogram("naive_score", "", ["agent"], buckets=SCORE_BUCKETS, registry=reg)

    def update(fs: list[Finding]) -> None:
        for f in fs:
            c.labels(f.agent_id, f.detector, f.severity).inc()
            h.labels(f.agent_id).observe(f.score)

    return update


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--findings", type=int, default=512, help="findings per batch (a worst case: usually few)")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    batches = [findings(rng, a.agents, a.findings) for _ in range(a.batches)]

    reg = CollectorRegistry()
    m = AgentMetrics(reg, [FakeBands(a.agents)], agent_cap=a.agents)
    t0 = time.perf_counter()
    for fs in batches:
        m.after_batch(Batch(), fs)
    ours = (time.perf_counter() - t0) / a.batches * 1e6

    update = naive(CollectorRegistry())
    t0 = time.perf_counter()
    for fs in batches:
        update(fs)
    base = (time.perf_counter() - t0) / a.batches * 1e6

    t0 = time.perf_counter()
    body = generate_latest(reg)
    scrape = (time.perf_counter() - t0) * 1e3
    print(f"agents={a.agents} findings/batch={a.findings} batches={a.batches}")
    print(f"AgentMetrics.after_batch : {ours:9.1f} us/batch (counter tallied, score slots, bands refresh)")
    print(f"naive labels().inc()     : {base:9.1f} us/batch (counter + histogram per finding, no score/bands)")
    print(f"exposition of all series : {scrape:9.2f} ms, {len(body) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
