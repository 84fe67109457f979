"""Detector state as JSON text (UTF-8 bytes), encoded by msgspec's C encoder, with the big base64
strings of float matrices (detectors/array_codec.py) copied in instead of scanned.

Why: the pipeline saves every detector's state on its event loop, and no batch is processed
meanwhile. ``json``'s encoder took ~60 % of that time with fleet state: the IsolationForest
windows are ~70 MB of base64 text, and the rest (sessions, windows, flows) hundreds of thousands
of small dicts, lists and numbers. msgspec writes the same data 3-5 times faster. The big strings
are still taken out first (each checked for needing no escape with a few vectorised NumPy passes,
replaced by a placeholder) and joined back in as bytes, so neither encoder copies them char by char.

What ``json.loads`` reads back is what it reads back from ``json.dumps(state)``; the text itself
may differ (non-ASCII characters written as UTF-8, not ``\\u`` escapes; ``1e16``, not ``1e+16``).
``json`` itself writes the state when msgspec cannot do the same:

- msgspec refuses it (an int key beside a bool or ``None`` key, a lone surrogate, ...);
- it holds a non-finite float (msgspec writes NaN and infinities as ``null``, ``json`` as ``NaN``,
  ``Infinity``): checked only when the text holds a ``null`` at all, by encoding the state once more
  as MessagePack, where every float is ``0xcb`` and its 8 big-endian bytes, and looking for the
  all-ones exponent of NaN and infinities (a string or integer that happens to hold those bytes only
  sends the state to ``json``).

Two differences are left, for data no detector state holds (the conformance suite checks each
state's ``json.dumps`` restores): dict keys that are floats are written in msgspec's float form
(``"0.00001"``, not ``"1e-05"``), and types ``json`` refuses but msgspec writes (sets, bytes,
dataclasses, datetimes) are written, not refused.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import msgspec
import numpy as np

__all__ = ["dumps_state", "dumps_state_bytes"]

BIG = 1024
"""Strings shorter than this are left to the encoder (a NumPy check costs more than it saves). The
IsolationForest's pending session rows are ~1-10 KB of base64 each, its windows ~330 KB."""
_MAX_DEPTH = 6
"""Dict levels searched: IsolationForest pending rows are at state/agents/<agent>/pending/<session>."""
_SEARCH = 10_000
"""Dict entries searched before a state with no big string yet is encoded whole: a state without
matrices (volume's thousands of windows) should not pay for a walk of all of it."""

_JSON = msgspec.json.Encoder().encode
_MSGPACK = msgspec.msgpack.Encoder().encode
_NONFINITE = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")
"""A MessagePack float64 whose exponent bits are all ones (NaN, +-Infinity); any sign, any mantissa."""
_STDLIB = json.JSONEncoder(separators=(",", ":")).encode
"""What ``json.dumps(obj, separators=(",", ":"))`` calls, built once: the fallback."""


class _NoneBig(Exception):
    """The first ``_SEARCH`` entries held no big string."""


def dumps_state(state: Any, big: int = BIG) -> str:
    """``dumps_state_bytes`` as a ``str``."""
    return dumps_state_bytes(state, big).decode("utf-8")


def dumps_state_bytes(state: Any, big: int = BIG) -> bytes:
    """JSON text (UTF-8) that ``json.loads`` reads back as it reads ``json.dumps(state)``."""
    marker = secrets.token_hex(16)
    strings: list[bytes] = []
    try:
        skeleton = _swap(state, marker, strings, big, _MAX_DEPTH, [_SEARCH])
    except _NoneBig:
        skeleton, strings = state, []
    text = _encode(skeleton)
    if text is None:
        return _STDLIB(state).encode("utf-8")
    if not strings:
        return text
    parts = text.split(f'"{marker}"'.encode("ascii"))
    if len(parts) != len(strings) + 1:  # the marker is also in the state itself: no splicing
        return _JSON(state)  # the skeleton passed _encode's checks, and the big strings are plain
    out = [parts[0]]
    for s, part in zip(strings, parts[1:]):
        out += (b'"', s, b'"', part)
    return b"".join(out)


def _encode(obj: Any) -> bytes | None:
    """msgspec's JSON of ``obj``, or ``None`` where ``json`` must write it (see the module docstring)."""
    try:
        text = _JSON(obj)
        if b"null" in text and _NONFINITE.search(_MSGPACK(obj)):
            return None
    except Exception:  # refused (type, size, surrogate, depth): json decides, and raises its own error
        return None
    return text


def _swap(obj: Any, marker: str, strings: list[bytes], big: int, depth: int, budget: list[int]) -> Any:
    """``obj`` with each big plain string found through nested dicts replaced by ``marker`` (dicts on
    the way copied, ``obj`` itself untouched), the strings (as ASCII bytes) appended to ``strings``
    in the order the encoder writes them. Lists are not searched: matrices sit in dicts, and lists
    are long. ``_NoneBig`` once ``budget[0]`` entries are searched without finding a string."""
    if type(obj) is not dict or not depth:
        return obj
    if not strings:
        budget[0] -= len(obj)
        if budget[0] < 0:
            raise _NoneBig
    out = None
    for k, v in obj.items():
        if type(v) is str:
            if len(v) < big:
                continue
            raw = _plain(v)
            if raw is None:
                continue
            strings.append(raw)
            new: Any = marker
        elif type(v) is dict:
            new = _swap(v, marker, strings, big, depth - 1, budget)
            if new is v:
                continue
        else:
            continue
        if out is None:
            out = dict(obj)
        out[k] = new
    return obj if out is None else out


def _plain(s: str) -> bytes | None:
    """``s`` as ASCII bytes if every encoder writes it unchanged between its quotes (printable ASCII,
    no quote or backslash), else ``None``."""
    if not s.isascii():
        return None
    raw = s.encode("ascii")
    if b'"' in raw or b"\\" in raw:
        return None
    codes = np.frombuffer(raw, dtype=np.uint8)
    return raw if codes.min() >= 0x20 and codes.max() <= 0x7E else None
