"""What counts as sensitive text: one table of detectors, and ``find_hits`` to scan a string.

Every detector is a regex plus an optional validator (checksum, entropy, structure) that rejects
look-alikes, and a normaliser that makes equal values fingerprint equally (``4539 1488 …`` and
``4539-1488-…`` are the same card). Python's regex engine tries every branch of an alternation
at every position, so the table is compiled for where candidates can start instead: gated
detectors run only on strings holding their literal gate, and the numeric detectors share one
regex per anchor class (digits, upper-case letters, ``+``, ``(``) whose class prefix lets the
engine skip all other text in C (see docs/redaction.md, "How scanning works").

Table order matters: of overlapping hits the earlier start wins, then the earlier detector, so
specific shapes come before generic ones (high-entropy blobs). Checksums come from python-stdnum
(IBAN mod-97 and country formats, Luhn, national IDs).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum.br import cpf as _br_cpf
from stdnum.es import dni as _es_dni
from stdnum.in_ import aadhaar as _in_aadhaar
from stdnum.it import codicefiscale as _it_cf
from stdnum.us import ssn as _us_ssn

__all__ = ["Detector", "DETECTORS", "Hit", "find_hits", "KEY_NAME_RE"]

Validator = Callable[[str], bool]
Normaliser = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind of sensitive value, written so that scanning costs little where it is absent.

    Two tiers. A *gated* detector (``gates`` non-empty) runs only on strings that contain one of
    its gate substrings (``"@"``, ``"://"``, ``"AKIA"``, ``"password"`` …; checked with ``in``,
    which is C-speed), and its regex starts with a literal so the engine's fast literal search
    finds candidates. With ``lower=True`` it runs on the lower-cased text (keywords in any case).
    The other detectors (numbers: cards, phones, IDs, IBANs, IPs, blobs) are compiled together,
    one regex per ``anchor`` class (``[0-9]``, ``[A-Z0-9]``, ``\\+``, ``\\(``): a match starts
    at one anchor character followed by ``rest``. A token may start before where its regex starts: ``back`` fixed
    characters (checked by a look-behind in the regex), or ``extend``, a character class the start
    is extended backwards over (an e-mail's local part before ``@``, a URL's scheme before
    ``://``). A group ``(?P<v>…)`` marks the sensitive part (``password=<secret:password>``
    keeps the word); ``redact=False`` labels without replacing (URLs, paths).
    """

    name: str
    label: str
    anchor: str
    rest: str
    gates: tuple[str, ...] = ()
    lower: bool = False
    back: int = 0
    extend: str = ""
    extend_max: int = 0
    min_len: int = 0
    """Minimum token length after extension (blobs)."""
    not_after: str = ""
    """Characters that must not come right before the token (a word boundary, usually)."""
    need_after: str = ""
    """Numeric tier: only try this detector at an anchor right after one of these characters."""
    skip_after: str = ""
    """Numeric tier: do not even try this detector at an anchor right after one of these characters
    (the digits inside a number start no new hex or IPv6 candidate; the token was tried at its
    first digit)."""
    validate: Validator | None = None
    normalise: Normaliser | None = None
    redact: bool = True

    @property
    def placeholder(self) -> str:
        return f"<secret:{self.name}>" if self.label == "secret" else f"<{self.label}>"


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _compact_upper(text: str) -> str:
    return "".join(text.split()).replace("-", "").replace(".", "").upper()


def shannon_entropy(text: str) -> float:
    """Bits per character; random base64 is ~5.5-6, hex ~3.7-4, English words ~3-4."""
    n = len(text)
    if not n:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _is_card(text: str) -> bool:
    digits = _digits(text)
    if not (13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1):
        return False
    groups = [len(g) for g in re.split(r"[ -]", text)]
    # Printed cards group digits in fours (Amex: 4-6-5); other groupings are other numbers.
    if len(groups) > 1 and groups != [4, 6, 5] and not (all(g == 4 for g in groups[:-1]) and groups[-1] <= 4):
        return False
    return _luhn.is_valid(digits)


