"""Near-copy sketches: a MinHash of a large text, so an edited copy is found, not only an exact one.

Format (what detectors compare, without importing this module): a tuple of ``SKETCH_SLOTS`` ints,
each in ``0 .. 2**32-1``. Slot ``i`` is the minimum over the text's shingles of the ``i``-th keyed
hash. The fraction of equal slots of two sketches estimates the Jaccard similarity of their
shingle sets. Shingles are the 8-byte windows of the lower-cased, whitespace-collapsed UTF-8 text
(at most ``max_bytes`` of it). The hash seeds come from the deployment key, so sketches compare
only within one deployment and cannot be used to test guesses about the text.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

__all__ = ["SKETCH_SLOTS", "SHINGLE_BYTES", "Sketcher", "sketch_similarity"]

SKETCH_SLOTS = 64
SHINGLE_BYTES = 8
_SPACES = re.compile(r"\s+")
_MASK32 = np.uint64(0xFFFFFFFF)


def sketch_similarity(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> float:
    """Fraction of equal slots (≈ Jaccard similarity of the texts' shingles); 0.0 if not comparable."""
    if not a or len(a) != len(b):
        return 0.0
    return sum(1 for x, y in zip(a, b) if x == y) / len(a)


class Sketcher:
    """MinHash with ``SKETCH_SLOTS`` keyed multiply-shift hashes over 8-byte shingles."""

    def __init__(self, seed_key: bytes, *, max_bytes: int = 256 * 1024) -> None:
        stream = hashlib.shake_256(b"toolwatch-sketch" + seed_key).digest(16 * SKETCH_SLOTS)
        words = np.frombuffer(stream, dtype="<u8").reshape(SKETCH_SLOTS, 2)
        self._mul = (words[:, 0] | np.uint64(1)).reshape(SKETCH_SLOTS, 1)  # odd multipliers
        self._add = words[:, 1].reshape(SKETCH_SLOTS, 1)
        self._max_bytes = max_bytes

    def __call__(self, text: str) -> tuple[int, ...]:
        normal = _SPACES.sub(" ", text).strip().lower()
        data = normal.encode("utf-8", "surrogatepass")[: self._max_bytes]
        if len(data) < SHINGLE_BYTES:
            data = data.ljust(SHINGLE_BYTES, b"\0")
        raw = np.frombuffer(data, dtype=np.uint8)
        windows = np.lib.stride_tricks.sliding_window_view(raw, SHINGLE_BYTES)
        shingles = np.unique(np.ascontiguousarray(windows).view("<u8").ravel())
        mixed = _splitmix(shingles)
        with np.errstate(over="ignore"):
            hashed = (mixed[np.newaxis, :] * self._mul + self._add) >> np.uint64(32)
        return tuple(int(v) for v in hashed.min(axis=1) & _MASK32)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mix so that near-equal shingles hash far apart."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
