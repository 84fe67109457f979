"""What counts as sensitive text: the table of detectors (``scanner.find_hits`` runs it).

Every detector is a regex plus an optional validator (checksum, entropy, structure; see
``validators``) that rejects look-alikes, and a normaliser that makes equal values fingerprint
equally (``4539 1488 …`` and ``4539-1488-…`` are the same card). Detectors are written for
where a candidate can start: gated ones run only on strings holding one of their literal gates,
numeric ones on an anchor character class (see ``Detector`` and docs/redaction.md).

Table order matters: of overlapping hits the earlier start wins, then the earlier detector, so
specific shapes come before generic ones (high-entropy blobs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import validators as v
from .validators import Normaliser, Validator

__all__ = ["Detector", "DETECTORS", "GATED", "NUMERIC", "KEY_NAME_RE"]


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
    placeholder: str = field(init=False, repr=False, compare=False)
    """What replaces a hit in redacted text; built once (it is read per hit)."""

    def __post_init__(self) -> None:
        placeholder = f"<secret:{self.name}>" if self.label == "secret" else f"<{self.label}>"
        object.__setattr__(self, "placeholder", placeholder)


WORD_CHARS = "A-Za-z0-9"  # token boundaries: "_" next to a value does not hide it (``id_4539…``)
_ALNUM = WORD_CHARS
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
    Detector("google_api_key", "secret", "A", r"Iza[0-9A-Za-z_-]{35}", gates=("AIza",), not_after=_ALNUM),
    Detector(
        "github_token",
        "secret",
        "g",
        r"h[pousr]_[A-Za-z0-9]{36,251}",
        gates=("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
        not_after=_ALNUM,
    ),
    Detector(
        "github_token", "secret", "g", r"ithub_pat_[A-Za-z0-9_]{22,255}", gates=("github_pat_",), not_after=_ALNUM
    ),
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
        validate=v.is_jwt,
    ),
    Detector("url_password", "secret", ":", r"""//[^\s:/@"'<>]{1,128}:(?P<v>[^\s/@"'<>]{1,256})@""", gates=("://",)),
    Detector("bearer", "secret", "b", r"earer\s+" + _TOKEN, gates=("bearer",), lower=True, validate=v.is_bearer_token),
    Detector(
        "basic_auth",
        "secret",
        "b",
        r"asic\s+(?P<v>[A-Za-z0-9+/]{6,}={0,2})" + _END,
        gates=("basic",),
        lower=True,
        validate=v.is_basic_credential,
    ),
    Detector("bearer", "secret", "t", r"oken\s+" + _TOKEN, gates=("token",), lower=True, validate=v.is_bearer_token),
    # Keyword assignments: `password=…`, `"api_key": "…"`, `TOKEN: …` (the value only is secret).
    Detector(
        "password", "secret", "", _KEYWORD + _SEP, gates=_KEYWORD_GATES, lower=True, validate=v.is_assigned_secret
    ),
    Detector(
        "email",
        "email",
        "@",
        r"(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}" + _END,
        gates=("@",),
        extend="A-Za-z0-9._%+-",
        extend_max=64,
        normalise=v.lower,
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
        not_after=WORD_CHARS + "/.~:",
        redact=False,
    ),
    Detector(
        "path",
        "path",
        "[A-Za-z]",
        r":\\(?:[\w .@+-]{1,255}\\){0,64}[\w.@+-]{1,255}",
        gates=(":\\",),
        not_after=WORD_CHARS,
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
        not_after=WORD_CHARS,
        need_after="A-Z",
        validate=v.is_it_codice_fiscale,
    ),
    Detector(
        "iban",
        "iban",
        "[0-9]",
        r"(?<=[A-Z]{2}[0-9])\d(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?" + _END,
        back=2,
        not_after=WORD_CHARS,
        need_after="A-Z",
        validate=v.is_iban,
        normalise=v.compact_upper,
    ),
    Detector(
        "card",
        "card",
        "[0-9]",
        # Contiguous, 4-4-4-4(-3) or Amex 4-6-5: a card and the expiry or CVV after it stay apart.
        r"(?:\d{12,18}|\d{3}(?P<s1>[ -])\d{4}(?P=s1)\d{4}(?P=s1)\d{1,4}(?:(?P=s1)\d{3})?"
        r"|\d{3}(?P<s2>[ -])\d{6}(?P=s2)\d{5})" + _END,
        not_after=WORD_CHARS,
        validate=v.is_card,
        normalise=v.only_digits,
    ),
    Detector(
        "us_ssn",
        "national_id",
        "[0-9]",
        r"\d{2}-\d{2}-\d{4}" + _END,
        not_after=WORD_CHARS,
        validate=v.is_us_ssn,
        normalise=v.only_digits,
    ),
    Detector(
        "br_cpf",
        "national_id",
        "[0-9]",
        r"\d{2}\.\d{3}\.\d{3}-\d{2}" + _END,
        not_after=WORD_CHARS,
        validate=v.is_br_cpf,
        normalise=v.only_digits,
    ),
    Detector(
        "in_aadhaar",
        "national_id",
        "[0-9]",
        r"\d{3} \d{4} \d{4}" + _END,
        not_after=WORD_CHARS,
        validate=v.is_in_aadhaar,
        normalise=v.only_digits,
    ),
    Detector(
        "es_dni",
        "national_id",
        "[0-9]",
        r"\d{7}-?[A-HJ-NP-TV-Z]" + _END,
        not_after=WORD_CHARS,
        validate=v.is_es_dni,
        normalise=v.compact_upper,
    ),
    Detector(
        "ipv4",
        "ip",
        "[0-9]",
        r"\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![0-9]|\.\d)",
        not_after=WORD_CHARS + ".",
        validate=v.is_ipv4,
    ),
    Detector(
        "phone",
        "phone",
        r"\+",
        r"\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}" + _PHONE_TAIL,
        not_after=WORD_CHARS,
        validate=v.is_phone,
        normalise=v.only_digits,
    ),
    Detector(
        "phone",
        "phone",
        r"\(",
        r"\d{1,4}\)[ .-]?\d{2,4}" + _PHONE_TAIL,
        not_after=WORD_CHARS,
        validate=v.is_phone,
        normalise=v.only_digits,
    ),
    # A national number without "+" or "(": 10-11 digits, one kind of separator (not a date).
    Detector(
        "phone",
        "phone",
        "[0-9]",
        r"(?=(?:[ .-]?\d){9})\d{1,3}(?P<sep>[ .-])\d{2,4}(?:(?P=sep)\d{2,4}){1,3}" + _END,
        not_after=WORD_CHARS + "+",
        validate=v.is_phone,
        normalise=v.only_digits,
    ),
    Detector(
        # Needs "::" or a hex letter, so clock times (12:30:45) are not candidates at all.
        "ipv6",
        "ip",
        "[0-9]",
        r"(?:(?<=[A-Fa-f][0-9])|(?<=[A-Fa-f:]:[0-9])|(?=[0-9A-Fa-f:]*(?:::|[A-Fa-f])))[0-9A-Fa-f]{0,4}(?:::?[0-9A-Fa-f]{1,4}){0,7}(?:::)?(?![0-9A-Za-z]|:[0-9A-Fa-f])",
        extend="0-9A-Fa-f:",
        extend_max=40,
        not_after=WORD_CHARS,
        skip_after="0-9",
        validate=v.is_ipv6,
        normalise=v.lower,
    ),
    Detector(
        "hex_blob",
        "high_entropy",
        "[0-9]",
        r"[0-9a-fA-F]{15,}+" + _END,
        extend="0-9a-fA-F",
        extend_max=4096,
        min_len=32,
        not_after=WORD_CHARS,
        skip_after="0-9",
        validate=v.is_hex_blob,
        normalise=v.lower,
    ),
    Detector(
        # Anchored on the first upper-case letter or digit: a random blob has one within its first
        # few characters, and a blob must hold both (see v.is_b64_blob).
        "base64_blob",
        "high_entropy",
        "[A-Z0-9]",
        f"[{_B64}]{{19,}}+={{0,2}}",
        extend=_B64,
        extend_max=4096,
        min_len=32,
        skip_after="A-Z0-9",
        validate=v.is_b64_blob,
    ),
)

GATED: tuple[int, ...] = tuple(i for i, det in enumerate(DETECTORS) if det.gates)
NUMERIC: tuple[int, ...] = tuple(i for i, det in enumerate(DETECTORS) if not det.gates)


KEY_NAME_RE: re.Pattern[str] = re.compile(
    r"(?i)^(?:.*[_.-])?(?:password|passwd|passphrase|pwd|secret|client_?secret|api_?key|apikey|"
    r"access_?key|secret_?key|private_?key|token|auth_?token|access_?token|refresh_?token|"
    r"authorization|cookie|set-cookie|session_?id|credentials?|x-api-key)$"
)
"""Object keys whose string value is a secret whatever it looks like (``{"password": "hunter2"}``)."""
