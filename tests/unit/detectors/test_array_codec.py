"""Float matrices in snapshots as base64 (detectors/array_codec.py): exact round trips through JSON,
the older nested-list form still read, and every malformed form refused with a message."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from toolwatch.detectors.array_codec import decode_matrix, encode_matrix

matrices = st.tuples(st.integers(0, 20), st.integers(0, 16)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=st.floats(allow_nan=True, allow_infinity=True)))


@given(matrices)
def test_round_trip_through_json_is_bit_exact(X: np.ndarray) -> None:
    back = decode_matrix(json.loads(json.dumps(encode_matrix(X))), "m")
    assert back.shape == X.shape and back.dtype == np.float64
    assert back.tobytes() == np.ascontiguousarray(X).tobytes()  # NaN payloads and -0.0 included
    back[...] = 0  # a writable copy, not a view of the decoded bytes


@given(arrays(np.float64, (5, 3), elements=st.floats(allow_nan=False)))
def test_nested_lists_of_the_older_snapshots_still_read(X: np.ndarray) -> None:
    assert decode_matrix(X.tolist(), "m").tobytes() == X.tobytes()


def test_non_contiguous_and_other_dtypes_are_encoded_as_float64() -> None:
    X = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]
    assert decode_matrix(encode_matrix(X), "m").tolist() == X.astype(np.float64).tolist()


@pytest.mark.parametrize(("data", "message"), [
    ({"f8": "AAAA", "shape": [1]}, "expected {'f8'"),
    ({"f8": "AAAA", "shape": [1, True]}, "expected {'f8'"),
    ({"f8": "AAAA", "shape": [-1, 1]}, "expected {'f8'"),
    ({"f8": 7, "shape": [1, 1]}, "expected {'f8'"),
    ({"shape": [1, 1]}, "expected {'f8'"),
    ({"f8": "not base64!", "shape": [1, 1]}, "not base64"),
    ({"f8": "é", "shape": [1, 1]}, "not base64"),
    ({"f8": encode_matrix(np.zeros((2, 2)))["f8"], "shape": [2, 3]}, "holds 32 bytes, not the 2 x 3"),
    ([["a", "b"]], "expected rows of numbers"),
])
def test_malformed_matrices_are_refused_by_name(data: object, message: str) -> None:
    with pytest.raises(ValueError, match="window rows") as err:
        decode_matrix(data, "window rows")
    assert message in str(err.value)


narrowable = st.tuples(st.integers(0, 20), st.integers(1, 16)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=st.one_of(
        st.integers(0, 255).map(float), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-0.0, 256.0, -1.0, 0.5]))))


@given(narrowable | matrices)
def test_narrow_round_trip_through_json_is_bit_exact(X: np.ndarray) -> None:
    data = encode_matrix(X, narrow=True)
    back = decode_matrix(json.loads(json.dumps(data)), "m")
    assert back.shape == X.shape and back.dtype == np.float64
    assert back.tobytes() == np.ascontiguousarray(X).tobytes()
    if "u1_cols" in data:  # only columns of bytes 0-255 (not -0.0) are narrowed
        narrowed = X[:, data["u1_cols"]]
        assert ((narrowed >= 0) & (narrowed <= 255) & (narrowed == np.round(narrowed))).all()
        assert not np.signbit(narrowed).any()


def test_narrow_writes_byte_columns_apart_and_the_plain_form_otherwise() -> None:
    X = np.array([[0.5, 1.0, 3.0], [1.5, 0.0, 255.0]])
    data = encode_matrix(X, narrow=True)
    assert data["u1_cols"] == [1, 2] and set(data) == {"f8", "u1", "u1_cols", "shape"}
    assert encode_matrix(X[:, :1], narrow=True) == encode_matrix(X[:, :1])  # nothing to narrow: the older form


@pytest.mark.parametrize(("change", "message"), [
    ({"u1_cols": [1, 1]}, "distinct columns"),
    ({"u1_cols": [3]}, "distinct columns"),
    ({"u1_cols": [True]}, "distinct columns"),
    ({"u1": 5}, "distinct columns"),
    ({"u1": "not base64!"}, "'u1' is not base64"),
    ({"u1_cols": [1]}, "not the 2 rows of 2 float64 and 1 byte columns"),
])
def test_malformed_narrow_matrices_are_refused_by_name(change: dict, message: str) -> None:
    data = {**encode_matrix(np.array([[0.5, 1.0, 3.0], [1.5, 0.0, 255.0]]), narrow=True), **change}
    with pytest.raises(ValueError, match="window rows") as err:
        decode_matrix(data, "window rows")
    assert message in str(err.value)
