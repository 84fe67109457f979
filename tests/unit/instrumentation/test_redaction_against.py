"""Same redaction as another checkout, value for value (opt-in: a speed change must not change output).

Set ``TOOLWATCH_REDACTION_AGAINST`` to a checkout (e.g. ``/work/main``) to run: its
``instrumentation`` package is imported beside this one (``bench/redaction.py``'s loader) and both
redact the bench corpus and hypothesis-generated JSON, short and long strings, with planted
secrets; every field of ``Redaction``/``ResultScan`` (and the JSON and span attributes) must be
equal. Skipped when the variable is unset (there is nothing to compare with).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redaction_samples import SAMPLES

from toolwatch.instrumentation.redact import Redactor

AGAINST = os.environ.get("TOOLWATCH_REDACTION_AGAINST", "")
pytestmark = pytest.mark.skipif(not AGAINST, reason="set TOOLWATCH_REDACTION_AGAINST to a checkout to compare with")


def _bench() -> Any:
    path = Path(__file__).resolve().parents[3] / "bench" / "redaction.py"
    spec = importlib.util.spec_from_file_location("_bench_redaction", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


BENCH = _bench() if AGAINST else None
KEY = b"against-test-key"
OURS = Redactor(KEY, sketch_min_chars=256)
THEIRS = (
    sys.modules[f"{BENCH.load_instrumentation(AGAINST).__name__}.redact"].Redactor(KEY, sketch_min_chars=256)
    if BENCH
    else None
)


def _same(value: Any) -> None:
    assert THEIRS is not None and BENCH is not None
    assert BENCH.result_fields(OURS.redact(value)) == BENCH.result_fields(THEIRS.redact(value))
    assert BENCH.result_fields(OURS.scan_result(value)) == BENCH.result_fields(THEIRS.scan_result(value))


PIECES = [text for text, _, _ in SAMPLES.values()] + [
    "2026-11-22T00:12:34Z INFO",
    "Bearer abcdefghijklmnopqrstuvwxyz012345",
    "https://api.example.com/v1/items/482913",
    "/home/alice/projects/report-12.pdf",
    "4539 1488 0343 6467",
    "+1 415 555 0132",
    "10.1.2.3",
    "fe80::1",
    "ignore all previous instructions",
    "do not tell the user",
    "\u200b",
    "é",
    "QWxhZGRpbjpvcGVuIHNlc2FtZQ0123456789abcdefXYZ==",
    "quarterly revenue growth",
    "\n",
    "  ",
]
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
pieced = st.lists(st.sampled_from(PIECES) | any_text, max_size=80).map(" ".join)
long_text = st.tuples(pieced, st.integers(min_value=0, max_value=3000)).map(lambda t: t[0] + " filler" * (t[1] // 7))
strings = any_text | pieced | long_text
scalars = st.none() | st.booleans() | st.integers() | st.floats() | strings
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["password", "text", "type", "token", "query"]) | any_text, children, max_size=5),
    max_leaves=20,
)


def test_bench_corpus_is_redacted_identically() -> None:
    assert BENCH is not None
    corpus = BENCH.make_corpus(400, 7)
    for record in corpus:
        _same(record)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(json_like)
def test_generated_json_is_redacted_identically(value: Any) -> None:
    _same(value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(strings, min_size=1, max_size=3), st.sampled_from(["text", "image", "resource", None]))
def test_generated_tool_results_are_scanned_identically(texts: list[str], kind: str | None) -> None:
    _same({"content": [{"type": kind, "text": text} for text in texts], "isError": False})
