"""The validators' fast paths (entropy table, ASCII character-class tests) decide exactly like
their plain definitions: a redaction must not change because a validator got faster."""

from __future__ import annotations

import ipaddress
import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from stdnum import luhn

from toolwatch.instrumentation.validators import is_b64_blob, is_card, is_ipv4, only_digits, shannon_entropy


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


def _plain_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(0, 999).map(str), st.sampled_from(["0", "00", "01", "255", "256", "", "٣", "1/2", " 1", "+1", "1_0"])),
        min_size=1,
        max_size=6,
    ).map(".".join)
    | st.text(st.sampled_from([*"0123456789./ ", "٣", "²"]), max_size=20)
)
def test_ipv4_decision_is_ipaddress(text: str) -> None:
    assert is_ipv4(text) == _plain_ipv4(text)


def _plain_card_checksum(text: str) -> bool:
    digits = only_digits(text)
    return luhn.is_valid(digits)


@settings(max_examples=1000, deadline=None)
@given(
    st.text(st.sampled_from([*"0123456789"]), min_size=13, max_size=19)
    | st.lists(st.text(st.sampled_from([*"0123456789", "٣", "²"]), min_size=1, max_size=6), min_size=2, max_size=5).map(" ".join)
)
def test_card_luhn_fast_path_decides_like_stdnum(text: str) -> None:
    digits = only_digits(text)
    shape_ok = 13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1
    groups = [len(g) for g in text.split(" ")]
    grouping_ok = len(groups) == 1 or groups == [4, 6, 5] or (all(g == 4 for g in groups[:-1]) and groups[-1] <= 4)
    assert is_card(text) == (shape_ok and grouping_ok and _plain_card_checksum(text))


def test_known_cards_and_near_misses() -> None:
    assert is_card("4539 1488 0343 6467") and is_card("4111111111111111")
    assert not is_card("4539 1488 0343 6468") and not is_card("4111111111111112")
