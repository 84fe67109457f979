"""Real detector state saved by ``Pipeline.save_state`` (GC paused, ``dumps_state``) is stored as text
that reads back as the old path's text did (``json.dumps`` of each ``snapshot()``), and loads back
into fresh detectors that snapshot the same state again."""

from __future__ import annotations

import json
import random

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.config import Config
from toolwatch.collector.daemon import build_detectors
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.state_json import BIG
from toolwatch.collector.store import Store
from toolwatch.detectors.events import Batch, ToolCall

S = 1_000_000_000
T0 = 1_750_000_000 * S
TOOLS = [("files", "read_file"), ("web", "fetch"), ("mail", "send"), ("db", "query"), ("vault", "get_secret"),
         ("web", "post"), ("git", "commit")]
LABELS = ["secret", "pii", "base64", "url", "high_entropy"]


def traffic(n: int, agents: int = 3, seed: int = 7) -> list[ToolCall]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        server, tool = rng.choice(TOOLS)
        a = rng.randrange(agents)
        fp = lambda: f"fp{rng.randrange(400)}"  # noqa: E731
        out.append(ToolCall(
            time_ns=T0 + i * 20_000_000, agent_id=f"agent-{a}", server=server, tool=tool,
            session_id=f"s{a}-{i // 40}", span_id=f"{i:016x}", trace_id=f"{i // 40:032x}",
            duration_ns=rng.randrange(1, 300) * 1_000_000, args_bytes=rng.randrange(10, 5000), result_bytes=rng.randrange(0, 9000),
            args_labels=tuple(rng.sample(LABELS, rng.randrange(3))), result_labels=tuple(rng.sample(LABELS, rng.randrange(2))),
            args_fingerprints=tuple(fp() for _ in range(rng.randrange(3))),
            result_fingerprints=tuple(fp() for _ in range(rng.randrange(3))),
            destinations=(f"host{rng.randrange(30)}.example",) if tool in ("fetch", "post", "send") else (),
            error_type="timeout" if rng.random() < 0.03 else ""))
    return out


def warmed(calls: list[ToolCall]):
    dets = build_detectors(Config())
    for i in range(0, len(calls), 500):
        chunk = calls[i:i + 500]
        b = Batch(calls=chunk, watermark_ns=chunk[-1].time_ns)
        for d in dets:
            d.observe(b)
    return dets


def pipeline(tmp_path, dets, name: str) -> tuple[Pipeline, Store]:
    store = Store(tmp_path / name)
    metrics = Metrics()
    return Pipeline(dets, AlertRouter(store, metrics, [], group_window_ns=0), store, metrics), store


def stored(store: Store, name: str) -> str | None:
    row = store.state_db.execute("SELECT state FROM detector_state WHERE name=?", (name,)).fetchone()
    return None if row is None else row["state"]


def test_saved_text_is_the_old_text_and_restores(tmp_path):
    dets = warmed(traffic(6000))
    p, store = pipeline(tmp_path, dets, "a.db")
    p.save_state()
    old = {d.name: json.dumps(d.snapshot(), separators=(",", ":")) for d in dets}
    assert {d.name: json.loads(stored(store, d.name)) for d in dets} == {k: json.loads(v) for k, v in old.items()}
    # the fast path was taken: IsolationForest windows are stored as big base64 strings
    windows = [a["rows"]["f8"] for a in json.loads(old["iforest"])["agents"].values()]
    assert windows and max(map(len, windows)) >= BIG
    fresh = build_detectors(Config())
    q, _ = pipeline(tmp_path, fresh, "a.db")
    q.restore_state()
    assert {d.name: json.dumps(d.snapshot(), separators=(",", ":")) for d in fresh} == old
