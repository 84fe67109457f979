"""Every ``TOOLWATCH_*`` environment variable the daemon reads, declared once."""

from __future__ import annotations

from typing import Final

CONFIG: Final = "TOOLWATCH_CONFIG"
OTLP_HTTP: Final = "TOOLWATCH_OTLP_HTTP"
OTLP_GRPC: Final = "TOOLWATCH_OTLP_GRPC"
LISTEN: Final = "TOOLWATCH_LISTEN"
DATA_DIR: Final = "TOOLWATCH_DATA_DIR"
WEBHOOK: Final = "TOOLWATCH_WEBHOOK"
"""Comma-separated webhook URLs."""
WEBHOOK_SECRET: Final = "TOOLWATCH_WEBHOOK_SECRET"
API_TOKEN: Final = "TOOLWATCH_API_TOKEN"
LOG_LEVEL: Final = "TOOLWATCH_LOG_LEVEL"
FINGERPRINT_KEY: Final = "TOOLWATCH_FINGERPRINT_KEY"
RECEIVER_TOKEN: Final = "TOOLWATCH_RECEIVER_TOKEN"
"""Bearer token OTLP clients must send (config ``receiver_token``)."""
TLS_CERT_FILE: Final = "TOOLWATCH_TLS_CERT_FILE"
TLS_KEY_FILE: Final = "TOOLWATCH_TLS_KEY_FILE"

# Maps config field -> environment variable, for the simple scalar settings.
SCALAR_FIELDS: Final = {
    "otlp_http": OTLP_HTTP,
    "otlp_grpc": OTLP_GRPC,
    "listen": LISTEN,
    "data_dir": DATA_DIR,
    "webhook_secret": WEBHOOK_SECRET,
    "fingerprint_key": FINGERPRINT_KEY,
    "api_token": API_TOKEN,
    "log_level": LOG_LEVEL,
    "receiver_token": RECEIVER_TOKEN,
    "tls_cert_file": TLS_CERT_FILE,
    "tls_key_file": TLS_KEY_FILE,
}
API_URL: Final = "TOOLWATCH_API_URL"
"""Base URL of a running daemon's API, for the ``alerts`` / ``approvals`` commands."""

KAFKA_BOOTSTRAP: Final = "TOOLWATCH_KAFKA_BOOTSTRAP"
"""Comma-separated ``HOST:PORT`` list; setting it enables the Kafka receiver."""
KAFKA_TOPIC: Final = "TOOLWATCH_KAFKA_TOPIC"
KAFKA_GROUP_ID: Final = "TOOLWATCH_KAFKA_GROUP_ID"
KAFKA_DEAD_LETTER_TOPIC: Final = "TOOLWATCH_KAFKA_DEAD_LETTER_TOPIC"

# Maps ``kafka.<field>`` -> environment variable.
KAFKA_FIELDS: Final = {
    "bootstrap_servers": KAFKA_BOOTSTRAP,
    "topic": KAFKA_TOPIC,
    "group_id": KAFKA_GROUP_ID,
    "dead_letter_topic": KAFKA_DEAD_LETTER_TOPIC,
}
