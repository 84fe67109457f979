"""Finding sensitive spans in a string with the detector table of ``patterns``.

Python's regex engine tries every branch of an alternation at every position, so the table is
compiled for where candidates can start: gated detectors run only on strings holding one of
their literal gates and start with a literal; numeric detectors share one regex per anchor class
whose class prefix lets the engine skip all other text in C. See docs/redaction.md.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from collections.abc import Iterable
from typing import NamedTuple

try:  # Hyperscan (Vectorscan): a multi-pattern engine in C; without it the pure-Python path runs
    import hyperscan as _hs
except ImportError:  # pragma: no cover - a platform without its wheels
    _hs = None

from .patterns import WORD_CHARS, DETECTORS, GATED, NUMERIC, Detector

__all__ = ["Hit", "find_hits"]


def _escape_anchor(anchor: str) -> str:
    return anchor if not anchor or anchor.startswith(("[", "\\")) else re.escape(anchor)


class _Scanner:
    """The numeric detectors anchored on one character class, from the ``first``-th on, as one regex.

    The regex starts with the class (``[0-9]``, ``[A-Z]``, ``\\+``, ``\\(``), so Python's regex
    engine skips all other text in C and tries the branches only at an anchor. Each group of
    branches sits behind a one-character look-behind (word boundary, "after a letter", "not after
    a digit") that rules most anchors out at once.
    """

    def __init__(self, anchor_class: str, members: tuple[int, ...]) -> None:
        self.members = members
        self.group_info: dict[str, tuple[int, str | None, str | None]] = {}
        parts: list[tuple[str, str]] = []
        for i in members:
            det = DETECTORS[i]
            body = re.sub(r"\(\?P<(\w+)>", lambda m, i=i: f"(?P<{m.group(1)}{i}>", det.rest)
            body = re.sub(r"\(\?P=(\w+)\)", lambda m, i=i: f"(?P={m.group(1)}{i})", body)
            parts.append((_guard(det, anchor_class), f"(?P<d{i}>{body})"))
            self.group_info[f"d{i}"] = (
                i,
                f"v{i}" if "(?P<v>" in det.rest else None,
                f"host{i}" if "(?P<host>" in det.rest else None,
            )
        runs = []  # consecutive members with the same guard share one look-behind
        for guard, group in itertools.groupby(parts, key=lambda part: part[0]):
            joined = "|".join(branch for _, branch in group)
            runs.append(f"{guard}(?:{joined})" if guard else joined)
        body_all = "|".join(runs)
        if anchor_class == "[0-9]":
            # No numeric detector starts a token at a digit right after another digit (each has
            # a boundary, "after a letter" or "not after a digit" guard): one look-behind skips
            # the digits inside every number.
            body_all = f"(?<![0-9][0-9])(?:{body_all})"
        self.pattern = re.compile(f"{anchor_class}(?:{body_all})")
        self.detector_of_group = {self.pattern.groupindex[name]: info for name, info in self.group_info.items()}


def _guard(det: Detector, anchor_class: str) -> str:
    """A one-character look-behind that rules the detector out cheaply at most anchors.

    A token that starts at its anchor needs a word boundary before it, so digits inside a
    number or letters inside a word do not wake the detector.
    """
    before = f"{anchor_class})"
    if det.not_after and not det.back and not det.extend:
        return f"(?<![{WORD_CHARS}]" + before
    if det.need_after:
        return f"(?<=[{det.need_after}]" + before
    if det.skip_after:
        return f"(?<![{det.skip_after}]" + before
    return ""


_ANCHOR_CLASSES: tuple[str, ...] = tuple(dict.fromkeys(DETECTORS[i].anchor for i in NUMERIC))
_SCANNERS: dict[str, tuple[_Scanner, ...]] = {
    cls: tuple(
        _Scanner(cls, members[first:])
        for members in [tuple(i for i in NUMERIC if DETECTORS[i].anchor == cls)]
        for first in range(len(members))
    )
    for cls in _ANCHOR_CLASSES
}
"""``_SCANNERS[cls][k]`` tries the class's detectors from its k-th on: after one rejects a
candidate (a checksum fails), the later ones still get their chance at the same anchor."""
_EXTEND_CHARS: dict[str, frozenset[str]] = {
    det.extend: frozenset(ch for ch in map(chr, range(128)) if re.fullmatch(f"[{det.extend}]", ch))
    for det in DETECTORS
    if det.extend
}
_NOT_AFTER_RE: dict[str, re.Pattern[str]] = {
    det.not_after: re.compile(f"[{det.not_after}]") for det in DETECTORS if det.not_after
}


class Hit(NamedTuple):
    """A validated sensitive span ``text[start:end]``.

    A named tuple, not a dataclass: a frozen dataclass sets each field through
    ``object.__setattr__``, and a long text yields thousands of hits (~1 µs each saved)."""

    detector: Detector
    start: int
    end: int
    host: str = ""
    """For URLs and e-mails: the host or domain named (a destination)."""
    url: str = ""
    """For URLs: ``scheme://host`` (never the user-info, path or query)."""
    value: str = ""
    """The whole value found (what is fingerprinted), even when ``start`` was moved past an
    overlapping earlier hit."""


_new_hit = tuple.__new__
"""``Hit`` without its Python-level ``__new__`` (every field given, in order)."""


@dataclass(frozen=True, slots=True)
class _GatedRegex:
    index: int
    pattern: re.Pattern[str]
    ignorecase: re.Pattern[str]
    value_group: str | None
    host_group: str | None


_GATED_REGEXES: tuple[_GatedRegex, ...] = tuple(
    _GatedRegex(
        i,
        re.compile(_escape_anchor(DETECTORS[i].anchor) + DETECTORS[i].rest),
        re.compile(_escape_anchor(DETECTORS[i].anchor) + DETECTORS[i].rest, re.IGNORECASE),
        "v" if "(?P<v>" in DETECTORS[i].rest else None,
        "host" if "(?P<host>" in DETECTORS[i].rest else None,
    )
    for i in GATED
)
_LOWER_GATES: dict[int, frozenset[str]] = {i: frozenset(g.lower() for g in DETECTORS[i].gates) for i in GATED}
_ALL_GATES: tuple[str, ...] = tuple(sorted(set().union(*_LOWER_GATES.values()), key=lambda g: (-len(g), g)))
_GATED_BY_GATE: dict[str, tuple[int, ...]] = {
    gate: tuple(k for k, gated in enumerate(_GATED_REGEXES) if gate in _LOWER_GATES[gated.index]) for gate in _ALL_GATES
}
"""Gate → the positions in ``_GATED_REGEXES`` of the detectors it wakes."""
_GATE_RE: re.Pattern[str] = re.compile("|".join(map(re.escape, _ALL_GATES)))
"""Longest gates first, so ``findall`` reports e.g. ``sk-ant-`` rather than its prefix ``sk-``."""
_SHORT_TEXT = 512
_LITERAL_ANCHORS: dict[str, str] = {"\\+": "+", "\\(": "("}
_MIN_TOKEN: dict[str, int] = {
    cls: min(DETECTORS[i].min_len for i in NUMERIC if DETECTORS[i].anchor == cls) for cls in _ANCHOR_CLASSES
}
_ORDER: dict[int, int] = {id(det): i for i, det in enumerate(DETECTORS)}
_MAYBE: re.Pattern[str] = re.compile(r"[0-9A-Z@:/\\+(_-]|(?i:bearer|basic|token|passw|pwd|secret|key)")
"""Every detector's match holds one of these: a short string without any needs no scan at all.
(Numeric anchors, the characters of every gate, and the keywords whose values may be lower-case.)"""


def find_hits(text: str, limit: int | None = None) -> list[Hit]:
    """Validated sensitive spans in ``text[:limit]``, by start; redacted spans never overlap."""
    end_pos = len(text) if limit is None else min(limit, len(text))
    if end_pos <= _SHORT_TEXT:
        if not _MAYBE.search(text, 0, end_pos):
            return []
        head = text if end_pos == len(text) else text[:end_pos]
        lowered = head.lower()
        present = set(_GATE_RE.findall(lowered))
        if end_pos < _BLOB_MIN:
            blob_runs: list[tuple[int, int]] | None = []  # too short to hold a run
        else:
            blob_runs = _blob_runs(head.encode("ascii")) if head.isascii() else None
        digit_ends = None
    else:
        head = text if end_pos == len(text) else text[:end_pos]
        # ASCII text is lower-cased only if a keyword detector wants it (``_gated_hits``).
        lowered = None if head.isascii() else head.lower()
        present, blob_runs, digit_ends = _LONG_SCAN.scan(head, lowered)
    # Hits come from several scanners: always order them and drop overlapping redactions.
    hits = _numeric_hits(text, end_pos, blob_runs, digit_ends) + _gated_hits(text, end_pos, lowered, present)
    return _merge(hits) if len(hits) > 1 else hits


def _gated_hits(text: str, end_pos: int, lowered: str | None, present: set[str]) -> list[Hit]:
    """Hits of the gated detectors woken by ``present``; ``lowered`` is ``text[:end_pos]``
    lower-cased (``None``: not made yet, the text is ASCII)."""
    hits: list[Hit] = []
    if not present:
        return hits
    ascii_text = text.isascii()
    if len(present) == 1:  # the usual case: its detectors, already in table order
        (gate,) = present
        order: Iterable[int] = _GATED_BY_GATE[gate]
    else:
        order = sorted({k for gate in present for k in _GATED_BY_GATE[gate]})
    for k in order:  # table order
        gated = _GATED_REGEXES[k]
        det = DETECTORS[gated.index]
        # Lower-casing keeps offsets only for ASCII text; other text is matched case-insensitively.
        if det.lower and ascii_text:
            if lowered is None:
                lowered = text[:end_pos].lower()
            matches = gated.pattern.finditer(lowered, 0, end_pos)
        elif det.lower:
            matches = gated.ignorecase.finditer(text, 0, end_pos)
        else:
            matches = gated.pattern.finditer(text, 0, end_pos)
        for match in matches:
            hit = _accept(det, gated.value_group, gated.host_group, match, text, 0)
            if hit is not None:
                hits.append(hit)
    return hits


_BLOB_CLASS = "[A-Z0-9]"
_BLOB_CHARS = "A-Za-z0-9+/_=-"
"""Every base64-blob token (the only detector anchored on ``[A-Z0-9]``) is made of these
characters (its extension class, its body and ``=`` padding) and is at least ``_BLOB_MIN`` long."""
_BLOB_MIN = min(DETECTORS[i].min_len for i in NUMERIC if DETECTORS[i].anchor == _BLOB_CLASS)
_BLOB_SET = frozenset(ch for ch in map(chr, range(128)) if re.fullmatch(f"[{_BLOB_CHARS}]", ch))
if _BLOB_MIN < 16 or any(
    not _EXTEND_CHARS[DETECTORS[i].extend] <= _BLOB_SET for i in NUMERIC if DETECTORS[i].anchor == _BLOB_CLASS
):
    raise RuntimeError("scanner: the blob-run pre-filter no longer covers the [A-Z0-9] detectors; fix _BLOB_CHARS")
_BLOB_RUN = f"[{_BLOB_CHARS}]{{{_BLOB_MIN}}}"
"""Where ``_blob_runs`` finds a run, Hyperscan matches this (the same characters, as many)."""
_BLOB_TABLE = bytes(ord("a") if chr(i) in _BLOB_SET else ord(" ") for i in range(256))
_BLOB_NEEDLE = b"a" * _BLOB_MIN


def _blob_runs(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of every run of ``_BLOB_MIN`` or more blob characters in ASCII ``data``.

    ``bytes.translate`` marks blob characters and ``bytes.find`` looks for a run of marks:
    both in C, a few GB/s, where a regex would try every position.
    """
    marked = data.translate(_BLOB_TABLE)
    runs: list[tuple[int, int]] = []
    start = marked.find(_BLOB_NEEDLE)
    while start >= 0:  # ``start`` follows a non-blob character: a search starts at one
        end = marked.find(b" ", start + _BLOB_MIN)
        if end < 0:
            runs.append((start, len(marked)))
            break
        runs.append((start, end))
        start = marked.find(_BLOB_NEEDLE, end)
    return runs


_DIGIT_CANDIDATES: tuple[str, ...] = (
    # Where the [0-9] scanner matches at anchor p (a digit), one of these occurs around p, on the
    # same line: none of those detectors' regexes or extension classes holds a line break, and
    # their look-aheads fail or succeed at a line break as at the end of the text, so scanning
    # line by line finds the same matches.
    r"[A-Z]{6}[0-9]",  # it_codice_fiscale: six capitals before the anchor
    r"[A-Z]{2}[0-9]{2}",  # iban: two capitals, the anchor and a digit
    r"[0-9]{13}|[0-9]{4}[ -][0-9]{4}[ -][0-9]{4}[ -][0-9]|[0-9]{4}[ -][0-9]{6}[ -][0-9]{5}",  # card
    r"[0-9]{3}-[0-9]{2}-[0-9]{4}",  # us_ssn
    r"[0-9]{3}\.[0-9]{3}\.[0-9]{3}-[0-9]{2}",  # br_cpf
    r"[0-9]{4} [0-9]{4} [0-9]{4}",  # in_aadhaar
    r"[0-9]{8}",  # es_dni
    r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]",  # ipv4
    r"[0-9](?:[ .-]?[0-9]){9}",  # national phone number: its look-ahead
    r"[A-Fa-f][0-9]|[A-Fa-f:]:[0-9]|[0-9][0-9:]*(?:::|[A-Fa-f])",  # ipv6: its three ways in
    r"[0-9][0-9A-Fa-f]{15}",  # hex_blob
)
_DIGIT_MEMBERS = (
    "it_codice_fiscale", "iban", "card", "us_ssn", "br_cpf", "in_aadhaar", "es_dni", "ipv4", "phone", "ipv6", "hex_blob",
)  # fmt: skip
if tuple(dict.fromkeys(DETECTORS[i].name for i in NUMERIC if DETECTORS[i].anchor == "[0-9]")) != _DIGIT_MEMBERS:
    raise RuntimeError("scanner: the [0-9] detectors changed; update _DIGIT_CANDIDATES to match")
_MAX_DIGIT_REPORTS = 64
"""Per KiB: text denser with digit candidates is cheaper to scan whole than line by line."""


class _LongScan:
    """One pass of Hyperscan over a long text: the gates present, where blobs and numbers may be.

    ``gate in text`` for each of 31 gates reads a long text 31 times; Hyperscan reads it once and
    reports each gate at most once (``SINGLEMATCH``, ``CASELESS``: for ASCII text that is
    ``gate in text.lower()``). The same pass reports the end of every ``_DIGIT_CANDIDATES``
    shape, so the ``[0-9]`` scanner reads only the lines holding one (text denser than
    ``_MAX_DIGIT_REPORTS`` per KiB stops the pass early and is scanned whole). ``_blob_runs``
    finds the runs of blob characters, so the base64 scanner reads those, not every capital
    and digit; the pass reports whether there is any (``_BLOB_MIN`` blob characters in a row,
    once), and most long texts have none, so ``_blob_runs`` reads only the others.

    Offsets are only the text's for ASCII text; other text is scanned lower-cased, for the gates.
    The database is immutable; each scan gets its own scratch space (a clone costs ~0.3 µs), so
    scans may run in several threads at once. Without Hyperscan: C substring search per gate,
    and the scanners read the whole text.
    """

    def __init__(self, gates: tuple[str, ...]) -> None:
        self.gates = gates
        # One-character gates without case ("/", "@") are frequent, so they cost the automaton more
        # than a C ``in`` (memchr) after it costs: they are looked for that way, in ASCII text as it
        # is (a letter would need lower-casing first, so letters stay with the automaton).
        self._char_gates = char_gates = tuple(g for g in gates if len(g) == 1 and g.lower() == g.upper())
        self._hs_gates = hs_gates = tuple(gate for gate in gates if gate not in char_gates)
        self._db = None
        self._scratch = None
        if _hs is not None:
            expressions = [re.escape(gate) for gate in hs_gates] + list(_DIGIT_CANDIDATES) + [_BLOB_RUN]
            literal = _hs.HS_FLAG_SINGLEMATCH | _hs.HS_FLAG_CASELESS
            db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
            db.compile(
                expressions=[expression.encode() for expression in expressions],
                ids=list(range(len(hs_gates))) + [len(hs_gates)] * len(_DIGIT_CANDIDATES) + [len(hs_gates) + 1],
                elements=len(expressions),
                flags=[literal] * len(hs_gates) + [0] * len(_DIGIT_CANDIDATES) + [_hs.HS_FLAG_SINGLEMATCH],
            )
            self._db = db
            self._scratch = _hs.Scratch(db)

    def scan(
        self, text: str, lowered: str | None
    ) -> tuple[set[str], list[tuple[int, int]] | None, list[int] | None]:
        """Gates present in ``lowered`` (``text`` lower-cased; ``None``: made here if needed,
        which for ASCII text is only when Hyperscan gives up); blob runs and ends of digit
        candidates in ``text`` (``None``: not known, scan the whole text)."""
        ascii_text = text.isascii()
        if lowered is None and (self._db is None or self._scratch is None or not ascii_text):
            lowered = text.lower()
        if self._db is None or self._scratch is None:
            return {gate for gate in self.gates if gate in lowered}, None, None
        data = text.encode("ascii") if ascii_text else lowered.encode("utf-8", "surrogatepass")
        found = _Found(len(self._hs_gates), _MAX_DIGIT_REPORTS * (1 + len(data) // 1024))
        try:
            self._db.scan(data, _note_match, context=found, scratch=self._scratch.clone())
        except _hs.ScanTerminated:  # dense with candidates: scan it all, gates the plain way
            if lowered is None:
                lowered = text.lower()
            return {gate for gate in self.gates if gate in lowered}, None, None
        gates = self._hs_gates
        present = {gates[i] for i in found.gates}
        # Lower-casing makes no "/" or "@" (nor removes one): look in ASCII text as it is.
        searched = text if lowered is None else lowered
        present.update(gate for gate in self._char_gates if gate in searched)
        if not ascii_text:  # offsets in the UTF-8 bytes are not the text's
            return present, None, None
        return present, _blob_runs(data) if found.blob else [], sorted(found.ends)


class _Found:
    """What one ``_LongScan`` pass reported."""

    __slots__ = ("digit_id", "cap", "gates", "ends", "blob")

    def __init__(self, digit_id: int, cap: int) -> None:
        self.digit_id = digit_id
        self.cap = cap
        self.gates: set[int] = set()
        self.ends: list[int] = []
        self.blob = False


def _note_match(pattern_id: int, start: int, end: int, flags: int, found: _Found) -> bool:
    """Hyperscan's match callback; returning True stops the scan."""
    if pattern_id == found.digit_id:
        found.ends.append(end)
        return len(found.ends) > found.cap
    if pattern_id == found.digit_id + 1:
        found.blob = True
    else:
        found.gates.add(pattern_id)
    return False


_LONG_SCAN = _LongScan(_ALL_GATES)


_CLASS_PLAN: tuple[tuple[str, tuple[_Scanner, ...], str | None, int], ...] = tuple(
    (anchor_class, scanners, _LITERAL_ANCHORS.get(anchor_class), _MIN_TOKEN.get(anchor_class, 0))
    for anchor_class, scanners in _SCANNERS.items()
)
"""Per anchor class, in table order: its scanners, its literal anchor (or None), its shortest token."""


def _numeric_hits(
    text: str, end_pos: int, blob_runs: list[tuple[int, int]] | None = None, digit_ends: list[int] | None = None
) -> list[Hit]:
    hits: list[Hit] = []
    for anchor_class, scanners, literal, min_token in _CLASS_PLAN:
        if anchor_class == "[0-9]" and digit_ends is not None:
            # Only the lines that hold a candidate shape can hold a match: scan those lines.
            line_end = -1
            for end in digit_ends:
                if end <= line_end:
                    continue
                line_start = text.rfind("\n", 0, end - 1) + 1
                line_end = text.find("\n", end - 1, end_pos)
                if line_end < 0:
                    line_end = end_pos
                hits.extend(_class_hits(scanners, text, line_end, line_start))
            continue
        if anchor_class == _BLOB_CLASS and blob_runs is not None:
            # A blob lies inside one run of blob characters: scan each long run, skip the rest.
            for run_start, run_end in blob_runs:
                hits.extend(_class_hits(scanners, text, run_end, run_start))
            continue
        if literal is not None and text.find(literal, 0, end_pos) < 0:
            continue  # "+" or "(" is absent: a C-speed look saves the regex call
        if end_pos < min_token:
            continue  # too short for any blob
        hits.extend(_class_hits(scanners, text, end_pos))
    return hits


def _class_hits(scanners: tuple[_Scanner, ...], text: str, end_pos: int, pos: int = 0) -> list[Hit]:
    hits: list[Hit] = []
    floor = 0  # tokens may not extend back over an earlier hit
    first_scanner = scanners[0]
    while pos < end_pos:
        match = first_scanner.pattern.search(text, pos, end_pos)
        if match is None:
            break
        anchor = match.start()
        hit = None
        scanner = first_scanner
        while match is not None:
            index, value_group, host_group = scanner.detector_of_group[match.lastindex or 0]
            hit = _accept(DETECTORS[index], value_group, host_group, match, text, floor)
            if hit is not None:
                break
            position = first_scanner.members.index(index) + 1
            if position >= len(scanners):
                break
            # Rejected (a checksum failed): the later detectors get their chance at this anchor.
            scanner = scanners[position]
            match = scanner.pattern.match(text, anchor, end_pos)
        if hit is None:
            pos = anchor + 1
            continue
        hits.append(hit)
        pos = max(match.end() if match is not None else anchor + 1, anchor + 1)
        floor = max(hit.end, pos)
    return hits


def _merge(hits: list[Hit]) -> list[Hit]:
    """Sort by start (then table order); redacted spans that overlap are cut apart, never dropped
    while they still cover text of their own (``password: DE89 3704…``: the keyword value takes
    ``DE89``, the IBAN keeps the rest)."""
    hits.sort(key=lambda h: (h.start, _ORDER[id(h.detector)]))
    kept: list[Hit] = []
    redacted_until = 0
    for hit in hits:
        if not hit.detector.redact:
            kept.append(hit)
        elif hit.start >= redacted_until:
            kept.append(hit)
            redacted_until = hit.end
        elif hit.end > redacted_until:
            kept.append(hit._replace(start=redacted_until))
            redacted_until = hit.end
    return kept


_USERINFO_BEFORE = re.compile(r"://[^\s/@]*\Z")
_EXTEND_STRIP: dict[str, str] = {extend: "".join(sorted(chars)) for extend, chars in _EXTEND_CHARS.items()}
"""The extension classes as ``str.rstrip`` arguments: stripping them off ``text[lo:start]`` moves
the start back over them in C, as the character-by-character loop did."""
if any("\\" in det.not_after for det in DETECTORS):
    raise RuntimeError("scanner: a not_after class uses an escape; _NOT_AFTER_SET covers only ASCII ranges")
_NOT_AFTER_SET: dict[str, frozenset[str]] = {
    chars: frozenset(ch for ch in map(chr, range(128)) if pattern.match(ch)) for chars, pattern in _NOT_AFTER_RE.items()
}
"""The ``not_after`` classes as sets (they hold ASCII ranges only): a set look-up, not a regex call."""
_KIND_EMAIL, _KIND_URL, _KIND_IPV6 = 1, 2, 3
_KIND: dict[str, int] = {"email": _KIND_EMAIL, "url": _KIND_URL, "ipv6": _KIND_IPV6}


def _accept(
    det: Detector, value_group: str | None, host_group: str | None, match: re.Match[str], text: str, floor: int
) -> Hit | None:
    """Apply the detector's extension, boundary and validator to one candidate match."""
    anchor = match.start()
    start = anchor - det.back
    if det.extend:
        lo = max(floor, anchor - det.extend_max, 0)
        if start > lo:
            start = lo + len(text[lo:start].rstrip(_EXTEND_STRIP[det.extend]))
    kind = _KIND.get(det.name, 0)
    if kind == _KIND_IPV6 and text.startswith(":", start) and not text.startswith("::", start):
        start += 1  # "addr:2001:db8::1": the colon before the address is not part of it
    if start < floor:
        return None
    end = match.end()
    if det.not_after and start > 0 and text[start - 1] in _NOT_AFTER_SET[det.not_after]:
        return None
    if det.min_len and end - start < det.min_len:
        return None
    host = url = ""
    if kind == _KIND_EMAIL:
        if start == anchor or _USERINFO_BEFORE.search(text, max(0, start - 256), start):
            return None  # no local part, or the user-info of a URL (scheme://user:pass@host)
        host = text[anchor + 1 : end].lower()
    elif kind == _KIND_URL:
        if start == anchor or not text[start].isalpha():
            return None
        host = (match.group(host_group) or "").lower() if host_group else ""
        url = f"{text[start:anchor].lower()}://{host}"
    if value_group is not None:
        value_start, value_end = match.span(value_group)
        if value_start >= 0:  # the group took part in the match
            start, end = value_start, value_end
    value = text[start:end]
    if det.validate is not None and not det.validate(value):
        return None
    return _new_hit(Hit, (det, start, end, host, url, value))
