"""Redaction throughput (MB/s) on a generated, realistic mixed JSON corpus, vs. a naive baseline.

Run: .venv/bin/python bench/redaction.py [--records N] [--seed S] [--against DIR [--rounds R]]

``--against DIR`` imports a second checkout's ``instrumentation`` package (e.g. ``/work/main``)
into this same process under another name and times both on the same corpus, interleaved, so
machine load hits both alike; it first checks that both give identical results (the redacted
JSON, labels, counts, fingerprints, destinations, bytes, sketches, injection scores).

The corpus mixes what agents send and receive: small argument objects (queries, paths, e-mail
fields, headers with credentials), medium bodies of prose with sparse personal data, JSON-as-text
and log excerpts in tool results. Sizes are the UTF-8 compact JSON of each record.
Baseline: one regex per detector applied one after another over ``json.dumps(record)`` (the
obvious implementation), same detectors, no validation. Figures only; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import re
import statistics
import string
import sys
import time
from types import ModuleType
from typing import Any

from toolwatch.instrumentation import scanner
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
            corpus.append(
                {
                    "query": _prose(rng, 8, 0),
                    "limit": rng.randrange(1, 50),
                    "path": f"/srv/data/{rng.randrange(999)}.csv",
                }
            )
        elif kind == 1:  # an e-mail being sent
            corpus.append(
                {
                    "to": f"user{rng.randrange(999)}@example.org",
                    "subject": _prose(rng, 6, 0),
                    "body": _prose(rng, rng.randrange(80, 400), 60),
                    "headers": {
                        "Authorization": "Bearer " + "".join(rng.choices(string.ascii_letters + string.digits, k=32))
                    },
                }
            )
        elif kind == 2:  # a tool result with JSON-as-text
            rows = [
                {
                    "id": rng.randrange(10**6),
                    "name": rng.choice(WORDS),
                    "status": rng.choice(WORDS),
                    "note": _prose(rng, 12, 0),
                }
                for _ in range(rng.randrange(5, 40))
            ]
            corpus.append({"content": [{"type": "text", "text": json.dumps(rows)}], "isError": False})
        else:  # a tool result with a log excerpt / document
            lines = [
                f"2026-11-22T00:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z INFO {_prose(rng, 14, 30)}"
                for _ in range(rng.randrange(20, 120))
            ]
            corpus.append({"content": [{"type": "text", "text": "\n".join(lines)}], "isError": False})
    return corpus


_W = r"(?<![A-Za-z0-9_])"
NAIVE_REGEXES = [  # the obvious way to write the same kinds: one pattern per kind, from token start
    r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----[A-Za-z0-9+/=\s\\:,.-]*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----",
    _W + r"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}",
    _W + r"AIza[0-9A-Za-z_-]{35}",
    _W + r"gh[pousr]_[A-Za-z0-9]{36,251}",
    _W + r"github_pat_[A-Za-z0-9_]{22,255}",
    _W + r"[rsp]k_(?:live|test)_[0-9A-Za-z]{16,}",
    r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9_/-]{20,}",
    _W + r"xox[abposre]-[0-9A-Za-z-]{10,}",
    _W + r"sk-[A-Za-z0-9_-]{20,}",
    _W + r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
    r"[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s:/@\"'<>]{1,128}:[^\s/@\"'<>]{1,256}@",
    r"(?i:bearer|token)\s+[A-Za-z0-9._~+/-]{8,}=*",
    r"(?i:basic)\s+[A-Za-z0-9+/]{6,}={0,2}",
    r"(?i:password|passwd|pwd|secret|api[_-]?key|apikey|access[_-]?key|private[_-]?key|token)[\"']?[ \t]{0,3}[:=]{1,2}[ \t]{0,3}[\"']?[^\s\"',;&}<>]{3,256}",
    r"[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}",
    r"[A-Za-z][A-Za-z0-9+.-]{1,15}://[A-Za-z0-9.-]{1,253}(?::\d{1,5})?",
    _W + r"\d{3}-\d{2}-\d{4}" + _W,
    _W + r"\d{3}\.\d{3}\.\d{3}-\d{2}",
    _W + r"\d{4} \d{4} \d{4}",
    _W + r"\d{8}-?[A-Z]",
    _W + r"[A-Z]{6}\d{2}[A-EHLMPRST]\d{2}[A-Z]\d{3}[A-Z]",
    _W + r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?",
    _W + r"\d(?:[ -]?\d){12,18}",
    r"(?<![0-9.])(?:\d{1,3}\.){3}\d{1,3}(?![0-9])",
    r"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{1,4}:|::?){2,7}(?::|[0-9A-Fa-f]{1,4})",
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}",
    _W + r"[0-9a-fA-F]{32,}",
    r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}",
    r"(?<![\w/.~])(?:~|\.{1,2})?/(?:[\w.@+-]{1,255}/){1,64}[\w.@+-]{0,255}",
]
NAIVE_PATTERNS = [re.compile(regex) for regex in NAIVE_REGEXES]


def naive_baseline(texts: list[str]) -> int:
    """One regex per kind, applied one after another with re.subn over the JSON text."""
    patterns = NAIVE_PATTERNS
    found = 0
    for text in texts:
        for pattern in patterns:
            text, n = pattern.subn("<redacted>", text)
            found += n
    return found


def _strings(value: Any, out: list[str]) -> list[str]:
    """Every string of a JSON value (what the redactor scans), keys included."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            out.append(key)
            _strings(item, out)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out)
    return out


