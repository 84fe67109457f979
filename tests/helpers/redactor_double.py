"""A small, honest stand-in for ``instrumentation.redact.Redactor`` (used until/unless it lands).

It implements the same surface (``redact``, ``scan_result``) for two kinds — AWS access key ids
and e-mail addresses — with keyed HMAC fingerprints, so span-building tests can check where
fingerprints and placeholders go without depending on the full redaction engine.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

_AWS = re.compile(r"AKIA[0-9A-Z]{16}")
_EMAIL = re.compile(r"[\w.+-]+@([\w-]+\.[\w.-]+)")
_INSTRUCTIONS = re.compile(r"ignore (all )?previous instructions|you must now", re.I)


@dataclass(frozen=True)
class Redaction:
    value: Any
    labels: tuple[str, ...]
    counts: dict[str, int]
    fingerprints: tuple[str, ...]
    destinations: tuple[str, ...]
    bytes: int
    truncated: bool
    sketch: tuple[int, ...]


@dataclass(frozen=True)
class ResultScan:
    bytes: int
    labels: tuple[str, ...]
    injection_score: float
    fingerprints: tuple[str, ...]
    sketch: tuple[int, ...]


class RedactorDouble:
    def __init__(self, key: bytes = b"test-key") -> None:
        self._key = key

    def _fp(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()[:16]

    def _walk(self, value: Any, labels: list[str], fps: list[str], dests: list[str]) -> Any:
        if isinstance(value, str):
            for m in _AWS.findall(value):
                labels.append("secret")
                fps.append(self._fp(m))
            for m in _EMAIL.finditer(value):
                labels.append("email")
                fps.append(self._fp(m.group(0)))
                dests.append(m.group(1))
            return _EMAIL.sub("<email>", _AWS.sub("<secret:aws_access_key>", value))
        if isinstance(value, dict):
            return {k: self._walk(v, labels, fps, dests) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v, labels, fps, dests) for v in value]
        return value

    def redact(self, value: Any) -> Redaction:
        labels: list[str] = []
        fps: list[str] = []
        dests: list[str] = []
        out = self._walk(value, labels, fps, dests)
        size = len(json.dumps(value).encode())
        return Redaction(out, tuple(sorted(set(labels))), {}, tuple(dict.fromkeys(fps)),
                         tuple(dict.fromkeys(dests)), size, False, ())

    def scan_result(self, value: Any) -> ResultScan:
        red = self.redact(value)
        text = json.dumps(value)
        labels = set(red.labels)
        score = 0.0
        if _INSTRUCTIONS.search(text):
            labels.add("instructions")
            score = 0.9
        return ResultScan(red.bytes, tuple(sorted(labels)), score, red.fingerprints, ())
