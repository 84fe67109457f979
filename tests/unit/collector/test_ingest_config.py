"""Receiver settings: token and TLS from YAML/env, errors that name the key."""

from __future__ import annotations

import pytest

from toolwatch.collector import envvars
from toolwatch.collector.config import ConfigError, load_config


def test_token_and_tls_come_from_the_environment(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    env = {envvars.RECEIVER_TOKEN: "tok", envvars.TLS_CERT_FILE: str(cert), envvars.TLS_KEY_FILE: str(key)}
    cfg = load_config(environ=env)
    assert (cfg.receiver_token, cfg.tls_cert_file, cfg.tls_key_file) == ("tok", str(cert), str(key))


def test_half_a_tls_pair_is_refused(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file"):
        load_config(environ={envvars.TLS_CERT_FILE: str(cert)})


def test_missing_tls_file_is_named(tmp_path):
    env = {envvars.TLS_CERT_FILE: str(tmp_path / "nope.pem"), envvars.TLS_KEY_FILE: str(tmp_path / "nope.key")}
    with pytest.raises(ConfigError, match="tls_cert_file: .*nope.pem"):
        load_config(environ=env)


def test_retry_after_is_bounded(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("retry_after_s: 0\n")
    with pytest.raises(ConfigError, match="retry_after_s"):
        load_config(str(path), environ={})
