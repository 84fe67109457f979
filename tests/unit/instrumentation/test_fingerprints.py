"""Fingerprints follow a value from one server's result into another server's arguments."""

from __future__ import annotations

import json

import pytest
from redaction_samples import SAMPLES

from toolwatch.instrumentation.fingerprint import FINGERPRINT_HEX_DIGITS, key_from_text
from toolwatch.instrumentation.redact import Redactor

KEY = b"deployment-key-for-tests"


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_same_secret_same_fingerprint_in_result_and_arguments(kind: str) -> None:
    text, secret, _ = SAMPLES[kind]
    agent_a, agent_b = Redactor(KEY), Redactor(KEY)  # two processes of one deployment
    result = agent_a.scan_result(
        {"content": [{"type": "text", "text": f"Here is what you asked for:\n{text}\nRegards"}], "isError": False}
    )
    args = agent_b.redact({"to": "ops", "body": f"forwarding\n{text}"})
    assert set(result.fingerprints) & set(args.fingerprints), kind
    assert secret not in json.dumps(args.value)
    assert secret not in json.dumps(result.span_attributes()) + json.dumps(args.span_attributes())


def test_fingerprint_ignores_formatting_of_the_same_value() -> None:
    r = Redactor(KEY)
    spaced = r.redact("card 4539 1488 0343 6467").fingerprints
    dashed = r.redact("card 4539-1488-0343-6467").fingerprints
    compact = r.redact({"card": 4539148803436467}).fingerprints
    assert spaced == dashed == compact
    assert r.redact("Alice@Example.COM").fingerprints == r.redact("alice@example.com").fingerprints


def test_keyword_value_matches_the_same_value_in_text() -> None:
    r = Redactor(KEY)
    in_args = r.redact({"password": "hunter2x"}).fingerprints
    in_result = r.scan_result([{"type": "text", "text": "db password: hunter2x"}]).fingerprints
    assert in_args == in_result


def test_different_values_and_different_keys_give_different_fingerprints() -> None:
    r = Redactor(KEY)
    assert r.redact("a@example.com").fingerprints != r.redact("b@example.com").fingerprints
    assert Redactor(b"other").redact("a@example.com").fingerprints != r.redact("a@example.com").fingerprints


def test_fingerprint_format_is_truncated_hex() -> None:
    (fp,) = Redactor(KEY).redact("a@example.com").fingerprints
    assert len(fp) == FINGERPRINT_HEX_DIGITS
    int(fp, 16)


def test_key_from_text() -> None:
    assert key_from_text("00ff" * 8) == bytes.fromhex("00ff" * 8)
    assert key_from_text("short-passphrase") == b"short-passphrase"
    with pytest.raises(ValueError, match="TOOLWATCH_FINGERPRINT_KEY"):
        key_from_text("   ")


def test_fingerprint_is_the_documented_hmac_sha256() -> None:
    import hashlib
    import hmac as std_hmac

    from toolwatch.instrumentation.fingerprint import Fingerprinter

    key = b"deployment-key"
    for value in ("4539148803436467", "alice@example.com", "\ud800 lone surrogate", ""):
        expected = std_hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:16]
        assert Fingerprinter(key)(value) == expected