def scan_without_prefilters(text: str) -> list[Any]:
    """The scanner as it ran before the Hyperscan pass: every gate checked with ``in``, the
    numeric scanners over the whole text (same hits; the yardstick for the pre-filters)."""
    lowered = text.lower()
    if len(text) <= scanner._SHORT_TEXT:
        if not scanner._MAYBE.search(text):
            return []
        present = set(scanner._GATE_RE.findall(lowered))
    else:
        present = {gate for gate in scanner._ALL_GATES if gate in lowered}
    return scanner._numeric_hits(text, len(text)) + scanner._gated_hits(text, len(text), lowered, present)


def _rate(fn: Any, items: list[Any], size: int, repeat: int = 3) -> float:
    """MB/s over the process's CPU time (best of ``repeat``): fairer on a shared, busy machine."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - start)
    return size / best / 1e6


def load_instrumentation(checkout: str, name: str = "_against_instrumentation") -> ModuleType:
    """``checkout``'s ``instrumentation`` package imported as ``name`` (its modules import each
    other relatively, so it runs beside ours in one process). Writes no ``__pycache__`` there."""
    root = os.path.join(os.path.abspath(checkout), "instrumentation")
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(root, "__init__.py"), submodule_search_locations=[root]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"--against: no instrumentation package under {checkout}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
        for sub in ("redact", "scanner"):
            importlib.import_module(f"{name}.{sub}")
    finally:
        sys.dont_write_bytecode = writes
    return module


def result_fields(result: Any) -> tuple[Any, ...]:
    """Everything a ``Redaction`` or ``ResultScan`` carries, comparable across two checkouts."""
    fields = tuple(getattr(result, f) for f in result.__slots__)
    text = result.json() if hasattr(result, "json") else ""
    return fields + (text, result.span_attributes())


def compare(ours: Any, theirs: Any, corpus: list[Any], texts: list[str]) -> int:
    """Number of records whose results differ between the two redactors (0: identical)."""
    differ = 0
    for record, text in zip(corpus, texts, strict=True):
        pairs = (
            (ours.redact(record), theirs.redact(record)),
            (ours.redact_json_text(text), theirs.redact_json_text(text)),
            (ours.scan_result(record), theirs.scan_result(record)),
        )
        differ += any(result_fields(a) != result_fields(b) for a, b in pairs)
    return differ


def _cpu(fn: Any, items: list[Any]) -> float:
    start = time.process_time()
    for item in items:
        fn(item)
    return time.process_time() - start


def against(checkout: str, corpus: list[Any], texts: list[str], size: int, rounds: int) -> None:
    """A/B in one process: ours vs ``checkout``'s redactor, alternating which runs first."""
    other = load_instrumentation(checkout)
    theirs = sys.modules[f"{other.__name__}.redact"].Redactor(b"bench-key")
    ours = Redactor(b"bench-key")
    differ = compare(ours, theirs, corpus, texts)
    print(f"identical results on {len(corpus) - differ}/{len(corpus)} records" + (" -- DIFFERENT" if differ else ""))
    cases = {
        "Redactor.redact (parsed JSON)": ("redact", corpus),
        "Redactor.redact_json_text": ("redact_json_text", texts),
        "Redactor.scan_result": ("scan_result", corpus),
    }
    print(f"{'':32s} {'this':>8s} {'against':>8s}   ratio (median of {rounds} interleaved rounds, MB/s per CPU-s)")
    for label, (method, items) in cases.items():
        mine: list[float] = []
        base: list[float] = []
        for k in range(rounds):
            order = ((ours, mine), (theirs, base)) if k % 2 == 0 else ((theirs, base), (ours, mine))
            for redactor, out in order:
                out.append(size / _cpu(getattr(redactor, method), items) / 1e6)
        ratios = [a / b for a, b in zip(mine, base, strict=True)]
        print(
            f"{label:32s} {statistics.median(mine):8.1f} {statistics.median(base):8.1f}   "
            f"{statistics.median(ratios):.2f}x (per-round {min(ratios):.2f}-{max(ratios):.2f})"
        )
    print(f"load average {os.getloadavg()[0]:.1f} after the A/B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--against", metavar="DIR", help="A/B against another checkout's instrumentation")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds for --against")
    args = parser.parse_args()

    corpus = make_corpus(args.records, args.seed)
    texts = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in corpus]
    size = sum(len(t.encode()) for t in texts)
    if args.against:
        print(
            f"corpus: {len(corpus)} records, {size / 1e6:.2f} MB of JSON, seed {args.seed}; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        against(args.against, corpus, texts, size, args.rounds)
        return
    redactor = Redactor(b"bench-key")
    print(
        f"corpus: {len(corpus)} records, {size / 1e6:.2f} MB of JSON, seed {args.seed}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (figures are per CPU-second)"
    )

    rates = {
        "Redactor.redact (parsed JSON)": _rate(redactor.redact, corpus, size),
        "Redactor.redact_json_text": _rate(redactor.redact_json_text, texts, size),
        "Redactor.scan_result": _rate(redactor.scan_result, corpus, size),
        "naive: one regex per detector, sequential": _rate(lambda t: naive_baseline([t]), texts, size, repeat=1),
        "reference: json.dumps of the same records": _rate(json.dumps, corpus, size),
    }
    strings = [text for record in corpus for text in _strings(record, [])]
    sketched = [text for text in strings if len(text) >= 4096]
    sketched_size = sum(len(t.encode()) for t in sketched)
    stages = {
        "stage: scanner.find_hits on every string": _rate(scanner.find_hits, strings, size),
        "stage: the same without the pre-filters": _rate(scan_without_prefilters, strings, size),
        "stage: near-copy sketch (MB/s of sketched text)": _rate(redactor._sketcher, sketched, sketched_size),
    }
    for name, rate in {**rates, **stages}.items():
        print(f"{name:45s} {rate:8.1f} MB/s")
    print(
        f"speed-up over naive: {rates['Redactor.redact (parsed JSON)'] / rates['naive: one regex per detector, sequential']:.1f}x"
    )

    small = corpus[::4]
    latencies = []
    for record in small:
        start = time.process_time()
        redactor.redact(record)
        latencies.append((time.process_time() - start) * 1e6)
    latencies.sort()
    print(
        f"small argument objects: p50 {statistics.median(latencies):.1f} us, p99 {latencies[int(len(latencies) * 0.99)]:.1f} us per call"
    )
    sample = redactor.redact(corpus[1])
    print(
        f"example labels {sample.labels}, {len(sample.fingerprints)} fingerprints, destinations {sample.destinations}"
    )


if __name__ == "__main__":
    main()
