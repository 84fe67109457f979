"""The validators' fast paths (entropy table, ASCII character-class tests) decide exactly like
their plain definitions: a redaction must not change because a validator got faster."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.instrumentation.validators import is_b64_blob, shannon_entropy


def _plain_entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


def _plain_b64(text: str) -> bool:
    core = text.rstrip("=")
    if len(core) < 32:
        return False
    mixed = (
        any(ch.isdigit() for ch in core) and any(ch.isupper() for ch in core) and any(ch.islower() for ch in core)
    )
    return mixed and _plain_entropy(core[:256]) >= 4.0


_CHARS = st.sampled_from([*"aAbBzZ0189+/=_-", "é", "Ä", "٣", "²"])


@settings(max_examples=500, deadline=None)
@given(st.text(_CHARS, max_size=300))
def test_entropy_is_the_same_float(text: str) -> None:
    assert shannon_entropy(text) == _plain_entropy(text)


@settings(max_examples=500, deadline=None)
@given(st.text(_CHARS, min_size=28, max_size=300))
def test_b64_blob_decision_is_unchanged(text: str) -> None:
    assert is_b64_blob(text) == _plain_b64(text)


def test_entropy_exactly_at_the_threshold() -> None:
    # 16 symbols twice each: exactly 4.0 bits, the b64 threshold; it must stay accepted.
    text = "ABCDEFGHabcdefgh" * 2
    assert shannon_entropy(text) == 4.0
    assert is_b64_blob("ABCDEFGabcdefg01" * 2) and _plain_b64("ABCDEFGabcdefg01" * 2)
