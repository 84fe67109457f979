"""IsolationForest snapshots in main's form, for A/B tests against main's detector: every matrix
as plain float64 base64 (or as ``matrix`` makes it) and pending rows as a matrix per session, where
this detector writes byte-valued columns apart and one matrix of all sessions' pending rows; the
group-fit tally (``group_tally``: main judges no group model's fit) is left out."""

from __future__ import annotations

from typing import Any, Callable

from toolwatch.detectors.array_codec import decode_matrix, encode_matrix

MATRIX_KEYS = ({"f8", "shape"}, {"f8", "u1", "u1_cols", "shape"})


def as_f8(m: Any) -> Any:
    return encode_matrix(decode_matrix(m, "test"))


def main_form(state: Any, matrix: Callable[[Any], Any] = as_f8) -> Any:
    """``state`` (any part of a snapshot) as main writes it; key order kept."""
    if isinstance(state, list):
        return [main_form(v, matrix) for v in state]
    if not isinstance(state, dict):
        return state
    if set(state) in MATRIX_KEYS:
        return matrix(state)
    out: dict[str, Any] = {}
    for k, v in state.items():
        if k == "pending_sessions":  # the three pending keys stand where main's "pending" stood
            rows, at = decode_matrix(state["pending_rows"], "test"), 0
            out["pending"] = {}
            for sid, n in zip(v, state["pending_counts"]):
                out["pending"][sid], at = matrix(encode_matrix(rows[at : at + n])), at + n
        elif k not in ("pending_counts", "pending_rows", "group_tally"):
            out[k] = main_form(v, matrix)
    return out
