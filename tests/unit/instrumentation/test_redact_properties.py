"""Property tests: redaction never raises, and no planted secret of any kind gets through."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redaction_samples import SAMPLES

from toolwatch.instrumentation.redact import Redactor

REDACTOR = Redactor(b"property-test-key")

# Any text, including lone surrogates (invalid in UTF-8) and control characters.
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text | st.binary(max_size=20)
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(any_text, children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_like)
def test_redaction_never_raises_and_stays_json(value: Any) -> None:
    result = REDACTOR.redact(value)
    json.dumps(result.value)
    assert result.bytes >= 0
    assert result.labels == tuple(sorted(result.counts))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_text, json_like, st.sampled_from(["text", "image", "audio", "resource", None]))
def test_scan_result_never_raises(text: str, other: Any, kind: str | None) -> None:
    for value in ([{"type": "text", "text": text}], {"type": kind, "data": other, "uri": text, "blob": other}, other):
        scan = REDACTOR.scan_result(value)
        assert 0.0 <= scan.injection_score <= 1.0
        assert scan.labels == tuple(sorted(scan.counts))
    assert REDACTOR.scan_result({"type": [1], "data": "x"}).bytes > 0  # unhashable "type"


@st.composite
def planted(draw: st.DrawFn) -> tuple[Any, str, str]:
    """Arbitrary nested JSON with one secret planted in a string (or a key) somewhere inside."""
    kind = draw(st.sampled_from(sorted(SAMPLES)))
    text, secret, _ = SAMPLES[kind]
    before, after = draw(any_text), draw(any_text)
    leaf = f"{before}\n{text}\n{after}"
    container = draw(json_like)
    path_choices = draw(st.lists(st.integers(min_value=0, max_value=10), max_size=6))
    as_key = draw(st.booleans())
    return _plant(container, leaf, path_choices, as_key), secret, kind


def _plant(container: Any, leaf: str, path: list[int], as_key: bool) -> Any:
    """Put ``leaf`` at a position in ``container`` chosen by ``path`` (a copy; always planted)."""
    if path and isinstance(container, list) and container:
        i = path[0] % len(container)
        return container[:i] + [_plant(container[i], leaf, path[1:], as_key)] + container[i + 1 :]
    if path and isinstance(container, dict) and container:
        key = sorted(container, key=repr)[path[0] % len(container)]
        return {**container, key: _plant(container[key], leaf, path[1:], as_key)}
    return {leaf: container} if as_key else [container, leaf]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted())
def test_planted_secret_never_gets_through(case: tuple[Any, str, str]) -> None:
    value, secret, kind = case
    result = REDACTOR.redact(value)
    assert secret not in json.dumps(result.value, ensure_ascii=False), kind
    assert secret not in json.dumps(result.value), kind
    assert result.fingerprints


short_text = st.text(st.characters(exclude_categories=()), max_size=15)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(SAMPLES)),
    short_text,
    short_text,
    st.sampled_from([" ", ", ", "\t", ": ", " (", "='", "\n"]),
)
def test_planted_secret_in_running_text_never_gets_through(kind: str, before: str, after: str, sep: str) -> None:
    # Glued to arbitrary neighbours by ordinary separators: "<text>: <secret>, <more text>".
    text, secret, _ = SAMPLES[kind]
    result = REDACTOR.redact({"note": before + sep + text + sep[::-1] + after})
    assert secret not in json.dumps(result.value, ensure_ascii=False), kind


separators = st.sampled_from([" ", ", ", "\n", ": ", "\t", " | ", "; "])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(sorted(SAMPLES)), separators), min_size=2, max_size=5), short_text)
def test_several_planted_secrets_in_one_string_never_get_through(items: list[tuple[str, str]], filler: str) -> None:
    text = filler + "".join(sep + SAMPLES[kind][0] + sep for kind, sep in items)
    out = json.dumps(REDACTOR.redact({"note": text}).value, ensure_ascii=False)
    for kind, _ in items:
        assert SAMPLES[kind][1] not in out, kind


punctuation = st.sampled_from([*"()[].,:;'\"<>=!?*`{}|/\\-_+#@~ \n", "", "  "])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SAMPLES)), punctuation, punctuation, st.sampled_from(["", "x ", "word: ", "1 "]))
def test_planted_secret_glued_to_punctuation_never_gets_through(kind: str, left: str, right: str, lead: str) -> None:
    # "(secret)", "secret_", ":secret(", "id_secret": boundaries must not hide a value.
    text = lead + left + SAMPLES[kind][0] + right + " tail"
    out = json.dumps(REDACTOR.redact({"note": text}).value, ensure_ascii=False)
    assert SAMPLES[kind][1] not in out, kind
