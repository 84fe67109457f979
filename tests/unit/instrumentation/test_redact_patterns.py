"""Per-kind detection: each supported kind is found, and its near-miss look-alikes are not."""

from __future__ import annotations

import json

import pytest
from redaction_samples import SAMPLES

from toolwatch.instrumentation.scanner import find_hits
from toolwatch.instrumentation.redact import Redactor

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(KEY)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
@pytest.mark.parametrize("template", ["{}", "before {} after", "x\n{}\ny", '{{"field": "{}"}}', "({}).", "'{}'"])
def test_each_kind_is_redacted_in_context(redactor: Redactor, kind: str, template: str) -> None:
    text, secret, label = SAMPLES[kind]
    result = redactor.redact({"note": template.format(text)})
    assert secret not in json.dumps(result.value)
    assert label in result.labels
    assert result.counts[label] >= 1
    assert result.fingerprints


@pytest.mark.parametrize(
    "text, placeholder",
    [
        ("key AKIAIOSFODNN7EXAMPLE here", "<secret:aws_access_key>"),
        ("mail bob@example.com now", "<email>"),
        ("card 4539 1488 0343 6467 ok", "<card>"),
        ("ip 10.0.0.1 up", "<ip>"),
        ("iban GB82WEST12345698765432", "<iban>"),
        ("ssn 536-90-4399", "<national_id>"),
        ("call +1 415 555 0132", "<phone>"),
        ("password: hunter22", "password: <secret:password>"),
    ],
)
def test_typed_placeholders(redactor: Redactor, text: str, placeholder: str) -> None:
    assert placeholder in redactor.redact(text).value


@pytest.mark.parametrize(
    "text",
    [
        "4539148803436468",  # 16 digits failing Luhn: not a card
        "order 1234567812345678 shipped",  # Luhn fails
        "Please reset your password before Friday.",  # the word is not a secret
        "The password field is required",
        "password: ${DB_PASSWORD}",  # a reference, not a value
        "token expiry is configurable",
        "GB82WEST12345698765433",  # IBAN with a wrong mod-97 check
        "54362315A",  # DNI with a wrong letter
        "390.533.447-06",  # CPF with wrong check digits
        "000-12-3456",  # SSN area 000 is never issued
        "version 1.2.3 released on 2024-05-01 at 12:30:45",
        "999.1.2.3 is not an address",
        "meeting at 10:30, room 4",
        "the quick brown fox jumps over the lazy dog",
        "see README.md and docs/index.md",
        "sk-short",
        "AKIA1234",  # too short to be an access key id
        "my-awesome-project-name-is-quite-long-indeed",  # long but not random
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",  # long but no entropy
        "Basic authentication is disabled",
        "Bearer tokens expire",
    ],
)
def test_near_misses_are_left_alone(redactor: Redactor, text: str) -> None:
    result = redactor.redact(text)
    assert result.value == text, result.labels
    assert not result.fingerprints


def test_iban_failing_mod97_is_not_an_iban(redactor: Redactor) -> None:
    # The digits after the country code may still pass Luhn by chance (1 in 10): only assert
    # that no IBAN is claimed.
    assert "iban" not in redactor.redact("DE89 3704 0044 0532 0130 01").labels
    assert "iban" in redactor.redact("DE89 3704 0044 0532 0130 00").labels


def test_random_sixteen_digit_numbers_failing_luhn_are_not_cards(redactor: Redactor) -> None:
    import random

    rng = random.Random(7)
    checked = 0
    while checked < 200:
        digits = str(rng.randrange(10**15, 10**16))
        total = sum(int(d) if i % 2 == 0 else sum(divmod(int(d) * 2, 10)) for i, d in enumerate(reversed(digits)))
        if total % 10 == 0:
            continue  # passes Luhn: a card number by definition
        checked += 1
        assert "card" not in redactor.redact(f"ref {digits}").labels


def test_url_is_kept_but_its_password_is_not(redactor: Redactor) -> None:
    result = redactor.redact("connect to postgres://admin:Tr0ub4dor3xq@db.example.com:5432/prod now")
    assert result.value == "connect to postgres://admin:<secret:url_password>@db.example.com:5432/prod now"
    assert "url" in result.labels and "secret" in result.labels
    assert "db.example.com" in result.destinations


def test_destinations_name_hosts_urls_and_mail_domains(redactor: Redactor) -> None:
    result = redactor.redact({"to": "Eve@Exfil.Example.NET", "body": "see https://paste.example.com/raw/x?y=1"})
    assert "exfil.example.net" in result.destinations
    assert "paste.example.com" in result.destinations
    assert "https://paste.example.com" in result.destinations
    assert "url" in result.labels


def test_paths_are_labelled_not_redacted(redactor: Redactor) -> None:
    result = redactor.redact({"path": "/home/alice/.ssh/id_rsa", "win": "C:\\Users\\bob\\notes.txt"})
    assert result.value == {"path": "/home/alice/.ssh/id_rsa", "win": "C:\\Users\\bob\\notes.txt"}
    assert result.counts["path"] == 2


def test_find_hits_reports_spans_left_to_right() -> None:
    text = "a@b.example x 10.0.0.1 y AKIAIOSFODNN7EXAMPLE"
    hits = find_hits(text)
    assert [h.detector.name for h in hits] == ["email", "ipv4", "aws_access_key"]
    assert [text[h.start : h.end] for h in hits] == ["a@b.example", "10.0.0.1", "AKIAIOSFODNN7EXAMPLE"]
    assert hits[0].host == "b.example"


def test_rejected_candidate_leaves_room_for_later_detectors() -> None:
    # `4111 1111 1111` looks like an Aadhaar number but fails its checksum; the card behind it wins.
    text = "4539 1488 0343 6467"
    assert [h.detector.name for h in find_hits(text)] == ["card"]


def test_ipv6_forms() -> None:
    for text in ("fe80::1ff:fe23:4567:890a", "2001:db8::1", "::ffff:1:2"):
        assert [h.detector.label for h in find_hits(f"addr {text} ok")] == ["ip"], text
    for text in ("[2001:db8::1]:443", "2001:db8:85a3::8a2e:370:7334: refused"):
        assert [h.detector.label for h in find_hits(text)] == ["ip"], text
    assert find_hits("time 12:30:45 and a::b") == []


@pytest.mark.parametrize(
    "text",
    ["4539 1488 0343 6467 12/27", "4539 1488 0343 6467 0", "card 4539-1488-0343-6467 cvv 123", "2341 2341 2346 0"],
)
def test_numbers_next_to_a_card_or_id_do_not_hide_it(redactor: Redactor, text: str) -> None:
    value = redactor.redact(text).value
    assert "4539" not in value and "2341 2341" not in value


def test_hits_from_different_scanners_come_back_ordered_and_apart() -> None:
    # A base64 blob (upper-case anchor) before a card (digit anchor) before an IP: three scanners.
    text = "blob dGhpcyBpcyBhIHNlY3JldCBibG9iIQ9xK2pLmN4oP7qR card 4539 1488 0343 6467 ip 10.0.0.1"
    hits = find_hits(text)
    starts = [h.start for h in hits]
    assert starts == sorted(starts)
    assert all(a.end <= b.start for a, b in zip(hits, hits[1:], strict=False))
    assert [h.detector.label for h in hits] == ["high_entropy", "card", "ip"]
