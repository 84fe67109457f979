"""Keyed fingerprints: follow a value across calls and servers without ever shipping it.

A fingerprint is HMAC-SHA256(key, normalised value), first 16 hex digits (64 bits). The key is
per deployment: every agent and proxy of one deployment shares it, so equal values give equal
fingerprints everywhere, while nobody without the key can test guesses (a phone number has too
little entropy for a plain hash to hide it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import warnings

__all__ = ["FINGERPRINT_KEY_ENV", "FINGERPRINT_HEX_DIGITS", "Fingerprinter", "key_from_text", "key_from_env"]

FINGERPRINT_KEY_ENV = "TOOLWATCH_FINGERPRINT_KEY"
FINGERPRINT_HEX_DIGITS = 16


try:  # OpenSSL's one-shot HMAC without ``hmac.digest``'s Python wrapper (~2 µs a fingerprint)
    from _hashlib import hmac_digest as _hmac_digest
except ImportError:  # a Python built without OpenSSL's hashlib: the same digest, a little slower
    _hmac_digest = hmac.digest


def key_from_text(text: str) -> bytes:
    """A key from its configured text: hex if it is hex of 16+ bytes, else the UTF-8 text itself."""
    stripped = text.strip()
    if len(stripped) >= 32 and len(stripped) % 2 == 0:
        try:
            return bytes.fromhex(stripped)
        except ValueError:
            pass
    if not stripped:
        raise ValueError(f"{FINGERPRINT_KEY_ENV} is empty: set it to 32+ hex digits or a passphrase")
    return stripped.encode("utf-8", "surrogatepass")


def key_from_env(environ: dict[str, str] | None = None) -> bytes:
    """The deployment key from ``TOOLWATCH_FINGERPRINT_KEY``, or a random one with a warning."""
    env = os.environ if environ is None else environ
    text = env.get(FINGERPRINT_KEY_ENV, "")
    if text.strip():
        return key_from_text(text)
    warnings.warn(
        f"{FINGERPRINT_KEY_ENV} is not set: using a random key, so fingerprints will not match "
        "across processes or servers. Set it to the same 32+ hex digits on every agent and proxy.",
        RuntimeWarning,
        stacklevel=2,
    )
    return secrets.token_bytes(32)


class Fingerprinter:
    """HMAC-SHA256 of normalised values under one key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or not key:
            raise ValueError("fingerprint key must be non-empty bytes (see TOOLWATCH_FINGERPRINT_KEY)")
        self._key = bytes(key)

    def __call__(self, value: str) -> str:
        # One-shot HMAC (OpenSSL, no Python-level HMAC object): the same digest, a few µs less.
        return _hmac_digest(self._key, value.encode("utf-8", "surrogatepass"), "sha256").hex()[:FINGERPRINT_HEX_DIGITS]

    def derive(self, purpose: str) -> bytes:
        """A sub-key for another use (the sketch seeds), so the key itself is used for one thing."""
        return hmac.new(self._key, b"toolwatch:" + purpose.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "Fingerprinter(key=<hidden>)"
