"""Near-copy sketches: a MinHash of a large text, so an edited copy is found, not only an exact one.

Format (what detectors compare, without importing this module): a tuple of ``SKETCH_SLOTS`` ints,
each in ``0 .. 2**32-1``. It is a one-permutation MinHash: every shingle gets one keyed 64-bit
hash; its top 6 bits pick a slot and the slot keeps the smallest low 32 bits seen
(``EMPTY_SLOT`` if no shingle fell in it: for the >= 4 KiB texts toolwatch sketches, odds
below one in a billion). The fraction of equal slots of two sketches estimates the Jaccard
similarity of their shingle sets. Shingles are the 8-byte windows of the lower-cased,
whitespace-collapsed UTF-8 text (its first ``max_bytes``). The hash key comes from the deployment
key, so sketches compare only within one deployment and cannot be used to test guesses.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["SKETCH_SLOTS", "SHINGLE_BYTES", "Sketcher", "sketch_similarity"]

SKETCH_SLOTS = 64
SHINGLE_BYTES = 8
EMPTY_SLOT = 0xFFFFFFFF
_MASK32 = np.uint64(0xFFFFFFFF)
_SLOT_BITS = 6  # 2**6 == SKETCH_SLOTS


def sketch_similarity(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> float:
    """Fraction of equal slots (≈ Jaccard similarity of the texts' shingles); 0.0 if not comparable."""
    if not a or len(a) != len(b):
        return 0.0
    return sum(1 for x, y in zip(a, b, strict=True) if x == y) / len(a)


class Sketcher:
    """One-permutation MinHash with ``SKETCH_SLOTS`` slots over keyed hashes of 8-byte shingles."""

    def __init__(self, seed_key: bytes, *, max_bytes: int = 64 * 1024) -> None:
        digest = hashlib.shake_256(b"toolwatch-sketch" + seed_key).digest(8)
        self._key = np.frombuffer(digest, dtype="<u8")[0]
        self._max_bytes = max_bytes

    def __call__(self, text: str) -> tuple[int, ...]:
        head = text[: self._max_bytes]
        if head.isascii():
            data = _normal_ascii(head.encode("ascii"))
        else:
            data = " ".join(head.split()).lower().encode("utf-8", "surrogatepass")[: self._max_bytes]
        if len(data) < SHINGLE_BYTES:
            data = data.ljust(SHINGLE_BYTES, b"\0")
        hashed = _splitmix(_shingles(data) ^ self._key)
        slots = hashed >> np.uint64(64 - _SLOT_BITS)
        hashed &= _MASK32
        mins = np.full(SKETCH_SLOTS, EMPTY_SLOT, dtype=np.uint64)
        np.minimum.at(mins, slots.astype(np.intp), hashed)
        return tuple(mins.tolist())


_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[ord("A") : ord("Z") + 1] += 32
_SPACE = np.zeros(256, dtype=bool)
_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True  # what str.split() splits ASCII text on
_LOWER[_SPACE] = ord(" ")


def _normal_ascii(data: bytes) -> bytes:
    """``" ".join(text.split()).lower()`` of ASCII text, as bytes, without a string per word."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if not raw.size:
        return b""
    space = _SPACE[raw]
    keep = ~space
    keep[1:] |= ~space[:-1]  # the first space of a run stays (as one " "), the rest go
    out = _LOWER[raw][keep].tobytes()
    return out[:-1] if out.endswith(b" ") else out


def _shingles(data: bytes) -> np.ndarray:
    """Every 8-byte window of ``data`` as a little-endian uint64, in no particular order.

    A MinHash is over the *set* of shingles, so order does not matter: the windows that start at
    ``k, k+8, k+16 …`` are ``data[k:]`` read as uint64s directly (no copy per window), for k in 0..7.
    """
    n = len(data)
    parts = [np.frombuffer(data, dtype="<u8", count=(n - k) // SHINGLE_BYTES, offset=k) for k in range(SHINGLE_BYTES)]
    return np.concatenate(parts)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mix so that near-equal shingles hash far apart (in place on a fresh array)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        tmp = np.empty_like(z)
        for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            np.right_shift(z, np.uint64(shift), out=tmp)
            z ^= tmp
            z *= np.uint64(mul)
        np.right_shift(z, np.uint64(31), out=tmp)
        z ^= tmp
        return z
