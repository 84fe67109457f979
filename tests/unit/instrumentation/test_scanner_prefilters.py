"""The long-text pre-filters (one Hyperscan pass: gates, blob runs, lines with digit candidates)
must change nothing: ``find_hits`` equals a plain scan of the whole text with every detector."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redaction_samples import SAMPLES

from toolwatch.instrumentation import scanner
from toolwatch.instrumentation.redact import Redactor
from toolwatch.instrumentation.scanner import Hit, find_hits

REDACTOR = Redactor(b"prefilter-test-key")


def reference_hits(text: str, limit: int | None = None) -> list[Hit]:
    """Gates checked with ``in`` (short text: the gate regex, as ``find_hits`` does), every
    numeric scanner over the whole text: no pre-filter."""
    end_pos = len(text) if limit is None else min(limit, len(text))
    lowered = text[:end_pos].lower()
    if end_pos <= scanner._SHORT_TEXT:
        present = set(scanner._GATE_RE.findall(lowered))
    else:
        present = {gate for gate in scanner._ALL_GATES if gate in lowered}
    hits = scanner._numeric_hits(text, end_pos, None, None) + scanner._gated_hits(text, end_pos, lowered, present)
    return scanner._merge(hits) if len(hits) > 1 else hits


# Pieces that wake each pre-filter and sit on their edges: numbers of every shape, blobs, hex,
# IPv4/IPv6, codes after capitals, line breaks, and the planted samples themselves.
PIECES = [sample for sample, _, _ in SAMPLES.values()] + [
    "2026-11-22T00:12:34Z",
    "4539148803436467",
    "4539 1488 0343 6467",
    "4111-1111-1111-1111",
    "+1 415 555 0132",
    "415 555 0132",
    "415.555.0132",
    "10.1.2.3",
    "10.1.2.3.4",
    "1.2.3",
    "fe80::1",
    "2001:db8::8a2e:370:7334",
    "a1",
    "0xdeadbeef",
    "d41d8cd98f00b204e9800998ecf8427e",
    "DE89370400440532013000",
    "RSSMRA85T10A562S",
    "12345678Z",
    "536-90-4399",
    "123.456.789-09",
    "2345 6789 0124",
    "QWxhZGRpbjpvcGVuIHNlc2FtZQ0123456789abcdefXYZ==",
    "A" * 40,
    "9" * 40,
    "id_4539148803436467",
    "v1/items/482913",
    "report-12.pdf",
    "12:30:45",
    "\n",
    "\n\n",
    " ",
    ". ",
    ":",
    "-",
    "=",
    "/",
    "the",
    "quarterly revenue",
    "ABCDEF",
    "é",
]
pieces = st.lists(st.sampled_from(PIECES), min_size=1, max_size=60)
glue = st.sampled_from(["", " ", "\n", ", ", ":", "-", "."])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces, glue, st.integers(min_value=513, max_value=3000), st.none() | st.integers(min_value=0, max_value=4000))
def test_long_text_prefilters_find_what_a_full_scan_finds(parts: list[str], sep: str, size: int, limit: int | None) -> None:
    text = sep.join(parts)
    text = (text + "\n" + "quarterly revenue growth " * (size // 25 + 1))[: max(size, len(text))]
    text = sep.join([text, *parts])  # pieces at both ends of a long text
    assert len(text) > 512
    assert find_hits(text, limit) == reference_hits(text, limit)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SAMPLES)), st.integers(min_value=0, max_value=40), st.sampled_from([" ", "\n", ", "]))
def test_planted_secret_in_long_text_never_gets_through(kind: str, position: int, sep: str) -> None:
    # A log or document of many lines, one of which holds the secret.
    lines = [f"2026-11-22T00:{i:02d}:00Z INFO request {i} served for the quarterly report" for i in range(40)]
    lines.insert(position, "note" + sep + SAMPLES[kind][0] + sep + "end")
    text = "\n".join(lines)
    out = json.dumps(REDACTOR.redact({"text": text}).value, ensure_ascii=False)
    assert SAMPLES[kind][1] not in out, kind


def test_dense_candidates_fall_back_to_a_full_scan() -> None:
    # Thousands of candidate shapes: the digit pre-filter gives up and the whole text is read.
    text = " ".join(f"a{i} 4539148803436467" for i in range(2000))
    present, runs, digit_ends = scanner._LONG_SCAN.scan(text, text.lower())
    assert digit_ends is None
    assert find_hits(text) == reference_hits(text)
    assert sum(1 for hit in find_hits(text) if hit.detector.label == "card") == 2000


def test_non_ascii_text_is_scanned_whole() -> None:
    text = "é " * 300 + "card 4539 1488 0343 6467 and AKIAIOSFODNN7EXAMPLE"
    present, runs, digit_ends = scanner._LONG_SCAN.scan(text, text.lower())
    assert runs is None and digit_ends is None and "akia" in present
    assert [hit.detector.name for hit in find_hits(text)] == ["card", "aws_access_key"]


def test_gates_found_in_one_pass_equal_substring_search() -> None:
    text = ("plain words " * 60) + "Bearer x, sk-ant-api03-x, GITHUB_PAT_x, hooks.slack.com, C:\\x"
    present, _, _ = scanner._LONG_SCAN.scan(text, text.lower())
    assert present == {gate for gate in scanner._ALL_GATES if gate in text.lower()}
    assert {"sk-ant-", "sk-", "bearer", "github_pat_", "hooks.slack.com", ":\\"} <= present


def test_threads_scan_at_once_with_the_same_results() -> None:
    # The Hyperscan database is shared and releases the GIL while scanning: each scan must use
    # its own scratch space, or concurrent scans would corrupt each other.
    from concurrent.futures import ThreadPoolExecutor

    texts = [
        "\n".join(f"{i} line {j}: 4539 1488 0343 6467 AKIAIOSFODNN7EXAMPLE 10.0.{i}.{j}" for j in range(40))
        for i in range(24)
    ]
    expected = [find_hits(text) for text in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(5):
            assert list(pool.map(find_hits, texts)) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "Z", "9", "+", "/", "_", "=", "-", " ", "\n", ".", "é", "x" * 31, "Q" * 32]), max_size=120),
    st.integers(min_value=0, max_value=600),
)
def test_blob_runs_are_read_only_where_the_pass_saw_one(parts: list[str], pad: int) -> None:
    # The one pass says whether any run of _BLOB_MIN blob characters exists; where it says none,
    # _blob_runs would have found none either.
    text = " " * pad + "".join(parts) + " " * 513
    present, runs, digit_ends = scanner._LONG_SCAN.scan(text, text.lower())
    if text.isascii() and digit_ends is not None:
        assert runs == scanner._blob_runs(text.encode("ascii"))
    else:
        assert runs is None


def test_one_character_gates_are_found_beside_the_pass() -> None:
    # "/" and "@" are looked for with ``in``, not by Hyperscan: the present set is the same.
    for text in ("plain words " * 60 + "mail bob@example.com at /srv/x", "plain words " * 60 + "AKIA", "/" + "x" * 600):
        present, _, _ = scanner._LONG_SCAN.scan(text, text.lower())
        assert present == {gate for gate in scanner._ALL_GATES if gate in text.lower()}
