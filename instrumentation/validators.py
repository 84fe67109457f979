"""Validators and normalisers of the detectors: checksums, entropy, structure; pure functions.

A validator rejects a look-alike the regex cannot tell apart (a 16-digit number failing Luhn is
not a card); a normaliser makes one value look the same however it was written, so it gets one
fingerprint. Checksums come from python-stdnum.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import re
from collections.abc import Callable

from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum.br import cpf as _br_cpf
from stdnum.es import dni as _es_dni
from stdnum.in_ import aadhaar as _in_aadhaar
from stdnum.it import codicefiscale as _it_cf
from stdnum.us import ssn as _us_ssn

try:  # the C loop behind ``Counter(text)``, without Counter's Python-level __init__ and update
    from _collections import _count_elements
except ImportError:  # pragma: no cover - another Python implementation

    def _count_elements(mapping: dict[str, int], iterable: str) -> None:
        for item in iterable:
            mapping[item] = mapping.get(item, 0) + 1


Validator = Callable[[str], bool]
Normaliser = Callable[[str], str]


_NOT_ASCII_DIGIT = re.compile(r"[^0-9]+")
_ASCII_DIGIT = re.compile(r"[0-9]")
_CARD_SEPARATOR = re.compile(r"[ -]")


def only_digits(text: str) -> str:
    if text.isascii():  # the usual case, in C
        return _NOT_ASCII_DIGIT.sub("", text)
    return "".join(ch for ch in text if ch.isdigit())


def compact_upper(text: str) -> str:
    return "".join(text.split()).replace("-", "").replace(".", "").upper()


_TERM_TABLE_MAX = 256
_ENTROPY_TERMS: tuple[tuple[float, ...], ...] = tuple(
    tuple(c / n * math.log2(c / n) if c else 0.0 for c in range(n + 1)) if n else () for n in range(_TERM_TABLE_MAX + 1)
)
"""``_ENTROPY_TERMS[n][c] == c / n * math.log2(c / n)``: the validators measure at most 256 characters,
so each term is a table look-up (the same float, added in the same order)."""


def shannon_entropy(text: str) -> float:
    """Bits per character; random base64 is ~5.5-6, hex ~3.7-4, English words ~3-4."""
    n = len(text)
    if not n:
        return 0.0
    counts: dict[str, int] = {}  # what Counter(text) holds, in the same (first-seen) order
    _count_elements(counts, text)
    if n <= _TERM_TABLE_MAX:
        return -sum(map(_ENTROPY_TERMS[n].__getitem__, counts.values()))
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def is_card(text: str) -> bool:
    digits = only_digits(text)
    if not (13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1):
        return False
    groups = [len(g) for g in _CARD_SEPARATOR.split(text)]
    # Printed cards group digits in fours (Amex: 4-6-5); other groupings are other numbers.
    if len(groups) > 1 and groups != [4, 6, 5] and not (all(g == 4 for g in groups[:-1]) and groups[-1] <= 4):
        return False
    if digits.isascii():  # the usual case: the Luhn sum without stdnum's generic alphabet
        return (sum(map(int, digits[-1::-2])) + sum(map(_LUHN_DOUBLED.__getitem__, digits[-2::-2]))) % 10 == 0
    return _luhn.is_valid(digits)


_LUHN_DOUBLED = {str(d): sum(divmod(2 * d, 10)) for d in range(10)}
"""A digit's Luhn value when doubled (as ``stdnum.luhn.checksum`` computes it)."""


def is_iban(text: str) -> bool:
    return _iban.is_valid(text)


def is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return text.count(":") >= 2 and len(text) >= 6


def is_ipv4(text: str) -> bool:
    """What ``ipaddress.IPv4Address(text)`` accepts (four ASCII decimal octets of 0-255, no
    leading zeros), without its exceptions: ~10x cheaper on the candidates the scanner sends."""
    parts = text.split(".")
    if len(parts) != 4:
        return False
    for part in parts:
        if not (part.isascii() and part.isdigit()) or len(part) > 3 or (part[0] == "0" and part != "0"):
            return False
        if int(part) > 255:
            return False
    return True


def is_phone(text: str) -> bool:
    digits = only_digits(text)
    if not 7 <= len(digits) <= 15 or len(set(digits)) < 3:
        return False
    if text.startswith("+") or "(" in text:
        return True
    # Without a country code or area-code brackets: one kind of separator, 10-11 digits
    # (a national number), so dates, versions and ID numbers are not taken for phones.
    separators = {ch for ch in text if not ch.isdigit()}
    return len(separators) == 1 and 10 <= len(digits) <= 11


def is_jwt(text: str) -> bool:
    head = text.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
    except (ValueError, TypeError):
        return False
    return decoded.lstrip().startswith(b"{")


def is_basic_credential(text: str) -> bool:
    # Punctuation right after the credential may have been taken in: try without it too.
    return any(_decodes_to_user_pass(candidate) for candidate in {text, text.rstrip("+/=")})


def _decodes_to_user_pass(text: str) -> bool:
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (ValueError, TypeError):
        return False
    return b":" in decoded and len(decoded) >= 3


def is_bearer_token(text: str) -> bool:
    return len(text) >= 16 or any(ch.isdigit() for ch in text)


def is_assigned_secret(text: str) -> bool:
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


def is_b64_blob(text: str) -> bool:
    core = text.rstrip("=")
    if len(core) < 32:
        return False
    if core.isascii():  # always, for the blob detector's matches: the three tests in C
        if core.lower() == core or core.upper() == core or _ASCII_DIGIT.search(core) is None:
            return False
    elif not (
        any(ch.isdigit() for ch in core) and any(ch.isupper() for ch in core) and any(ch.islower() for ch in core)
    ):
        return False
    return shannon_entropy(core[:256]) >= 4.0


def is_hex_blob(text: str) -> bool:
    return any(ch.isdigit() for ch in text) and any(ch.isalpha() for ch in text) and shannon_entropy(text[:256]) >= 3.0


def checked(validator: Callable[[str], bool]) -> Validator:
    def check(text: str) -> bool:
        try:
            return bool(validator(text))
        except Exception:  # noqa: BLE001 - a checksum library must never break redaction
            return False

    return check


def lower(text: str) -> str:
    return text.lower()


is_us_ssn = checked(_us_ssn.is_valid)
"""US SSN: issued-range rules only (an SSN has no check digit)."""
is_br_cpf = checked(_br_cpf.is_valid)
is_in_aadhaar = checked(_in_aadhaar.is_valid)
is_es_dni = checked(_es_dni.is_valid)
is_it_codice_fiscale = checked(_it_cf.is_valid)