def _is_iban(text: str) -> bool:
    return _iban.is_valid(text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return text.count(":") >= 2 and len(text) >= 6


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_phone(text: str) -> bool:
    digits = _digits(text)
    if not 7 <= len(digits) <= 15 or len(set(digits)) < 3:
        return False
    if text.startswith("+") or "(" in text:
        return True
    # Without a country code or area-code brackets: one kind of separator, 10-11 digits
    # (a national number), so dates, versions and ID numbers are not taken for phones.
    separators = {ch for ch in text if not ch.isdigit()}
    return len(separators) == 1 and 10 <= len(digits) <= 11


def _is_jwt(text: str) -> bool:
    head = text.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
    except (ValueError, TypeError):
        return False
    return decoded.lstrip().startswith(b"{")


def _is_basic_credential(text: str) -> bool:
    # Punctuation right after the credential may have been taken in: try without it too.
    return any(_decodes_to_user_pass(candidate) for candidate in {text, text.rstrip("+/=")})


def _decodes_to_user_pass(text: str) -> bool:
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (ValueError, TypeError):
        return False
    return b":" in decoded and len(decoded) >= 3


def _is_bearer_token(text: str) -> bool:
    return len(text) >= 16 or any(ch.isdigit() for ch in text)


def _is_assigned_secret(text: str) -> bool:
    # `password=${PASSWORD}`, `token: <redacted>`, `password: null` are references, not values.
    lowered = text.lower()
    return not (text[0] in "$<{%*" or lowered in _NOT_VALUES)


_NOT_VALUES = frozenset(
    {
        "null",
        "none",
        "true",
        "false",
        "undefined",
        "required",
        "optional",
        "string",
        "xxx",
        "xxxx",
        "****",
        "changeme",
        "redacted",
        "is",
        "was",
        "the",
        "and",
        "or",
        "for",
    }
)


def _is_b64_blob(text: str) -> bool:
    core = text.rstrip("=")
    if len(core) < 32:
        return False
    has_digit = any(ch.isdigit() for ch in core)
    has_upper = any(ch.isupper() for ch in core)
    has_lower = any(ch.islower() for ch in core)
    if not (has_digit and has_upper and has_lower):
        return False
    return shannon_entropy(core[:256]) >= 4.0


def _is_hex_blob(text: str) -> bool:
    return any(ch.isdigit() for ch in text) and any(ch.isalpha() for ch in text) and shannon_entropy(text[:256]) >= 3.0


def _is_national_id(validator: Callable[[str], bool]) -> Validator:
    def check(text: str) -> bool:
        try:
            return bool(validator(text))
        except Exception:  # noqa: BLE001 - a checksum library must never break redaction
            return False

    return check


def _lower(text: str) -> str:
    return text.lower()


_WORD = "A-Za-z0-9"  # token boundaries: "_" next to a value does not hide it (``id_4539…``)
_ALNUM = _WORD
_END = r"(?![A-Za-z0-9])"
_SEP = r"""["']?[ \t]{0,3}[:=]{1,2}[ \t]{0,3}["']?(?P<v>[^\s"',;&}<>]{3,256})"""
_TOKEN = r"(?P<v>[A-Za-z0-9._~+/-]{8,}=*)"
_PHONE_TAIL = r"(?:[ .-]\d{2,4}){1,4}" + _END

_KEYWORD = r"(?:passw(?:or)?d|pwd|secret(?:[_-]?key)?|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key)"
_KEYWORD_GATES = ("passw", "pwd", "secret", "token", "key")
_B64 = "A-Za-z0-9+/_-"

DETECTORS: tuple[Detector, ...] = (
    # --- gated: found by a literal -------------------------------------------------------------
    Detector(
        "private_key",
        "secret",
        "-",
        r"----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[A-Za-z0-9+/=\s\\:,.-]*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        r"|[A-Za-z0-9+/=\s\\:,.]*)",
        gates=("-----BEGIN",),
    ),
    Detector(
        "aws_access_key",
        "secret",
        "A",
        r"(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[A-Z0-9]{16}",
        gates=("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
        not_after=_ALNUM,
    ),
    Detector(
        "google_api_key", "secret", "A", r"Iza[0-9A-Za-z_-]{35}", gates=("AIza",), not_after=_ALNUM
    ),
    Detector(
        "github_token",
        "secret",
        "g",
        r"h[pousr]_[A-Za-z0-9]{36,251}",
        gates=("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
        not_after=_ALNUM,
    ),
    Detector("github_token", "secret", "g", r"ithub_pat_[A-Za-z0-9_]{22,255}", gates=("github_pat_",), not_after=_ALNUM),
    Detector(
        "stripe_key",
        "secret",
        "[rsp]",
        r"k_(?:live|test)_[0-9A-Za-z]{16,}",
        gates=("k_live_", "k_test_"),
        not_after=_ALNUM,
    ),
    Detector(
        "slack_webhook",
        "secret",
        "h",
        r"ttps://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9_/-]{20,}",
        gates=("hooks.slack.com",),
    ),
    Detector("slack_token", "secret", "x", r"ox[abposre]-[0-9A-Za-z-]{10,}", gates=("xox",), not_after=_ALNUM),
    Detector(
        "anthropic_key",
        "secret",
        "s",
        r"k-ant-[a-z]{3,8}\d{0,3}-[A-Za-z0-9_-]{20,}",
        gates=("sk-ant-",),
        not_after=_ALNUM,
    ),
    Detector(
        "openai_key", "secret", "s", r"k-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}", gates=("sk-",), not_after=_ALNUM
    ),
    Detector(
        "jwt",
        "secret",
        "e",
        r"yJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
        gates=("eyJ",),
        not_after=_ALNUM,
        validate=_is_jwt,
    ),
    Detector("url_password", "secret", ":", r"""//[^\s:/@"'<>]{1,128}:(?P<v>[^\s/@"'<>]{1,256})@""", gates=("://",)),
    Detector("bearer", "secret", "b", r"earer\s+" + _TOKEN, gates=("bearer",), lower=True, validate=_is_bearer_token),
    Detector(
        "basic_auth",
        "secret",
        "b",
        r"asic\s+(?P<v>[A-Za-z0-9+/]{6,}={0,2})" + _END,
        gates=("basic",),
        lower=True,
        validate=_is_basic_credential,
    ),
    Detector("bearer", "secret", "t", r"oken\s+" + _TOKEN, gates=("token",), lower=True, validate=_is_bearer_token),
    # Keyword assignments: `password=…`, `"api_key": "…"`, `TOKEN: …` (the value only is secret).
    Detector("password", "secret", "", _KEYWORD + _SEP, gates=_KEYWORD_GATES, lower=True, validate=_is_assigned_secret),
    Detector(
        "email",
        "email",
        "@",
        r"(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}" + _END,
        gates=("@",),
        extend="A-Za-z0-9._%+-",
        extend_max=64,
        normalise=_lower,
    ),
    Detector(
        "url",
        "url",
        ":",
        r"""//(?:[^\s/@"'<>]{1,256}@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(?::\d{1,5})?""",
        gates=("://",),
        extend="A-Za-z0-9+.-",
        extend_max=16,
        redact=False,
    ),
    Detector(
        "path",
        "path",
        "/",
        r"(?:[\w.@+-]{1,255}/){0,64}[\w.@+-]{1,255}",
        gates=("/",),
        extend="~.",
        extend_max=2,
        not_after=_WORD + "/.~:",
        redact=False,
    ),
    Detector(
        "path",
        "path",
        "[A-Za-z]",
        r":\\(?:[\w .@+-]{1,255}\\){0,64}[\w.@+-]{1,255}",
        gates=(":\\",),
        not_after=_WORD,
        redact=False,
    ),
    # --- numbers: one regex anchored on digits, "+" and "(" ------------------------------------
    # IBANs and codici fiscali are anchored on their first digit, after letters.
    Detector(
        "it_codice_fiscale",
        "national_id",
        "[0-9]",
        r"(?<=[A-Z]{6}[0-9])\d[A-EHLMPRST]\d{2}[A-Z]\d{3}[A-Z]" + _END,
        back=6,
        not_after=_WORD,
        need_after="A-Z",
        validate=_is_national_id(_it_cf.is_valid),
    ),
    Detector(
        "iban",
        "iban",
        "[0-9]",
        r"(?<=[A-Z]{2}[0-9])\d(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?" + _END,
        back=2,
        not_after=_WORD,
        need_after="A-Z",
        validate=_is_iban,
        normalise=_compact_upper,
    ),
    Detector(
        "card",
        "card",
        "[0-9]",
        # Contiguous, 4-4-4-4(-3) or Amex 4-6-5: a card and the expiry or CVV after it stay apart.
        r"(?:\d{12,18}|\d{3}(?P<s1>[ -])\d{4}(?P=s1)\d{4}(?P=s1)\d{1,4}(?:(?P=s1)\d{3})?"
        r"|\d{3}(?P<s2>[ -])\d{6}(?P=s2)\d{5})" + _END, not_after=_WORD, validate=_is_card, normalise=_digits
    ),
    Detector(
        "us_ssn",
        "national_id",
        "[0-9]",
        r"\d{2}-\d{2}-\d{4}" + _END,
        not_after=_WORD,
        validate=_is_national_id(_us_ssn.is_valid),
        normalise=_digits,
    ),
    Detector(
        "br_cpf",
        "national_id",
        "[0-9]",
        r"\d{2}\.\d{3}\.\d{3}-\d{2}" + _END,
        not_after=_WORD,
        validate=_is_national_id(_br_cpf.is_valid),
        normalise=_digits,
    ),
    Detector(
        "in_aadhaar",
        "national_id",
        "[0-9]",
        r"\d{3} \d{4} \d{4}" + _END,
        not_after=_WORD,
        validate=_is_national_id(_in_aadhaar.is_valid),
        normalise=_digits,
    ),
    Detector(
        "es_dni",
        "national_id",
        "[0-9]",
        r"\d{7}-?[A-HJ-NP-TV-Z]" + _END,
        not_after=_WORD,
        validate=_is_national_id(_es_dni.is_valid),
        normalise=_compact_upper,
    ),
    Detector(
        "ipv4",
        "ip",
        "[0-9]",
        r"\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![0-9]|\.\d)",
        not_after=_WORD + ".",
        validate=_is_ipv4,
    ),
    Detector(
        "phone",
        "phone",
        r"\+",
        r"\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}" + _PHONE_TAIL,
        not_after=_WORD,
        validate=_is_phone,
        normalise=_digits,
    ),
    Detector(
        "phone",
        "phone",
        r"\(",
        r"\d{1,4}\)[ .-]?\d{2,4}" + _PHONE_TAIL,
        not_after=_WORD,
        validate=_is_phone,
        normalise=_digits,
    ),
    # A national number without "+" or "(": 10-11 digits, one kind of separator (not a date).
    Detector(
        "phone",
        "phone",
        "[0-9]",
        r"(?=(?:[ .-]?\d){9})\d{1,3}(?P<sep>[ .-])\d{2,4}(?:(?P=sep)\d{2,4}){1,3}" + _END,
        not_after=_WORD + "+",
        validate=_is_phone,
        normalise=_digits,
    ),
    Detector(
        # Needs "::" or a hex letter, so clock times (12:30:45) are not candidates at all.
        "ipv6",
        "ip",
        "[0-9]",
        r"(?:(?<=[A-Fa-f][0-9])|(?<=[A-Fa-f:]:[0-9])|(?=[0-9A-Fa-f:]*(?:::|[A-Fa-f])))[0-9A-Fa-f]{0,4}(?:::?[0-9A-Fa-f]{1,4}){0,7}(?:::)?(?![0-9A-Za-z]|:[0-9A-Fa-f])",
        extend="0-9A-Fa-f:",
        extend_max=40,
        not_after=_WORD,
        skip_after="0-9",
        validate=_is_ipv6,
        normalise=_lower,
    ),
    Detector(
        "hex_blob",
        "high_entropy",
        "[0-9]",
        r"[0-9a-fA-F]{15,}+" + _END,
        extend="0-9a-fA-F",
        extend_max=4096,
        min_len=32,
        not_after=_WORD,
        skip_after="0-9",
        validate=_is_hex_blob,
        normalise=_lower,
    ),
    Detector(
        # Anchored on the first upper-case letter or digit: a random blob has one within its first
        # few characters, and a blob must hold both (see _is_b64_blob).
        "base64_blob",
        "high_entropy",
        "[A-Z0-9]",
        f"[{_B64}]{{19,}}+={{0,2}}",
        extend=_B64,
        extend_max=4096,
        min_len=32,
        skip_after="A-Z0-9",
        validate=_is_b64_blob,
    ),
)

GATED: tuple[int, ...] = tuple(i for i, det in enumerate(DETECTORS) if det.gates)
NUMERIC: tuple[int, ...] = tuple(i for i, det in enumerate(DETECTORS) if not det.gates)


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
        return f"(?<![{_WORD}]" + before
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


@dataclass(frozen=True, slots=True)
class Hit:
    """A validated sensitive span ``text[start:end]``."""

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
    if end_pos <= _SHORT_TEXT and not _MAYBE.search(text, 0, end_pos):
        return []
    # Hits come from several scanners: always order them and drop overlapping redactions.
    hits = _numeric_hits(text, end_pos) + _gated_hits(text, end_pos)
    return _merge(hits) if len(hits) > 1 else hits


def _gated_hits(text: str, end_pos: int) -> list[Hit]:
    hits: list[Hit] = []
    lowered = text[:end_pos].lower()
    present = _present_gates(lowered)
    if not present:
        return hits
    ascii_text = text.isascii()
    for gated in _GATED_REGEXES:
        det = DETECTORS[gated.index]
        if present.isdisjoint(_LOWER_GATES[gated.index]):
            continue
        # Lower-casing keeps offsets only for ASCII text; other text is matched case-insensitively.
        if det.lower and ascii_text:
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


def _present_gates(lowered: str) -> set[str]:
    """Which gate substrings occur: one regex call for short text, C substring search for long."""
    if len(lowered) <= _SHORT_TEXT:
        return set(_GATE_RE.findall(lowered))
    return {gate for gate in _ALL_GATES if gate in lowered}


def _numeric_hits(text: str, end_pos: int) -> list[Hit]:
    hits: list[Hit] = []
    for anchor_class, scanners in _SCANNERS.items():
        literal = _LITERAL_ANCHORS.get(anchor_class)
        if literal is not None and text.find(literal, 0, end_pos) < 0:
            continue  # "+" or "(" is absent: a C-speed look saves the regex call
        if end_pos < _MIN_TOKEN.get(anchor_class, 0):
            continue  # too short for any blob
        hits.extend(_class_hits(scanners, text, end_pos))
    return hits


def _class_hits(scanners: tuple[_Scanner, ...], text: str, end_pos: int) -> list[Hit]:
    hits: list[Hit] = []
    pos = 0
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
            position = first_scanner.members.index(index) + 1
            if hit is not None or position >= len(scanners):
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
            kept.append(dataclasses.replace(hit, start=redacted_until))
            redacted_until = hit.end
    return kept


_USERINFO_BEFORE = re.compile(r"://[^\s/@]*\Z")


def _accept(
    det: Detector, value_group: str | None, host_group: str | None, match: re.Match[str], text: str, floor: int
) -> Hit | None:
    """Apply the detector's extension, boundary and validator to one candidate match."""
    anchor = match.start()
    start = anchor - det.back
    if det.extend:
        lo = max(floor, anchor - det.extend_max, 0)
        chars = _EXTEND_CHARS[det.extend]
        while start > lo and text[start - 1] in chars:
            start -= 1
    if det.name == "ipv6" and text.startswith(":", start) and not text.startswith("::", start):
        start += 1  # "addr:2001:db8::1": the colon before the address is not part of it
    if start < floor:
        return None
    end = match.end()
    if det.not_after and start > 0 and _NOT_AFTER_RE[det.not_after].match(text, start - 1):
        return None
    if det.min_len and end - start < det.min_len:
        return None
    host = url = ""
    if det.name == "email":
        if start == anchor or _USERINFO_BEFORE.search(text, max(0, start - 256), start):
            return None  # no local part, or the user-info of a URL (scheme://user:pass@host)
        host = text[anchor + 1 : end].lower()
    elif det.name == "url":
        if start == anchor or not text[start].isalpha():
            return None
        host = (match.group(host_group) or "").lower() if host_group else ""
        url = f"{text[start:anchor].lower()}://{host}"
    if value_group is not None and match.group(value_group) is not None:
        start, end = match.span(value_group)
    if det.validate is not None and not det.validate(text[start:end]):
        return None
    return Hit(det, start, end, host, url, text[start:end])


KEY_NAME_RE: re.Pattern[str] = re.compile(
    r"(?i)^(?:.*[_.-])?(?:password|passwd|passphrase|pwd|secret|client_?secret|api_?key|apikey|"
    r"access_?key|secret_?key|private_?key|token|auth_?token|access_?token|refresh_?token|"
    r"authorization|cookie|set-cookie|session_?id|credentials?|x-api-key)$"
)
"""Object keys whose string value is a secret whatever it looks like (``{"password": "hunter2"}``)."""
