"""The shipped Prometheus rules are valid and pass their promtool unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[3] / "compose" / "prometheus" / "rules"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run 'make services' (installs Debian's prometheus package)")
    return path


def test_rules_file_is_valid():
    out = subprocess.run([promtool(), "check", "rules", "toolwatch.rules.yml"], cwd=RULES, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 8 rules found" in out.stdout


def test_promtool_rule_unit_tests_pass():
    out = subprocess.run(
        [promtool(), "test", "rules", "toolwatch.rules.test.yml"], cwd=RULES, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rule_tests_catch_a_broken_rule(tmp_path):
    """Guard against a test file that cannot fail: weaken one rule and the suite must go red."""
    rules = (RULES / "toolwatch.rules.yml").read_text()
    broken = rules.replace("toolwatch_pending_approvals > 0", "toolwatch_pending_approvals > 5")
    assert broken != rules
    (tmp_path / "toolwatch.rules.yml").write_text(broken)
    shutil.copy(RULES / "toolwatch.rules.test.yml", tmp_path)
    out = subprocess.run([promtool(), "test", "rules", "toolwatch.rules.test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "ToolwatchToolDefinitionPendingApproval" in out.stdout + out.stderr
