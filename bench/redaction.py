"""Redaction throughput (MB/s) on a generated, realistic mixed JSON corpus, vs. a naive baseline.

Run: .venv/bin/python bench/redaction.py [--records N] [--seed S]

The corpus mixes what agents send and receive: small argument objects (queries, paths, e-mail
fields, headers with credentials), medium bodies of prose with sparse personal data, JSON-as-text
and log excerpts in tool results. Sizes are the UTF-8 compact JSON of each record.
Baseline: one regex per detector applied one after another over ``json.dumps(record)`` (the
obvious implementation), same detectors, no validation. Figures only; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import string
import time
from typing import Any

from toolwatch.instrumentation.patterns import DETECTORS
from toolwatch.instrumentation.redact import Redactor

WORDS = (
    "the a of to and in for on with report server config data user account total amount invoice "
    "project meeting notes customer order status pending shipped delivered quarterly revenue growth "
    "please review attached summary deployment incident ticket priority release branch merge request "
    "The We It This Our Please Thanks"
).split()


def _prose(rng: random.Random, words: int, pii_every: int) -> str:
    out = []
    for i in range(words):
        out.append(rng.choice(WORDS))
        if pii_every and i % pii_every == pii_every - 1:
            out.append(_sensitive(rng))
        if i % 14 == 13:
            out[-1] += "."
    return " ".join(out)


def _sensitive(rng: random.Random) -> str:
    choice = rng.randrange(8)
    if choice == 0:
        return f"{rng.choice(['alice', 'bob', 'carol'])}.{rng.randrange(99)}@example.com"
    if choice == 1:
        return f"+1 415 555 {rng.randrange(1000, 9999)}"
    if choice == 2:
        return f"https://api.example.com/v1/items/{rng.randrange(10**6)}"
    if choice == 3:
        return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
    if choice == 4:
        return "AKIA" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=16))
    if choice == 5:
        return "/home/alice/projects/report-" + str(rng.randrange(100)) + ".pdf"
    if choice == 6:
        return "ghp_" + "".join(rng.choices(string.ascii_letters + string.digits, k=36))
    return "4539 1488 0343 6467"


def make_corpus(records: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    corpus: list[Any] = []
    for i in range(records):
        kind = i % 4
        if kind == 0:  # small tool-call arguments
            corpus.append({"query": _prose(rng, 8, 0), "limit": rng.randrange(1, 50), "path": f"/srv/data/{rng.randrange(999)}.csv"})
        elif kind == 1:  # an e-mail being sent
            corpus.append({
                "to": f"user{rng.randrange(999)}@example.org",
                "subject": _prose(rng, 6, 0),
                "body": _prose(rng, rng.randrange(80, 400), 60),
                "headers": {"Authorization": "Bearer " + "".join(rng.choices(string.ascii_letters + string.digits, k=32))},
            })
        elif kind == 2:  # a tool result with JSON-as-text
            rows = [{"id": rng.randrange(10**6), "name": rng.choice(WORDS), "status": rng.choice(WORDS), "note": _prose(rng, 12, 0)} for _ in range(rng.randrange(5, 40))]
            corpus.append({"content": [{"type": "text", "text": json.dumps(rows)}], "isError": False})
        else:  # a tool result with a log excerpt / document
            lines = [f"2026-11-22T00:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z INFO {_prose(rng, 14, 30)}" for _ in range(rng.randrange(20, 120))]
            corpus.append({"content": [{"type": "text", "text": "\n".join(lines)}], "isError": False})
    return corpus


NAIVE_PATTERNS = [re.compile(f"{d.anchor}(?:{d.rest})") for d in DETECTORS]


def naive_baseline(texts: list[str]) -> int:
    """One regex per detector, applied sequentially with re.sub over the JSON text."""
    patterns = NAIVE_PATTERNS
    found = 0
    for text in texts:
        for pattern in patterns:
            text, n = pattern.subn("<redacted>", text)
            found += n
    return found


def _rate(fn: Any, items: list[Any], size: int, repeat: int = 3) -> float:
    """MB/s over the process's CPU time (best of ``repeat``): fairer on a shared, busy machine."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - start)
    return size / best / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    corpus = make_corpus(args.records, args.seed)
    texts = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in corpus]
    size = sum(len(t.encode()) for t in texts)
    redactor = Redactor(b"bench-key")
    print(f"corpus: {len(corpus)} records, {size / 1e6:.2f} MB of JSON, seed {args.seed}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (figures are per CPU-second)")

    rates = {
        "Redactor.redact (parsed JSON)": _rate(redactor.redact, corpus, size),
        "Redactor.redact_json_text": _rate(redactor.redact_json_text, texts, size),
        "Redactor.scan_result": _rate(redactor.scan_result, corpus, size),
        "naive: one regex per detector, sequential": _rate(lambda t: naive_baseline([t]), texts, size, repeat=1),
        "reference: json.dumps of the same records": _rate(json.dumps, corpus, size),
    }
    for name, rate in rates.items():
        print(f"{name:45s} {rate:8.1f} MB/s")
    print(f"speed-up over naive: {rates['Redactor.redact (parsed JSON)'] / rates['naive: one regex per detector, sequential']:.1f}x")

    small = corpus[::4]
    latencies = []
    for record in small:
        start = time.process_time()
        redactor.redact(record)
        latencies.append((time.process_time() - start) * 1e6)
    latencies.sort()
    print(f"small argument objects: p50 {statistics.median(latencies):.1f} us, p99 {latencies[int(len(latencies) * 0.99)]:.1f} us per call")
    sample = redactor.redact(corpus[1])
    print(f"example labels {sample.labels}, {len(sample.fingerprints)} fingerprints, destinations {sample.destinations}")


if __name__ == "__main__":
    main()
