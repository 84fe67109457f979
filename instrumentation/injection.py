"""Scanning tool results for text that addresses the model: the marks of an indirect prompt injection.

A tool result is data for the model to read; text in it that gives the model orders is the
channel of an indirect prompt injection. Each signal below is one such mark; a result's score is
``1 - prod(1 - weight)`` over the distinct signals found, so one weak mark (documentation saying
"use the search tool") stays low and several together (an order, a concealment request and a
tool call) score high. ``instructions`` is labelled at ``INSTRUCTIONS_THRESHOLD``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

try:  # Hyperscan (Vectorscan): finds which gate words occur in one pass over a text
    import hyperscan as _hs
except ImportError:  # pragma: no cover - a platform without its wheels
    _hs = None

__all__ = ["INSTRUCTIONS_THRESHOLD", "SIGNALS", "InjectionScan", "scan_injection"]

INSTRUCTIONS_THRESHOLD = 0.5

_WS = r"[\s*_`\"']{1,4}"  # separators, also through markdown emphasis and quotes

SIGNALS: dict[str, tuple[float, str]] = {  # name: (weight, regex)
    # "ignore all previous instructions", "disregard the above", "forget your rules"
    "override": (
        0.7,
        r"\b(?:ignore|disregard|forget|override|bypass)(?:\s+(?:all|any|the|your|my|every|of|these|those|previous|prior|above|earlier|preceding|system|safety)){1,4}\s+"
        r"(?:instructions?|prompts?|rules|guidelines|directions|messages?|context|guardrails|policies)\b"
        r"|\bnew\s+(?:instructions|system\s+prompt|rules)\s*:"
        r"|\byour\s+(?:new|real|actual|updated)\s+(?:instructions|task|goal|objective)\b",
    ),
    # "You are now…", "<system>", "[SYSTEM]", "SYSTEM:", "<IMPORTANT>", "admin override"
    "role_claim": (
        0.4,
        r"\byou\s+are\s+now\b|\bact\s+as\s+(?:an?\s+)?(?:admin|root|system|developer|unrestricted)"
        r"|</?(?:system|important|admin|instructions?)>|\[(?:system|admin|inst)\]"
        r"|(?:^|\n)\s*#{0,3}\s*(?:system|assistant)\s*(?:message|prompt)?\s*:"
        r"|\b(?:developer|god|jailbreak|dan)\s+mode\b"
        r"|\b(?:high|highest|top|critical|maximum)[\s-]priority\s+(?:instruction|override|task|message)"
        r"|\b(?:admin(?:istrator)?|system|security)\s+(?:override|instruction|notice\s+to\s+(?:the\s+)?(?:ai|assistant|model|agent))",
    ),
    # "do not tell the user", "without informing the user", "keep this secret from the user"
    "concealment": (
        0.6,
        r"\b(?:do\s+not|don'?t|never|must\s+not|should\s+not)\s+(?:tell|inform|mention|reveal|show|notify|alert|let)\s+(?:this\s+|it\s+|anything\s+)?(?:to\s+)?(?:the\s+)?(?:user|human|operator)\b"
        r"|\bwithout\s+(?:telling|informing|notifying|alerting|asking)\s+(?:the\s+)?(?:user|human|operator)\b"
        r"|\b(?:keep|hide)\s+(?:this|it|these\s+\w+)\s+(?:secret|hidden|confidential|private)\s+from\s+(?:the\s+)?(?:user|human)"
        r"|\bthe\s+(?:user|human)\s+(?:must|should)\s+(?:not|never)\s+(?:know|see|find\s+out|be\s+told)"
        r"|\b(?:silently|secretly|covertly|quietly)\s+(?:call|send|forward|upload|run|execute|read|copy|include|add)\b",
    ),
    # "call the send_email tool", "send the contents of ~/.ssh/id_rsa to …", "curl … | sh"
    "tool_request": (
        0.35,
        r"\b(?:call|use|invoke|run|execute|trigger)\s+(?:the\s+)?`?[\w.-]+`?\s+(?:tool|function)\b"
        r"|\b(?:send|forward|email|upload|post|exfiltrate|transmit|leak|copy)\s+(?:all\s+|the\s+|your\s+|any\s+|this\s+|these\s+|its\s+)?(?:[\w-]+\s+){0,4}?(?:to\s+(?:https?://|[\w.+-]+@)|contents?\s+of\b)"
        r"|~/\.ssh|\bid_rsa\b|/etc/passwd|\.aws/credentials|\.env\b"
        r"|\bcurl\s+[^\n|]{0,200}\|\s*(?:ba|z)?sh\b",
    ),
    # "AI assistant, …", "If you are an AI/LLM reading this", "Note to the agent:"
    "addresses_model": (
        0.3,
        r"\b(?:if\s+you\s+are\s+an?\s+(?:ai|llm|language\s+model|assistant|agent))"
        r"|\b(?:dear|attention|hey|note\s+(?:to|for))\s+(?:the\s+)?(?:ai|llm|assistant|agent|model|claude|chatgpt|gpt)\b"
        r"|(?:^|\n)\s*(?:ai|llm|assistant|agent|claude|chatgpt)\s*[,:]\s"
        r"|\b(?:ai|llm)\s+(?:assistants?|agents?|models?)\s+(?:reading|processing|must|should)\b",
    ),
}

GATES: dict[str, tuple[str, ...]] = {
    # Words every match of the signal contains (lower case): a signal's regex only runs on text
    # that holds one of them, found with C-speed substring search.
    "override": (
        "ignore",
        "disregard",
        "forget",
        "override",
        "bypass",
        "new instructions",
        "new system",
        "new rules",
        "your new",
        "your real",
        "your actual",
        "your updated",
    ),
    "role_claim": (
        "you are now", "act as", "<system", "</system", "[system]", "system:", "system message", "system prompt",
        "system override", "system instruction", "system notice", "assistant:", "assistant message",
        "assistant prompt", "important>", "<admin", "[admin]", "admin override", "admin instruction",
        "administrator override", "administrator instruction", "security override", "security instruction",
        "security notice", "[inst]", "<instruction", "developer mode", "god mode", "jailbreak mode", "dan mode",
        "priority instruction", "priority override", "priority task", "priority message",
    ),
    "concealment": (
        "tell",
        "inform",
        "mention",
        "reveal",
        "show",
        "notify",
        "alert",
        "let ",
        "without",
        "keep ",
        "hide ",
        "must not",
        "should not",
        "must never",
        "should never",
        "silently",
        "secretly",
        "covertly",
        "quietly",
    ),
    "tool_request": (
        "tool",
        "function",
        "send",
        "forward",
        "email",
        "upload",
        "post",
        "exfiltrate",
        "transmit",
        "leak",
        "copy",
        "~/.ssh",
        "id_rsa",
        "/etc/passwd",
        ".aws/credentials",
        ".env",
        "curl",
    ),
    "addresses_model": (
        "if you are",
        "dear",
        "attention",
        "hey",
        "note to",
        "note for",
        "ai,",
        "ai:",
        "ai ",
        "llm",
        "assistant",
        "agent",
        "claude",
        "chatgpt",
    ),
}
_WINDOW_BEFORE = 160
_WINDOW_AFTER = 320
_MAX_WINDOWS = 32
_REGEXES: dict[str, re.Pattern[str]] = {name: re.compile(regex, re.IGNORECASE) for name, (_, regex) in SIGNALS.items()}
_HIDDEN = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]|[\U000e0000-\U000e007f]")
_TAGS = re.compile("[\U000e0000-\U000e007f]+")
HIDDEN_WEIGHT = 0.5


@dataclass(frozen=True, slots=True)
class InjectionScan:
    """Signals found and the combined score; no text of the result is kept."""

    score: float
    signals: tuple[str, ...]

    @property
    def instructions(self) -> bool:
        return self.score >= INSTRUCTIONS_THRESHOLD


_ALL_GATE_WORDS: tuple[str, ...] = tuple(dict.fromkeys(gate for gates in GATES.values() for gate in gates))


class _GateWords:
    """Which gate words occur in a lower-cased ASCII text, in one pass (each reported once).

    Every gate word of every signal searched one after another reads the text ~100 times, and
    most are absent; knowing which occur, a signal whose gate words are all absent is skipped
    and the others search only their present words, exactly as before. Immutable database; each
    scan clones its own scratch space, so threads may scan at once. ``None`` without Hyperscan.
    """

    def __init__(self, words: tuple[str, ...]) -> None:
        self.words = words
        self._db = None
        self._scratch = None
        if _hs is not None:
            db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
            db.compile(
                expressions=[re.escape(word).encode() for word in words],
                ids=list(range(len(words))),
                elements=len(words),
                flags=[_hs.HS_FLAG_SINGLEMATCH] * len(words),
            )
            self._db = db
            self._scratch = _hs.Scratch(db)

    def present(self, lowered: str) -> set[str] | None:
        """The gate words in ``lowered``, or None without Hyperscan. Asked about every non-empty ASCII
        text: even for a 4-character string one scan (~0.6 µs) costs less than looking for ~100 gate
        words one after another (~3-15 µs)."""
        if self._db is None or self._scratch is None:
            return None
        found: set[int] = set()
        self._db.scan(lowered.encode("ascii"), _note_word, context=found, scratch=self._scratch.clone())
        words = self.words
        return {words[i] for i in found}


def _note_word(word_id: int, start: int, end: int, flags: int, found: set[int]) -> None:
    found.add(word_id)


_GATE_WORDS = _GateWords(_ALL_GATE_WORDS)


def scan_injection(texts: list[str]) -> InjectionScan:
    """Score the strings of one tool result (already bounded by the caller's size budget)."""
    found: set[str] = set()
    for text in texts:
        if not text.isascii() and _HIDDEN.search(text):  # every hidden character is non-ASCII
            found.add("hidden_text")
            # Unicode tag characters smuggle ASCII invisibly: read what they say too.
            text = text + "\n" + _TAGS.sub(_untag, text)
        lowered = text.lower() if text.isascii() else ""
        present = _GATE_WORDS.present(lowered) if lowered else None
        for name, regex in _REGEXES.items():
            if name in found:
                continue
            gates = GATES[name] if present is None else tuple(g for g in GATES[name] if g in present)
            if (gates or not lowered) and _signal_in(text, lowered, regex, gates):
                found.add(name)
    keep = 1.0
    for name in found:
        keep *= 1.0 - (HIDDEN_WEIGHT if name == "hidden_text" else SIGNALS[name][0])
    return InjectionScan(round(1.0 - keep, 4), tuple(sorted(found)))


def _signal_in(text: str, lowered: str, regex: re.Pattern[str], gates: tuple[str, ...]) -> bool:
    """Search the regex only around occurrences of its gate words (whole text when not ASCII)."""
    if not lowered:
        return regex.search(text) is not None
    windows = 0
    for gate in gates:
        at = lowered.find(gate)
        while at >= 0:
            windows += 1
            if windows > _MAX_WINDOWS:  # a text full of gate words: one pass over all of it
                return regex.search(text) is not None
            if regex.search(text, max(0, at - _WINDOW_BEFORE), at + _WINDOW_AFTER):
                return True
            at = lowered.find(gate, at + _WINDOW_AFTER - _WINDOW_BEFORE)
    return False


def _untag(match: re.Match[str]) -> str:
    return "".join(chr(ord(ch) - 0xE0000) for ch in match.group(0))
