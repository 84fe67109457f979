"""Throughput of the flow detectors and the rule engine on synthetic agent traffic.

Prints calls/second for each, against naive baselines run in the same process on the same calls:
- flows: rescanning every earlier result of the session for each call (no taint index);
- rules: parsing every rule's condition again for every call (no compiled rule set).
Run: .venv/bin/python bench/bench_flow.py [--calls N]
"""

from __future__ import annotations

import argparse
import random
import time

from toolwatch.collector.rules_cli import default_rules_text
from toolwatch.detectors.capabilities import CapabilityMap
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.exfiltration import ExfiltrationDetector
from toolwatch.detectors.hijack import HijackDetector
from toolwatch.detectors.rules import RuleEngine, load_rules, parse_condition
from toolwatch.detectors.rules.fields import EvalContext

TOOLS = [("web", "fetch"), ("filesystem", "read_file"), ("vault", "read_secret"), ("llm", "summarize"),
         ("notes", "append_note"), ("gmail", "send_email"), ("slack", "post_message"), ("crm", "query")]


def traffic(n: int, seed: int = 7) -> list[ToolCall]:
    rng = random.Random(seed)
    calls = []
    t = 1_700_000_000_000_000_000
    for i in range(n):
        t += rng.randint(1, 5) * 1_000_000_000
        server, tool = rng.choice(TOOLS)
        agent = f"agent-{rng.randint(0, 49)}"
        session = f"{agent}-s{rng.randint(0, 9)}"
        fps = tuple(f"fp{rng.randint(0, 5000)}" for _ in range(rng.randint(0, 4)))
        calls.append(ToolCall(
            time_ns=t, agent_id=agent, session_id=session, server=server, tool=tool, span_id=f"sp{i}",
            args_fingerprints=fps[:2], result_fingerprints=fps[2:],
            args_labels=("secret",) if rng.random() < 0.01 else (),
            result_labels=("instructions",) if rng.random() < 0.02 else (),
            destinations=(f"d{rng.randint(0, 200)}.example",) if server in ("gmail", "slack", "web") else (),
            args_bytes=rng.randint(100, 5000),
        ))
    return calls


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def naive_flows(calls: list[ToolCall]) -> int:
    history: dict[tuple[str, str], list[ToolCall]] = {}
    found = 0
    for c in calls:
        seen = history.setdefault((c.agent_id, c.session_id), [])
        if any(fp in prev.result_fingerprints and prev.server != c.server for fp in c.args_fingerprints for prev in seen):
            found += 1
        seen.append(c)
    return found


def naive_rules(calls: list[ToolCall], texts: list[tuple[str, str]], lists) -> int:
    hits = 0
    for c in calls:
        ctx = EvalContext(call=c, capabilities=CapabilityMap().of(c.server, c.tool))
        for _, text in texts:
            hits += parse_condition(text, lists, lambda name, pos: parse_condition("capabilities contains sends_out")
                                    if name == "outbound" else parse_condition("false")).eval(ctx)
    return hits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000)
    n = ap.parse_args().calls
    calls = traffic(n)
    batches = [Batch(calls=calls[i:i + 500]) for i in range(0, n, 500)]

    exf = ExfiltrationDetector()
    dt, found = timed(lambda: sum(len(exf.observe(b)) for b in batches))
    print(f"exfiltration   {n / dt:10.0f} calls/s  ({found} findings)")
    dt_naive, naive = timed(lambda: naive_flows(calls))
    print(f"  naive flows  {n / dt_naive:10.0f} calls/s  ({naive} calls with a direct cross-server flow)")

    # One long session: the naive rescan grows with the session, the taint index does not.
    long = [ToolCall(time_ns=c.time_ns, agent_id="solo", session_id="one", server=c.server, tool=c.tool,
                     span_id=c.span_id, args_fingerprints=c.args_fingerprints,
                     result_fingerprints=c.result_fingerprints) for c in calls[:5000]]
    exf_long = ExfiltrationDetector()
    dt, found = timed(lambda: sum(len(exf_long.observe(Batch(calls=long[i:i + 500]))) for i in range(0, len(long), 500)))
    print(f"exfiltration, one 5000-call session {len(long) / dt:10.0f} calls/s")
    dt_naive, naive = timed(lambda: naive_flows(long))
    print(f"  naive flows, same session         {len(long) / dt_naive:10.0f} calls/s")

    hij = HijackDetector()
    dt, found = timed(lambda: sum(len(hij.observe(b)) for b in batches))
    print(f"hijack         {n / dt:10.0f} calls/s  ({found} findings)")

    ruleset = load_rules(default_rules_text(), "default_rules.yaml")
    eng = RuleEngine(ruleset)
    dt, found = timed(lambda: sum(len(eng.observe(b)) for b in batches))
    print(f"rule engine    {n / dt:10.0f} calls/s  ({found} findings, {len(ruleset.rules)} rules, "
          f"{len(ruleset.correlations)} correlations)")
    texts = [(r.name, r.condition_text) for r in ruleset.rules]
    sub = calls[: max(1, n // 10)]
    dt_naive, _ = timed(lambda: naive_rules(sub, texts, ruleset.lists))
    print(f"  naive rules  {len(sub) / dt_naive:10.0f} calls/s  (conditions re-parsed per call, no session context)")


if __name__ == "__main__":
    main()
