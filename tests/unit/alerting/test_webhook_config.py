"""Webhook config: routes, rate limits and retry knobs load from YAML; every mistake names its key."""

from __future__ import annotations

import pytest

from toolwatch.collector.config import ConfigError, load_config


def load(tmp_path, text):
    p = tmp_path / "tw.yaml"
    p.write_text(text)
    return load_config(str(p), environ={})


def test_named_receivers_with_routes_formats_and_limits(tmp_path):
    cfg = load(
        tmp_path,
        """
webhooks:
  - name: secops
    url: https://hooks.example/tw
    format: alertmanager
    min_severity: high
    detectors: [exfiltration, rugpull]
    agents: ["prod-*"]
    rate_limit_per_min: 30
    rate_limit_burst: 5
    group_by: [agent]
    backoff_base_s: 0.5
    backoff_cap_s: 60
    max_age_s: 3600
  - name: chat
    url: https://hooks.slack.example/T/B/X
    format: slack
    agents: billing
""",
    )
    sec, chat = cfg.webhooks
    assert (sec.name, sec.format, sec.detectors, sec.agents) == ("secops", "alertmanager", ["exfiltration", "rugpull"], ["prod-*"])
    assert (sec.rate_limit_per_min, sec.rate_limit_burst, sec.backoff_base_s, sec.backoff_cap_s, sec.max_age_s) == (30, 5, 0.5, 60, 3600)
    assert sec.group_by == ["agent"] and chat.group_by == []
    assert chat.format == "slack" and chat.agents == ["billing"] and chat.detectors == []


@pytest.mark.parametrize(
    "entry, needle",
    [
        ("format: teams", "webhooks[0].format"),
        ("detectors: 3", "webhooks[0].detectors"),
        ("detectors: [ok, '']", "webhooks[0].detectors"),
        ("agents: {a: 1}", "webhooks[0].agents"),
        ("rate_limit_per_min: -1", "webhooks[0].rate_limit_per_min"),
        ("rate_limit_per_min: lots", "webhooks[0].rate_limit_per_min"),
        ("rate_limit_burst: 0", "webhooks[0].rate_limit_burst"),
        ("backoff_base_s: 0", "webhooks[0].backoff_base_s"),
        ("backoff_cap_s: 0.5", "webhooks[0].backoff_cap_s"),
        ("max_age_s: 0", "webhooks[0].max_age_s"),
        ("min_severity: urgent", "webhooks[0].min_severity"),
        ("retries: 3", "retries"),
        ("group_by: [agent, colour]", "webhooks[0].group_by"),
    ],
)
def test_bad_webhook_setting_names_the_field(tmp_path, entry, needle):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, f"webhooks:\n  - url: http://127.0.0.1:9/hook\n    {entry}\n")
    assert needle in str(err.value)
