"""TLS material for the OTLP receivers: one pair of PEM files, loaded the way each server wants."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert_file: str
    key_file: str

    def ssl_context(self) -> ssl.SSLContext:
        """Server-side context for aiohttp (TLS 1.2 or newer)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def pem_pair(self) -> tuple[bytes, bytes]:
        """(private key, certificate chain) as gRPC's ``ssl_server_credentials`` takes them."""
        return Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes()


def tls_files(cfg: "Config") -> TlsFiles | None:
    """The configured pair, or None for plain text (the default, on loopback)."""
    if cfg.tls_cert_file and cfg.tls_key_file:
        return TlsFiles(cfg.tls_cert_file, cfg.tls_key_file)
    return None
