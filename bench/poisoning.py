"""Precision/recall of the tool-poisoning scanner on the test corpus, vs. a naive keyword baseline.

Run: .venv/bin/python bench/poisoning.py [--threshold 0.5]
Prints figures only; it is not a pass/fail test (the budget test lives in tests/unit/detectors).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from toolwatch.detectors.events import ToolDefinition
from toolwatch.detectors.poisoning import scan_definition

CORPUS = Path(__file__).resolve().parent.parent / "tests/unit/detectors/testdata/tool_descriptions.yaml"
NAIVE_KEYWORDS = ("important", "password", "secret", "ignore", "ssh", "credential", "hidden", "token", "do not")


def all_text(item: dict) -> str:
    return (item["description"] + " " + yaml.safe_dump(item.get("input_schema") or {})).lower()


def naive(item: dict) -> bool:
    """The baseline: flag any description that contains a scary keyword."""
    text = all_text(item)
    return any(k in text for k in NAIVE_KEYWORDS)


def report(name: str, predicted: dict[str, bool], truth: dict[str, bool], seconds: float) -> None:
    tp = sum(predicted[i] and truth[i] for i in truth)
    fp = sum(predicted[i] and not truth[i] for i in truth)
    fn = sum(not predicted[i] and truth[i] for i in truth)
    benign = sum(not t for t in truth.values())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    print(f"{name:<10} precision {precision:5.3f}  recall {recall:5.3f}  "
          f"false-positive rate {fp / benign:5.3f} ({fp}/{benign} benign)  "
          f"{seconds * 1e6 / len(truth):8.1f} us/definition")
    wrong = sorted(i for i in truth if predicted[i] != truth[i])
    if wrong:
        print(f"{'':<10} wrong: {', '.join(wrong)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=20, help="timing repetitions")
    args = parser.parse_args()
    items = yaml.safe_load(CORPUS.read_text("utf-8"))
    names = [i["name"] for i in items]
    truth = {i["id"]: i["label"] == "poisoned" for i in items}
    print(f"corpus: {len(items)} descriptions ({sum(truth.values())} poisoned) from {CORPUS.name}")

    t0 = time.perf_counter()
    for _ in range(args.repeat):
        scores = {i["id"]: scan_definition(ToolDefinition(name=i["name"], description=i["description"],
                                                          input_schema=i.get("input_schema")),
                                           tool_names=names).score for i in items}
    scanner_s = (time.perf_counter() - t0) / args.repeat
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        naive_pred = {i["id"]: naive(i) for i in items}
    naive_s = (time.perf_counter() - t0) / args.repeat

    report("scanner", {k: v >= args.threshold for k, v in scores.items()}, truth, scanner_s)
    report("naive", naive_pred, truth, naive_s)
    print("scanner threshold sweep:")
    for th in (0.3, 0.4, 0.5, 0.6, 0.7):
        pred = {k: v >= th for k, v in scores.items()}
        tp = sum(pred[i] and truth[i] for i in truth)
        fp = sum(pred[i] and not truth[i] for i in truth)
        print(f"  threshold {th:.1f}: flagged {tp + fp:2d}, true {tp:2d}, false {fp:2d}")


if __name__ == "__main__":
    main()
