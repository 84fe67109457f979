"""Tool-poisoning scanner: hidden instructions in tool descriptions, schemas and server instructions.

Why: a tool description is read by the model as trusted text. Poisoned descriptions carry
instructions for the model that the user never sees. In real registries the textbook
``<IMPORTANT>`` block is rare; concealment steering ("do not tell the user", "silently",
"without asking") is what actually appears, so both weigh the same here.

Scoring: each signal found has a weight in 0..1; signals combine as a noisy-OR
(``1 - prod(1 - w)``), so one strong signal or several weak ones cross the threshold, while a
single weak signal (an innocent "you must", a mention of another tool) does not. Words such as
"password" or "secret" alone are never a signal: tools that handle credentials legitimately say so.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from .base import Detector
from .config_fields import load_flat, require
from .events import Batch, Finding, ToolDefinition, ToolListing

__all__ = ["PoisonReason", "PoisonScore", "PoisoningConfig", "ToolPoisoningDetector", "scan_description",
           "scan_definition"]


@dataclass(slots=True, frozen=True)
class PoisonReason:
    """One signal: what kind, how much it weighs, where, and a short excerpt of the matched text."""

    signal: str
    weight: float
    where: str
    excerpt: str

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "weight": self.weight, "where": self.where, "excerpt": self.excerpt}


@dataclass(slots=True, frozen=True)
class PoisonScore:
    score: float
    reasons: tuple[PoisonReason, ...] = ()

    def merged(self, other: "PoisonScore") -> "PoisonScore":
        reasons = self.reasons + other.reasons
        return PoisonScore(_noisy_or(r.weight for r in _strongest_per_signal(reasons)), reasons)


# (signal, weight, pattern) over normalised text (NFKC, casefolded, invisible chars removed,
# whitespace collapsed). Patterns are deliberately phrase-level, not single words.
_F = re.IGNORECASE
_SIGNALS: tuple[tuple[str, float, re.Pattern[str]], ...] = (
    ("concealment", 0.7, re.compile(
        r"\b(?:do not|don't|dont|never|must not|should not|shouldn't)\s+(?:\w+\s+){0,3}?"
        r"(?:tell|mention|inform|notify|reveal|disclose|show|alert|let)\b[^.]{0,40}?\b(?:the\s+)?user"
        r"|\bwithout\s+(?:asking|telling|informing|notifying|alerting|the\s+user'?s?\s+(?:knowledge|consent|permission))"
        r"|\b(?:silently|secretly|covertly|quietly)\b(?!\s+(?:ignor|fail|skip|drop|return|retr|overwrit|discard)\w*)"
        r"|\b(?:hide|conceal|keep)\s+(?:this|it|these|that)\b[^.]{0,30}\bfrom\s+the\s+user"
        r"|\bthe\s+user\s+(?:must|should|need)\s+(?:not|never)\s+(?:know|see|be\s+told)"
        r"|\b(?:not\s+visible|invisible)\s+to\s+the\s+user", _F)),
    ("instruction_block", 0.6, re.compile(
        r"<\s*/?\s*(?:important|system|instructions?|secret|hidden|admin|critical)\s*>|\[/?inst\]|<\|im_start\|>", _F)),
    ("override", 0.7, re.compile(
        r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:the\s+|your\s+)?"
        r"(?:previous|prior|above|earlier|other|existing|system)\s+(?:instructions?|rules|prompts?|guidelines|directions)"
        r"|\byou\s+are\s+now\s+(?:a|an|in)\b|\bnew\s+system\s+prompt\b", _F)),
    ("sensitive_path", 0.4, re.compile(
        r"~/\.ssh|\.ssh/|\bid_(?:rsa|ed25519|ecdsa|dsa)\b|\.aws/credentials|\.aws/config|~/\.kube|\.kube/config"
        r"|/etc/(?:passwd|shadow)|\.npmrc|\.netrc|\.pgpass|\.git-credentials|\.docker/config\.json"
        r"|\bmcp\.json\b|~/\.cursor|\.config/gcloud|claude_desktop_config|\.env\b(?!ironment)", _F)),
    ("precondition", 0.35, re.compile(
        r"\bbefore\s+(?:using|calling|invoking|running)\s+this\s+tool\b[^.]{0,60}?\b(?:read|call|send|pass|fetch|"
        r"open|include|provide|cat|load)\b"
        r"|\b(?:first|always)\s+(?:read|call|send|pass|fetch|include)\s+(?:the\s+)?(?:contents?|file|conversation)", _F)),
    ("exfil_hint", 0.6, re.compile(
        r"\b(?:pass|include|put|provide|send|add|attach|append|copy|paste|insert)\b[^.]{0,40}?"
        r"\b(?:(?:full|entire|whole|complete)\s+)?(?:contents?\s+of|conversation(?:\s+history)?|chat\s+history|"
        r"previous\s+messages|all\s+messages|system\s+prompt|environment\s+variables|api\s+keys?|"
        r"private\s+keys?|credentials\s+file|access\s+tokens?)\b", _F)),
    ("redirect", 0.5, re.compile(
        r"\b(?:bcc|cc|forward|redirect|send|copy)\b[^.]{0,30}?\b(?:all|every|each|any)\b[^.]{0,30}?\bto\s+"
        r"(?:[\w.+-]+@[\w-]+\.[\w.]+|https?://)"
        r"|\b(?:always|also)\s+(?:bcc|cc|forward|send\s+a\s+copy)\b", _F)),
    ("coercion", 0.3, re.compile(
        r"\b(?:otherwise|or\s+else)\b[^.]{0,40}?\b(?:will\s+(?:not\s+work|fail|crash|break)|data\s+loss|"
        r"stop\s+working)|\bthis\s+is\s+(?:very\s+|extremely\s+)?(?:important|critical|mandatory)\b"
        r"|\bvery\s+very\s+important\b", _F)),
    ("cross_server", 0.4, re.compile(
        r"\b(?:when|whenever|if|before|after|instead\s+of)\b[^.]{0,40}?\b(?:other|another|any|every)\s+"
        r"(?:mcp\s+)?(?:servers?|tools?)\b"
        r"|\b(?:override|overrides|replace|replaces|modify|modifies|change|changes)\s+(?:the\s+)?"
        r"behaviou?r\s+of\b", _F)),
    ("model_address", 0.15, re.compile(
        r"\b(?:the\s+)?(?:assistant|ai|model|llm|agent)\s+(?:must|should|needs?\s+to|has\s+to)\b"
        r"|\bas\s+an\s+ai\b|\byou\s+must\s+(?:always|never)\b", _F)),
)

MAX_SCANNED = 100_000
"""Bound on remembered definition hashes (oldest forgotten first, then rescanned if seen again)."""

_TOOL_VERBS = r"(?:call|use|invoke|run|trigger|execute|prefer|replace|instead\s+of|when(?:ever)?|after|before)"

# Invisible / control / bidi characters: format (Cf) and control (Cc) categories, except the
# ordinary whitespace controls, plus the Unicode tag block used for "ASCII smuggling".
_ALLOWED_CONTROLS = {"\n", "\r", "\t"}


def _hidden_chars(text: str) -> list[str]:
    out = []
    for ch in text:
        if ch in _ALLOWED_CONTROLS:
            continue
        cp = ord(ch)
        cat = unicodedata.category(ch)
        if cat in ("Cf", "Cc", "Co") or 0xE0000 <= cp <= 0xE007F:
            out.append(f"U+{cp:04X}")
    return out


def normalise(text: str) -> str:
    """NFKC, drop invisible characters, casefold, collapse whitespace: what the patterns match on."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if ch in _ALLOWED_CONTROLS or unicodedata.category(ch) not in ("Cf", "Cc", "Co"))
    return re.sub(r"\s+", " ", text.casefold()).strip()


