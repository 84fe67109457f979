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
import re

import numpy as np

__all__ = ["SKETCH_SLOTS", "SHINGLE_BYTES", "Sketcher", "sketch_similarity"]

SKETCH_SLOTS = 64
SHINGLE_BYTES = 8
EMPTY_SLOT = 0xFFFFFFFF
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
        hashed = np.bitwise_xor(_shingles(data), self._key)  # the one copy of the shingles
        scratch = np.empty_like(hashed)
        _splitmix(hashed, scratch)
        return _slot_minima(hashed, scratch)


_U32 = np.dtype("<u4")
_KEEP_PER_SLOT = 16
_SLOT_SHIFT = np.uint64(64 - _SLOT_BITS)

# str.split() splits ASCII text on these; lower-case and turn them all into " " in one translate
_LOWER = bytearray(range(256))
_LOWER[ord("A") : ord("Z") + 1] = bytes(range(ord("a"), ord("z") + 1))
for _byte in (9, 10, 11, 12, 13, 28, 29, 30, 31, 32):
    _LOWER[_byte] = ord(" ")
_LOWER_TABLE = bytes(_LOWER)
del _LOWER, _byte
_SPACE_RUN = re.compile(rb" {2,}")
_SPACE = np.uint8(ord(" "))


def _normal_ascii(data: bytes) -> bytes:
    """``" ".join(text.split()).lower()`` of ASCII text, as bytes, without a string per word."""
    out = data.translate(_LOWER_TABLE)
    # ``b"  " in out`` is slow on text full of single spaces (~1.4 ns a byte: the search stops
    # at every space); comparing neighbours in numpy costs a quarter of that.
    spaces = np.frombuffer(out, dtype=np.uint8) == _SPACE
    if (spaces[1:] & spaces[:-1]).any():
        out = _SPACE_RUN.sub(b" ", out)
    return out.strip(b" ")


def _shingles(data: bytes) -> np.ndarray:
    """Every 8-byte window of ``data`` as a little-endian uint64: a read-only view, no copy.

    The view steps one byte at a time (unaligned reads), so the first operation on it (the key
    XOR) writes the only copy.
    """
    return np.ndarray((len(data) - SHINGLE_BYTES + 1,), dtype="<u8", buffer=data, strides=(1,))


def _slot_minima(hashed: np.ndarray, scratch: np.ndarray) -> tuple[int, ...]:
    """Per slot (the top ``_SLOT_BITS`` of each hash) the smallest low 32 bits (``EMPTY_SLOT``
    where none).

    ``np.minimum.at`` is slow per element, so it first runs only over the values small enough to
    be a minimum: with n uniform 32-bit values, those below ``16 * 64 / n`` of the range are ~16
    per slot, and only their slots are computed. If some slot got none of them (few distinct
    shingles), every value is used instead, so the result is always the exact minimum. The low
    halves are cast to one contiguous array first: comparing a strided view of them costs
    several times more than the cast. ``scratch`` (the mix's, as large as ``hashed`` and still in
    cache) holds the low halves and the comparison, so no fresh memory is touched.
    """
    n = len(hashed)
    mins = np.full(SKETCH_SLOTS, EMPTY_SLOT, dtype=_U32)
    low = scratch.view(_U32)[:n]  # bytes [0, 4n) of scratch
    np.copyto(low, hashed, casting="unsafe")  # truncating cast: the low 32 bits of each hash
    limit = (_KEEP_PER_SLOT * SKETCH_SLOTS << 32) // max(n, 1)
    if limit < EMPTY_SLOT:
        below = scratch.view(np.bool_)[4 * n : 5 * n]  # bytes [4n, 5n): apart from ``low``
        np.less(low, np.uint32(limit), out=below)
        few = below.nonzero()[0]
        # Slots are below 64: the shifted uint64 values read as int64 (same width) need no cast.
        np.minimum.at(mins, np.right_shift(hashed[few], _SLOT_SHIFT).view(np.int64), low[few])
        if mins.max() != EMPTY_SLOT:  # EMPTY_SLOT is the largest uint32: no slot left empty
            return tuple(mins.tolist())
        mins.fill(EMPTY_SLOT)
    np.minimum.at(mins, (hashed >> _SLOT_SHIFT).astype(np.intp), low)
    return tuple(mins.tolist())


_MIX_ADD = np.uint64(0x9E3779B97F4A7C15)
_MIX_STEPS = ((np.uint64(30), np.uint64(0xBF58476D1CE4E5B9)), (np.uint64(27), np.uint64(0x94D049BB133111EB)))
_MIX_LAST = np.uint64(31)


def _splitmix(z: np.ndarray, tmp: np.ndarray) -> None:
    """SplitMix64's finaliser, in place on ``z`` (``tmp``: scratch of the same shape), so that
    near-equal shingles hash far apart. Integer array arithmetic wraps modulo 2**64 and never
    warns, so no ``np.errstate`` (a context manager per call) is needed."""
    z += _MIX_ADD
    for shift, mul in _MIX_STEPS:
        np.right_shift(z, shift, out=tmp)
        z ^= tmp
        z *= mul
    np.right_shift(z, _MIX_LAST, out=tmp)
    z ^= tmp
