"""Float matrices in JSON snapshots as base64 of their little-endian float64 bytes.

Detector state is saved as JSON every ``pipeline.snapshot_interval_s`` on the event loop. As
nested lists, the IsolationForest windows of a 200-agent fleet (2048 rows x 15 features each)
took ~2.5 s of CPU per snapshot (``tolist`` and ``json.dumps`` of six million floats) and 66 MB;
as bytes they take milliseconds, round-trip bit for bit, and never go through ``pickle``.

Readers accept both forms, so state saved before this encoding still loads.

With ``narrow``, columns whose every value is an integer 0-255 (``+0.0`` included, ``-0.0`` not) are
written as one byte each (``"u1"``, their positions in ``"u1_cols"``), the others as float64 (``"f8"``):
nine of the fifteen feature columns are counts and flags, so an IsolationForest window takes 57
bytes a row instead of 120, and every step of a snapshot that touches its bytes (base64, the JSON
text, SQLite) half the time. Still exact: a column is narrowed only if its bytes read back as the
same float64 bits.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

_F8 = np.dtype("<f8")


def encode_matrix(X: np.ndarray, narrow: bool = False) -> dict[str, Any]:
    """``{"f8": base64, "shape": [rows, cols]}`` for a 2-D float matrix; with ``narrow``, byte-valued
    columns apart (``"u1"``, ``"u1_cols"``) when there are any. ``narrow`` costs a few NumPy passes
    per matrix: for big matrices (windows, model samples), not for a session's handful of rows."""
    X = np.ascontiguousarray(X, dtype=_F8)
    if narrow and X.ndim == 2 and X.size:
        with np.errstate(invalid="ignore", over="ignore"):  # NaN, inf, out of range: not exact below
            small = X.astype(np.uint8)
        exact = (small.astype(_F8).view(np.int64) == X.view(np.int64)).all(axis=0)
        if exact.any():
            return {"f8": _b64(X[:, ~exact]), "u1": _b64(small[:, exact]),
                    "u1_cols": np.flatnonzero(exact).tolist(), "shape": list(X.shape)}
    return {"f8": _b64(X), "shape": list(X.shape)}


def _b64(X: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(X).tobytes()).decode("ascii")


def _bytes(data: dict[str, Any], key: str, what: str) -> bytes:
    try:
        return base64.b64decode(data[key].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"{what}: {key!r} is not base64 ({exc})") from None


def decode_matrix(data: Any, what: str) -> np.ndarray:
    """A float64 matrix from ``encode_matrix``'s form or from nested lists (the older form); a
    ``ValueError`` naming ``what`` if it is neither."""
    if not isinstance(data, dict):
        try:
            return np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: expected rows of numbers ({exc})") from None
    shape, text = data.get("shape"), data.get("f8")
    if (not isinstance(text, str) or not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ValueError(f"{what}: expected {{'f8': base64 text, 'shape': [rows, cols]}}")
    rows, cols = shape
    narrow = data.get("u1_cols")
    if narrow is None:
        raw = _bytes(data, "f8", what)
        if len(raw) != rows * cols * _F8.itemsize:
            raise ValueError(f"{what}: 'f8' holds {len(raw)} bytes, not the {rows} x {cols} float64 of 'shape'")
        return np.frombuffer(raw, dtype=_F8).astype(np.float64).reshape(shape)
    if (not isinstance(narrow, list) or not isinstance(data.get("u1"), str)
            or not all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < cols for j in narrow)
            or len(set(narrow)) != len(narrow)):
        raise ValueError(f"{what}: expected 'u1' base64 text and 'u1_cols' distinct columns below {cols}")
    wide = np.ones(cols, dtype=bool)
    wide[narrow] = False
    n_wide = cols - len(narrow)
    raw, small = _bytes(data, "f8", what), _bytes(data, "u1", what)
    if len(raw) != rows * n_wide * _F8.itemsize or len(small) != rows * len(narrow):
        raise ValueError(f"{what}: 'f8' and 'u1' hold {len(raw)} and {len(small)} bytes, not the {rows} rows of "
                         f"{n_wide} float64 and {len(narrow)} byte columns of 'shape' and 'u1_cols'")
    X = np.empty((rows, cols), dtype=np.float64)
    X[:, wide] = np.frombuffer(raw, dtype=_F8).reshape(rows, n_wide)
    X[:, narrow] = np.frombuffer(small, dtype=np.uint8).reshape(rows, len(narrow))
    return X
