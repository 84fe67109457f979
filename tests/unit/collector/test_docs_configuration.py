"""docs/configuration.md stays true to the code: every setting and every detector is documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from toolwatch.collector.config import AlertsConfig, Config, PipelineConfig, WebhookConfig
from toolwatch.collector.detector_registry import FACTORIES, SETTINGS_ONLY

DOC_DIR = Path(__file__).resolve().parents[3] / "docs"
DOC = (DOC_DIR / "configuration.md").read_text()


def test_every_setting_is_documented():
    missing = []
    for cls, prefix in ((Config, ""), (PipelineConfig, "pipeline."), (AlertsConfig, "alerts.")):
        for f in dataclasses.fields(cls):
            if f.name in ("source", "webhooks", "pipeline", "alerts", "detectors", "kafka"):
                continue
            if f"`{prefix}{f.name}`" not in DOC and f"{prefix}{f.name}`" not in DOC:
                missing.append(prefix + f.name)
    for f in dataclasses.fields(WebhookConfig):
        if f"`{f.name}`" not in DOC:
            missing.append("webhooks[]." + f.name)
    assert missing == []


def test_kafka_settings_are_documented():
    from toolwatch.collector.config import KafkaConfig

    kafka_doc = (DOC_DIR / "kafka.md").read_text()
    assert [f.name for f in dataclasses.fields(KafkaConfig) if f.name not in DOC + kafka_doc] == []


def test_every_detector_is_documented():
    assert [n for n in list(FACTORIES) + list(SETTINGS_ONLY) if f"| `{n}` |" not in DOC] == []