def _excerpt(text: str, m: re.Match[str]) -> str:
    start, end = max(0, m.start() - 20), min(len(text), m.end() + 20)
    return text[start:end][:120]


def _noisy_or(weights: Iterable[float]) -> float:
    p = 1.0
    for w in weights:
        p *= 1.0 - min(max(w, 0.0), 1.0)
    return round(1.0 - p, 4)


def _strongest_per_signal(reasons: Iterable[PoisonReason]) -> list[PoisonReason]:
    """Repeats of one signal count once (its strongest), so a long benign text cannot add up."""
    best: dict[str, PoisonReason] = {}
    for r in reasons:
        if r.signal not in best or r.weight > best[r.signal].weight:
            best[r.signal] = r
    return list(best.values())


def scan_description(text: str, *, tool_names: Iterable[str] = (), own_name: str = "",
                     where: str = "description") -> PoisonScore:
    """Score one text (a description, a parameter description, server instructions) for poisoning.

    ``tool_names`` are tools of *other* servers (or other tools) the agent can see: naming one with
    an imperative verb is a cross-tool instruction. Never raises on any ``str``.
    """
    if not isinstance(text, str) or not text:
        return PoisonScore(0.0)
    reasons: list[PoisonReason] = []
    hidden = _hidden_chars(text)
    if hidden:
        reasons.append(PoisonReason("hidden_unicode", 0.6, where, ",".join(sorted(set(hidden))[:8])))
    norm = normalise(text)
    for signal, weight, pattern in _SIGNALS:
        m = pattern.search(norm)
        if m:
            reasons.append(PoisonReason(signal, weight, where, _excerpt(norm, m)))
    own = normalise(own_name)
    names = sorted({n for n in map(normalise, tool_names) if len(n) >= 4 and n != own}, key=len, reverse=True)
    if names:
        alternation = "|".join(re.escape(n) for n in names)
        m = re.search(rf"\b{_TOOL_VERBS}\b[^.]{{0,30}}?(?<![\w-])(?:{alternation})(?![\w-])", norm)
        if m:
            reasons.append(PoisonReason("cross_tool", 0.4, where, _excerpt(norm, m)))
    reasons = _strongest_per_signal(reasons)
    return PoisonScore(_noisy_or(r.weight for r in reasons), tuple(reasons))


