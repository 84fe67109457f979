"""Redaction at the edge: secrets and personal data never leave the agent's host.

``Redactor.redact(value)`` walks any JSON value and returns a redacted copy with typed
placeholders (``<secret:aws_access_key>``, ``<email>``, ``<card>`` …) plus what the span needs:
labels, counts, keyed fingerprints of every redacted value, destinations, byte size and a
near-copy sketch. ``Redactor.scan_result(value)`` measures a tool result the same way (same
fingerprints for the same value) and scores it for indirect prompt injection. Deterministic for
one key; never raises on odd input; bounded by ``max_bytes`` of text and ``max_depth`` nesting.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import semconv
from .fingerprint import Fingerprinter, key_from_env
from .injection import InjectionScan, scan_injection
from .patterns import KEY_NAME_RE
from .scanner import Hit, find_hits
from .sketch import Sketcher, sketch_similarity

__all__ = ["Redactor", "Redaction", "ResultScan", "sketch_similarity"]

TRUNCATED = "<truncated>"
KEYWORD_PLACEHOLDER = "<secret:keyword>"
_TRAILING_TOKEN_MAX = 1024
_TRAILING_TOKEN = re.compile(r"\S{1,%d}\Z" % _TRAILING_TOKEN_MAX)
_NUMBER_DIGITS = 7  # integers this long may be phone numbers, cards or IDs: scan them as text
_KEY_CHARS = 256
_CLEAN_KEYS_MAX = 4096
_BINARY_FIELDS = {"image": "data", "audio": "data"}
_SEQUENCES = (list, tuple, set, frozenset)  # a tuple: ``list | tuple | …`` builds a union per call


@dataclass(frozen=True, slots=True)
class Redaction:
    """A redacted copy of a value and what was found in it; holds no raw sensitive value."""

    value: Any
    labels: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    fingerprints: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    bytes: int = 0
    truncated: bool = False
    sketch: tuple[int, ...] = ()

    def json(self) -> str:
        """The redacted value as compact JSON text (what ``gen_ai.tool.call.arguments`` carries)."""
        return json.dumps(self.value, ensure_ascii=False, separators=(",", ":"))

    def span_attributes(self) -> dict[str, Any]:
        """The ``toolwatch.args.*`` attributes of a tool-call span (plus the redacted arguments)."""
        attrs: dict[str, Any] = {
            semconv.GEN_AI_TOOL_CALL_ARGUMENTS: self.json(),
            semconv.TW_ARGS_BYTES: self.bytes,
            semconv.TW_ARGS_LABELS: list(self.labels),
            semconv.TW_ARGS_FINGERPRINTS: list(self.fingerprints),
            semconv.TW_ARGS_DESTINATIONS: list(self.destinations),
            semconv.TW_REDACTED: True,
        }
        if self.sketch:
            attrs[semconv.TW_ARGS_SKETCH] = list(self.sketch)
        return attrs


@dataclass(frozen=True, slots=True)
class ResultScan:
    """What the edge measures in a tool result; the result itself is never shipped."""

    bytes: int = 0
    labels: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    fingerprints: tuple[str, ...] = ()
    injection_score: float = 0.0
    injection_signals: tuple[str, ...] = ()
    truncated: bool = False
    sketch: tuple[int, ...] = ()

    def span_attributes(self) -> dict[str, Any]:
        """The ``toolwatch.result.*`` attributes of a tool-call span."""
        attrs: dict[str, Any] = {
            semconv.TW_RESULT_BYTES: self.bytes,
            semconv.TW_RESULT_LABELS: list(self.labels),
            semconv.TW_RESULT_FINGERPRINTS: list(self.fingerprints),
            semconv.TW_RESULT_INJECTION_SCORE: self.injection_score,
        }
        if self.sketch:
            attrs[semconv.TW_RESULT_SKETCH] = list(self.sketch)
        return attrs


def _is_scalar_secret(item: Any) -> bool:
    """A non-empty string or a number (a PIN) can be a secret value; containers are walked."""
    if isinstance(item, str):
        return bool(item)
    return isinstance(item, int | float) and not isinstance(item, bool)


class _Walk:
    """State of one redaction walk: budget left, what was found, and the redacted strings."""

    __slots__ = ("budget", "labels", "fingerprints", "destinations", "truncated", "size", "texts", "keep_texts")

    def __init__(self, budget: int, keep_texts: bool) -> None:
        self.budget = budget
        self.labels: dict[str, int] = {}  # a count per label (a dict: Counter() costs ~1 µs to make)
        self.fingerprints: set[str] = set()
        self.destinations: set[str] = set()
        self.truncated = False
        self.size = 0
        self.texts: list[str] = []
        self.keep_texts = keep_texts


class Redactor:
    """Redacts JSON values with one deployment key (see ``from_env``)."""

    def __init__(
        self,
        key: bytes,
        *,
        max_bytes: int = 4 * 1024 * 1024,
        max_depth: int = 64,
        sketch_min_chars: int = 4096,
        sketch_max_bytes: int = 64 * 1024,
        max_destinations: int = 64,
    ) -> None:
        if max_bytes < 1 or max_depth < 1:
            raise ValueError("Redactor: max_bytes and max_depth must be at least 1")
        self._fingerprint = Fingerprinter(key)
        self._sketcher = Sketcher(self._fingerprint.derive("sketch"), max_bytes=sketch_max_bytes)
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.sketch_min_chars = sketch_min_chars
        self.max_destinations = max_destinations
        # Object keys repeat across calls ("query", "path", …): remember the ones that hold nothing.
        self._clean_keys: set[str] = set()
        # … and whether a key is named like a secret: the key-name regex costs ~2 µs a key.
        self._secret_names: dict[str, bool] = {}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **options: Any) -> Redactor:
        """A Redactor keyed by ``TOOLWATCH_FINGERPRINT_KEY`` (random key and a warning if unset)."""
        return cls(key_from_env(environ), **options)

    def __repr__(self) -> str:
        return f"Redactor(max_bytes={self.max_bytes}, max_depth={self.max_depth})"

    # --- public API ---------------------------------------------------------------------------

    def redact(self, value: Any) -> Redaction:
        """A redacted copy of ``value`` and what was found in it. Never raises on odd input."""
        return self._redact(value, None)

    def _redact(self, value: Any, size: int | None) -> Redaction:
        """``redact``; ``size`` (when known) replaces the measured ``bytes``."""
        walk = _Walk(self.max_bytes, keep_texts=True)
        redacted = self._walk(value, walk, 0, binary_ok=False)
        return Redaction(
            value=redacted,
            labels=tuple(sorted(walk.labels)),
            counts=dict(sorted(walk.labels.items())),
            fingerprints=tuple(sorted(walk.fingerprints)),
            destinations=tuple(sorted(walk.destinations)[: self.max_destinations]),
            bytes=walk.size if size is None else size,
            truncated=walk.truncated,
            sketch=self._sketch(walk.texts),
        )

    def redact_json_text(self, text: str) -> Redaction:
        """Redact arguments that arrive as JSON text; text that is not JSON is one string.

        ``bytes`` is then the exact UTF-8 size of the text as it arrived.
        """
        try:
            value = json.loads(text)
        except (ValueError, RecursionError, TypeError):
            value = text
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        return self._redact(value, size)  # not dataclasses.replace: it costs ~5 µs a call

    def scan_result(self, value: Any) -> ResultScan:
        """Measure a tool result (MCP ``CallToolResult`` content as JSON) and score it for injection."""
        walk = _Walk(self.max_bytes, keep_texts=True)
        self._walk(value, walk, 0, binary_ok=True)
        injection = self._injection(value, walk)
        labels = Counter(walk.labels)
        if injection.instructions:
            labels["instructions"] += 1
        return ResultScan(
            bytes=walk.size,
            labels=tuple(sorted(labels)),
            counts=dict(sorted(labels.items())),
            fingerprints=tuple(sorted(walk.fingerprints)),
            injection_score=injection.score,
            injection_signals=injection.signals,
            truncated=walk.truncated,
            sketch=self._sketch(walk.texts),
        )

    def fingerprint(self, value: str) -> str:
        """The fingerprint of one already-normalised value (for tests and tools)."""
        return self._fingerprint(value)

    # --- the walk -----------------------------------------------------------------------------

    def _walk(self, value: Any, walk: _Walk, depth: int, *, binary_ok: bool) -> Any:
        if value is None or isinstance(value, bool):
            walk.size += 5 if value is False else 4
            return value
        if isinstance(value, str):
            return self._text(value, walk)
        if isinstance(value, int):
            return self._number(value, walk)
        if isinstance(value, float):
            if not math.isfinite(value):
                return self._text(str(value), walk)
            walk.size += len(repr(value))
            return value
        if depth >= self.max_depth:
            walk.truncated = True
            return TRUNCATED
        if isinstance(value, dict):
            return self._object(value, walk, depth, binary_ok)
        if isinstance(value, _SEQUENCES):
            walk.size += 1 + max(len(value), 1)  # brackets and commas
            items = value if isinstance(value, (list, tuple)) else sorted(value, key=repr)
            return [self._walk(item, walk, depth + 1, binary_ok=binary_ok) for item in items]
        if isinstance(value, bytes | bytearray | memoryview):
            return self._text(bytes(value).decode("utf-8", "replace"), walk)
        try:
            text = str(value)
        except Exception:  # noqa: BLE001 - an object whose __str__ fails is still redacted
            text = f"<unsupported:{type(value).__name__}>"
        return self._text(text, walk)

    def _object(self, value: dict[Any, Any], walk: _Walk, depth: int, binary_ok: bool) -> dict[str, Any]:
        walk.size += 1 + max(len(value), 1) + len(value)  # braces, commas and colons
        out: dict[str, Any] = {}
        kind = value.get("type") if binary_ok else None
        binary_field = _BINARY_FIELDS.get(kind) if isinstance(kind, str) else None
        clean_keys, secret_names = self._clean_keys, self._secret_names
        for raw_key, item in value.items():
            key = raw_key if isinstance(raw_key, str) else str(raw_key)
            if binary_ok and (key == binary_field or (key == "blob" and "uri" in value)):
                # Images, audio and resource blobs are measured, not scanned.
                walk.size += len(item) if isinstance(item, str) else 0
                out[key] = "<binary>"
                continue
            if key in clean_keys and key.isascii():  # the usual key: what ``_key`` does, inline
                walk.size += len(key) + 2
                new_key = key
            else:
                new_key = self._key(key, walk)
            secret_name = secret_names.get(key)
            if secret_name is None:
                secret_name = self._is_secret_name(key)
            if secret_name and _is_scalar_secret(item):
                new_item: Any = self._keyed_secret(item, walk)
            elif type(item) is str:  # exactly str: what ``_walk`` does first, inline
                new_item = self._text(item, walk)
            else:
                new_item = self._walk(item, walk, depth + 1, binary_ok=binary_ok)
            while new_key in out:  # two keys redacted to the same placeholder stay two keys
                new_key += "'"
            out[new_key] = new_item
        return out

    def _is_secret_name(self, key: str) -> bool:
        """``KEY_NAME_RE`` matches ``key``; remembered for short keys (bounded, like clean keys)."""
        secret_name = KEY_NAME_RE.match(key) is not None
        if len(key) <= _KEY_CHARS:
            if len(self._secret_names) >= _CLEAN_KEYS_MAX:
                self._secret_names.clear()
            self._secret_names[key] = secret_name
        return secret_name

    def _key(self, key: str, walk: _Walk) -> str:
        """Object keys are short and always scanned (outside the budget), up to ``_KEY_CHARS``."""
        walk.size += (len(key) if key.isascii() else len(key.encode("utf-8", "surrogatepass"))) + 2
        if key in self._clean_keys:
            return key
        head = key[:_KEY_CHARS]
        hits = find_hits(head)
        if not hits and len(key) <= _KEY_CHARS:
            if len(self._clean_keys) >= _CLEAN_KEYS_MAX:
                self._clean_keys.clear()
            self._clean_keys.add(key)
        out = self._replace(head, hits, len(head), walk) if hits else head
        return out if len(key) <= _KEY_CHARS else out + TRUNCATED

    def _number(self, value: int, walk: _Walk) -> Any:
        text = str(value) if abs(value) < 10**40 else "<large-int>"
        walk.size += len(text)
        if len(text) < _NUMBER_DIGITS:
            return value
        found = self._text(text, walk, count_size=False)
        return value if found == text else found

    def _keyed_secret(self, item: Any, walk: _Walk) -> Any:
        """A value under a key like ``password``: secret whatever it looks like."""
        text = item if isinstance(item, str) else str(item)
        redacted = self._text(text, walk, keep_text=False)
        if redacted != text:  # patterns found the secret(s) inside (e.g. ``Bearer <token>``)
            walk.texts.append(redacted)
            return redacted
        walk.labels["secret"] = walk.labels.get("secret", 0) + 1
        walk.fingerprints.add(self._fingerprint(text.strip()))
        walk.texts.append(KEYWORD_PLACEHOLDER)
        return KEYWORD_PLACEHOLDER

    def _text(self, text: str, walk: _Walk, *, count_size: bool = True, keep_text: bool = True) -> str:
        length = len(text)
        if count_size:
            walk.size += length + 2 if text.isascii() else len(text.encode("utf-8", "surrogatepass")) + 2
        if walk.budget <= 0:
            walk.truncated = True
            return TRUNCATED
        limit = min(length, walk.budget)
        walk.budget -= limit
        cut = limit
        if limit < length:
            walk.truncated = True
            # The token the budget cuts through may be the start of a secret: drop it whole.
            trailing = _TRAILING_TOKEN.search(text, max(0, limit - _TRAILING_TOKEN_MAX), limit)
            cut = trailing.start() if trailing is not None else limit
        hits = find_hits(text, limit)
        out = self._replace(text, hits, cut, walk) if hits else text[:cut]
        if cut < length:
            out += TRUNCATED
        if keep_text:
            walk.texts.append(out)
        return out

    def _replace(self, text: str, hits: list[Hit], cut: int, walk: _Walk) -> str:
        """``text[:cut]`` with the redacted hits replaced; labels, fingerprints, destinations noted."""
        parts: list[str] = []
        pos = 0
        labels, fingerprints, fingerprint = walk.labels, walk.fingerprints, self._fingerprint
        for hit in hits:
            det = hit.detector
            label = det.label
            labels[label] = labels.get(label, 0) + 1
            if label == "email":
                self._destination(hit.host, walk)
            if det.name == "url":
                self._destination(hit.host, walk)
                self._destination(hit.url, walk)
            if not det.redact:
                continue
            raw = hit.value or text[hit.start : hit.end]
            normalise = det.normalise
            fingerprints.add(fingerprint(normalise(raw) if normalise else raw))
            start = hit.start
            if start < cut:
                parts.append(text[pos:start])
                parts.append(det.placeholder)
                pos = max(pos, hit.end)
        parts.append(text[pos:cut])
        return "".join(parts)

    def _destination(self, host: str, walk: _Walk) -> None:
        if host and len(walk.destinations) < self.max_destinations:
            walk.destinations.add(host)

    def _sketch(self, texts: list[str]) -> tuple[int, ...]:
        if sum(map(len, texts)) < self.sketch_min_chars:
            return ()
        return self._sketcher("\n".join(texts))

    def _injection(self, value: Any, walk: _Walk) -> InjectionScan:
        # The scan reads the redacted strings: placeholders do not hide orders to the model.
        del value
        return scan_injection(walk.texts)
