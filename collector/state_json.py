"""Detector state as JSON text: exactly ``json.dumps(state, separators=(",", ":"))``, with the big
base64 strings of float matrices (detectors/array_codec.py) copied in instead of scanned.

Why: the IsolationForest state of a 200-agent fleet is ~70 MB, nearly all of it base64 text, and
``json.dumps`` examines and copies it character by character for escapes it never has (~150 ms
of the event loop per snapshot). Here each big string is checked for needing no escape with a few
vectorised NumPy passes, replaced by a placeholder, the rest is encoded by ``json`` as before, and
the strings are joined back in. A string that would need escaping is left to ``json``; if the
placeholder turns up anywhere else in the text, the whole state is encoded by ``json`` instead.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import numpy as np

__all__ = ["dumps_state"]

BIG = 1024
"""Strings shorter than this are left to ``json`` (a NumPy check costs more than it saves). The
IsolationForest's pending session rows are ~1-10 KB of base64 each, its windows ~330 KB."""
_MAX_DEPTH = 6
"""Dict levels searched: IsolationForest pending rows are at state/agents/<agent>/pending/<session>."""
_SEARCH = 10_000
"""Dict entries searched before a state with no big string yet is left to ``json`` whole: a state
without matrices (volume's thousands of windows) should not pay for a walk of all of it."""

_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
"""What ``json.dumps(obj, separators=(",", ":"))`` calls, built once."""


class _NoneBig(Exception):
    """The first ``_SEARCH`` entries held no big string."""


def dumps_state(state: Any, big: int = BIG) -> str:
    """``json.dumps(state, separators=(",", ":"))``, character for character."""
    marker = secrets.token_hex(16)
    strings: list[str] = []
    try:
        skeleton = _swap(state, marker, strings, big, _MAX_DEPTH, [_SEARCH])
    except _NoneBig:
        return _ENCODE(state)
    if not strings:
        return _ENCODE(state)
    parts = _ENCODE(skeleton).split(f'"{marker}"')
    if len(parts) != len(strings) + 1:  # the marker is also in the state itself: no splicing
        return _ENCODE(state)
    out = [parts[0]]
    for s, part in zip(strings, parts[1:]):
        out += ('"', s, '"', part)
    return "".join(out)


def _swap(obj: Any, marker: str, strings: list[str], big: int, depth: int, budget: list[int]) -> Any:
    """``obj`` with each big plain string found through nested dicts replaced by ``marker`` (dicts on
    the way copied, ``obj`` itself untouched), the strings appended to ``strings`` in the order
    ``json`` writes them. Lists are not searched: matrices sit in dicts, and lists are long.
    ``_NoneBig`` once ``budget[0]`` entries are searched without finding a string."""
    if type(obj) is not dict or not depth:
        return obj
    if not strings:
        budget[0] -= len(obj)
        if budget[0] < 0:
            raise _NoneBig
    out = None
    for k, v in obj.items():
        if type(v) is str:
            if len(v) < big or not _plain(v):
                continue
            strings.append(v)
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


def _plain(s: str) -> bool:
    """True if ``json`` writes ``s`` unchanged between its quotes: printable ASCII, no quote or backslash."""
    if not s.isascii() or '"' in s or "\\" in s:
        return False
    codes = np.frombuffer(s.encode("ascii"), dtype=np.uint8)
    return bool(codes.min() >= 0x20 and codes.max() <= 0x7E)
