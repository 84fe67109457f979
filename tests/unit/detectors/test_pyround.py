"""``py_round`` is Python's ``round(x, ndigits)`` bit for bit, on values a plain NumPy rounding gets
wrong too (binary values just off a decimal half-way point)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.detectors.pyround import py_round


def _bits(a: np.ndarray) -> list[int]:
    """Bit patterns, with every NaN as one pattern (``round`` keeps a NaN's payload, NaN is NaN)."""
    a = np.where(np.isnan(a), np.nan, a)
    return a.view(np.int64).tolist()


def _check(values: np.ndarray, ndigits: int) -> None:
    want = np.array([round(float(x), ndigits) for x in values.ravel()]).reshape(values.shape)
    got = py_round(values, ndigits)
    assert got.shape == values.shape
    assert _bits(got) == _bits(want)


def _half_ways(ndigits: int) -> np.ndarray:
    """Decimal half-way points at ``ndigits`` and their binary neighbours on both sides."""
    h = (np.arange(-3000, 3000) + 0.5) / 10.0**ndigits
    return np.concatenate([h, np.nextafter(h, np.inf), np.nextafter(h, -np.inf), h * 1e3, h * 1e-3])


@pytest.mark.parametrize("ndigits", [0, 1, 4, 6, 9, 15])
def test_half_way_points_and_their_neighbours(ndigits: int) -> None:
    values = _half_ways(ndigits)
    _check(values, ndigits)
    if ndigits in (4, 6):  # the naive rounding differs on some of them: the check above can fail
        naive = np.round(values, ndigits)
        assert _bits(naive) != _bits(py_round(values, ndigits))


def test_special_values() -> None:
    values = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 1e300, -1e300, 2.0**50, 2.0**52 + 1,
                       2.0**60, 0.00005, 1.00005, 2.675, -2.675, 1e16, 123456789.123456789, -0.00004])
    for nd in range(16):
        _check(values, nd)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=40), st.integers(0, 15))
def test_any_floats(values: list[float], ndigits: int) -> None:
    _check(np.array(values, dtype=np.float64), ndigits)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([4, 6]))
def test_feature_like_matrices(seed: int, ndigits: int) -> None:
    rnd = np.random.default_rng(seed)
    X = rnd.normal(size=(7, 15)) * rnd.choice([1e-4, 1.0, 30.0, 1e5], size=15)
    short = rnd.random(X.shape) < 0.2
    X[short] = np.round(X[short], 1)  # some short decimals
    _check(X, ndigits)


def test_ndigits_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="ndigits"):
        py_round(np.zeros(2), 16)
