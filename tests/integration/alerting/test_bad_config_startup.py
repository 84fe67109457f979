"""A malformed webhook config stops `toolwatch run` at start-up: exit code 2, the field named on stderr.

Every field's message is covered in-process by tests/unit/alerting/test_webhook_config.py; these run the
real command for a few."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    ("webhooks:\n  - url: http://127.0.0.1:9/hook\n    rate_limit_burst: 0\n", "webhooks[0].rate_limit_burst"),
    ("webhooks:\n  - url: http://127.0.0.1:9/a\n  - url: http://127.0.0.1:9/b\n    format: teams\n", "webhooks[1].format"),
]


@pytest.mark.parametrize("text, field", CASES)
def test_bad_webhook_config_is_a_clear_startup_error(tmp_path, text, field):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data_dir: {tmp_path / 'data'}\nlisten: 127.0.0.1:0\notlp_http: 'off'\notlp_grpc: 'off'\n" + text)
    out = subprocess.run(
        [sys.executable, "-m", "toolwatch.cli", "run", "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("toolwatch: configuration error: ") and field in out.stderr, out.stderr
    assert not (tmp_path / "data").exists(), "nothing may start before the config is valid"