def _schema_texts(schema: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """Every description/title/default/enum text in a JSON schema, with its path."""
    if depth > 12:
        return
    if isinstance(schema, dict):
        for key, value in schema.items():
            sub = f"{path}.{key}"
            if isinstance(value, str) and key in ("description", "title", "default", "examples", "$comment"):
                yield sub, value
            elif isinstance(value, (dict, list)):
                yield from _schema_texts(value, sub, depth + 1)
    elif isinstance(schema, list):
        for i, item in enumerate(schema):
            if isinstance(item, str):
                yield f"{path}[{i}]", item
            else:
                yield from _schema_texts(item, f"{path}[{i}]", depth + 1)


def scan_definition(defn: ToolDefinition, *, tool_names: Iterable[str] = ()) -> PoisonScore:
    """Scan a whole tool definition: title, description, and every text in its schemas."""
    names = tuple(tool_names)
    total = PoisonScore(0.0)
    texts = [("title", defn.title), ("description", defn.description)]
    texts += list(_schema_texts(defn.input_schema, "inputSchema"))
    texts += list(_schema_texts(defn.output_schema, "outputSchema"))
    for where, text in texts:
        total = total.merged(scan_description(text, tool_names=names, own_name=defn.name, where=where))
    return total


@dataclass(slots=True)
class PoisoningConfig:
    """YAML key ``poisoning``."""

    threshold: float = 0.5
    """Score at or above which a definition is reported (false-positive budget: docs/detectors.md)."""
    high_threshold: float = 0.8
    """Score at or above which the finding is ``high`` (else ``medium``)."""
    allow_definitions: tuple[str, ...] = ()
    """Definition sha256 values an operator reviewed and accepted."""

    def validate(self) -> None:
        require(0.0 < self.threshold <= 1.0, "threshold", "must be in (0, 1]")
        require(self.threshold <= self.high_threshold <= 1.0, "high_threshold", "must be between threshold and 1")

    @classmethod
    def from_dict(cls, data: Any, path: str = "poisoning") -> "PoisoningConfig":
        return load_flat(cls, data, path)


class ToolPoisoningDetector(Detector):
    """Runs the scanner on every new tool definition hash seen in ``tools/list`` results."""

    name = "poisoning"

    def __init__(self, config: PoisoningConfig | None = None) -> None:
        self.config = config or PoisoningConfig()
        self.config.validate()
        self._scanned: dict[str, float] = {}  # definition sha256 -> score
        self._tools: dict[str, list[str]] = {}  # server -> tool names (for cross-tool references)

    def observe(self, batch: Batch) -> list[Finding]:
        findings: list[Finding] = []
        for listing in batch.listings:
            self._tools[listing.server] = sorted({t.name for t in listing.tools})[:512]
        for listing in batch.listings:
            for defn in listing.tools:
                sha = defn.sha256()
                if sha in self._scanned:
                    continue
                score = scan_definition(defn, tool_names=self._known_names())
                self._scanned[sha] = score.score
                if len(self._scanned) > MAX_SCANNED:
                    del self._scanned[next(iter(self._scanned))]
                if score.score >= self.config.threshold and sha not in self.config.allow_definitions:
                    findings.append(self._finding(listing, defn.name, sha, score))
        return findings

    def scan_instructions(self, listing: ToolListing, text: str) -> list[Finding]:
        """Server instructions arrive as a hash on listings; the collector passes the text here."""
        score = scan_description(text, tool_names=self._known_names(), where="instructions")
        if score.score < self.config.threshold:
            return []
        return [self._finding(listing, "", listing.instructions_sha256, score)]

    def _known_names(self) -> list[str]:
        return sorted({n for names in self._tools.values() for n in names})

    def _finding(self, listing: ToolListing, tool: str, sha: str, score: PoisonScore) -> Finding:
        severity = "high" if score.score >= self.config.high_threshold else "medium"
        signals = sorted({r.signal for r in score.reasons})
        what = f"tool {tool!r}" if tool else "server instructions"
        return Finding(
            detector=self.name, severity=severity, agent_id=listing.agent_id,
            reason=f"{what} of server {listing.server!r} looks poisoned ({', '.join(signals)}; score {score.score:.2f})",
            time_ns=listing.time_ns, session_id=listing.session_id, server=listing.server, tool=tool,
            span_ids=(listing.span_id,) if listing.span_id else (),
            trace_ids=(listing.trace_id,) if listing.trace_id else (), score=score.score,
            evidence={"definition_sha256": sha, "score": score.score,
                      "reasons": [r.to_dict() for r in score.reasons]},
            dedup_key=f"poisoning:{listing.server}/{tool}:{sha}")

    def snapshot(self) -> dict[str, Any]:
        return {"scanned": dict(self._scanned), "tools": {k: list(v) for k, v in self._tools.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self._scanned = {str(k): float(v) for k, v in state.get("scanned", {}).items()}
        self._tools = {str(k): list(v) for k, v in state.get("tools", {}).items()}
