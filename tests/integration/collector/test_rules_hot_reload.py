"""A broken rule file never stops the daemon: it keeps the last good rules and says why."""

from __future__ import annotations

import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from helpers.daemon import DaemonThread, make_config
from helpers.spans import emit_call, provider

GOOD = """
- rule: deploy_tool_used
  desc: Someone deployed.
  condition: tool = deploy
  output: "%agent_id deployed via %server/%tool"
  priority: warning
  samples:
    should_fire: [{tool: deploy, server: ci}]
    should_not_fire: [{tool: build, server: ci}]
"""
BROKEN = """
- rule: deploy_tool_used
  desc: Someone deployed.
  condition: tool = = deploy
  output: x
  priority: warning
"""


def _bump(path, text):
    path.write_text(text)
    st = path.stat()
    import os

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_broken_rule_file_keeps_last_good_rules(tmp_path):
    rules = tmp_path / "ops.rules.yaml"
    rules.write_text(GOOD)
    cfg = make_config(tmp_path, otlp_processes=0)
    cfg.detectors = {"rules": {"files": [str(rules)]}}
    with DaemonThread(cfg) as d:
        watcher = d.daemon.rules_watcher
        loaded = d.metric("toolwatch_rules_loaded")
        assert loaded >= 1
        _bump(rules, BROKEN)
        assert d.call(watcher.check()) is True
        assert "ops.rules.yaml:4: rule 'deploy_tool_used'" in watcher.last_error
        assert d.metric("toolwatch_rules_reloads_total", {"outcome": "error"}) == 1
        assert d.metric("toolwatch_rules_loaded") == loaded
        # The last good rule still fires on live traffic.
        tp = provider(OTLPSpanExporter(endpoint=d.otlp_http_url))
        emit_call(tp, agent="ops", server="ci", tool="deploy")
        tp.shutdown()
        d.drain()
        deadline = time.time() + 5
        while time.time() < deadline and not d.daemon.store.list_alerts(detector="rules"):
            time.sleep(0.05)
        assert any("deployed" in a.finding["reason"] for a in d.daemon.store.list_alerts(detector="rules"))
        # Fixed file: reloaded.
        _bump(rules, GOOD.replace("deploy_tool_used", "deploy_tool_used_v2"))
        assert d.call(watcher.check()) is True
        assert watcher.last_error == ""
        assert d.metric("toolwatch_rules_reloads_total", {"outcome": "ok"}) == 1
