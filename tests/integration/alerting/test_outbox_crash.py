"""Acceptance: SIGKILL a real `toolwatch run` with undelivered alerts while the receiver is down;
after restart and recovery every alert is delivered exactly once (by idempotency key), signed."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sys

import requests
import yaml
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from helpers.procs import Proc, free_port, wait_until
from helpers.spans import emit_call, provider
from helpers.webhook_receiver import WebhookReceiver

SECRET = "crash-test-secret"
TOOLS = ["send_mail", "upload", "http_post", "run_shell", "write_file"]


def test_sigkill_with_undelivered_alerts_loses_nothing_and_duplicates_nothing(tmp_path):
    http_port, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    with WebhookReceiver() as hook:
        hook.set_mode("fail")
        cfg = {
            "otlp_http": f"127.0.0.1:{http_port}",
            "otlp_grpc": "off",
            "otlp_processes": 0,  # about the outbox: no OTLP worker process to start and outlive a SIGKILL
            "listen": f"127.0.0.1:{api_port}",
            "data_dir": str(tmp_path / "data"),
            "webhook_secret": SECRET,
            "log_level": "warning",
            "webhooks": [{"name": "ops", "url": hook.url, "detectors": ["new_tool"], "backoff_base_s": 0.05, "backoff_cap_s": 0.2, "timeout_s": 2}],
            "pipeline": {"batch_max_delay_ms": 20},
            "detectors": {"new_tool": {"min_calls": 1, "severity": "high"}},
        }
        (tmp_path / "tw.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [sys.executable, "-m", "toolwatch.cli", "run", "--config", str(tmp_path / "tw.yaml")]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = tmp_path / "daemon.log"

        def ready() -> bool:
            return requests.get(api + "/readyz", timeout=1).status_code == 200

        def alerts() -> list[dict]:
            return requests.get(api + "/api/v1/alerts?detector=new_tool", timeout=2).json()["alerts"]

        first = Proc(cmd, log, env=env).start()
        try:
            wait_until(ready, 30, "the daemon to be ready", first.proc, log)
            tp = provider(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces"))
            emit_call(tp, agent="coder", server="fs", tool="read_file")
            for tool in TOOLS:
                emit_call(tp, agent="coder", server="net", tool=tool)
            tp.shutdown()

            def all_tried_and_failed() -> list[dict]:
                got = alerts()
                if len(got) != len(TOOLS):
                    return []
                for a in got:
                    (dl,) = requests.get(f"{api}/api/v1/alerts/{a['id']}", timeout=2).json()["deliveries"]
                    if dl["state"] != "pending" or dl["attempts"] < 1:
                        return []
                return got

            stored = wait_until(all_tried_and_failed, 30, "5 alerts with failed deliveries", first.proc, log)
            assert hook.received == [] and hook.state.attempts >= len(TOOLS)
        finally:
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
        assert first.proc.returncode == -signal.SIGKILL

        hook.set_mode("ok")
        with Proc(cmd, log, env=env) as second:
            wait_until(ready, 30, "the restarted daemon to be ready", second.proc, log)
            got = hook.wait_for(len(TOOLS), timeout=30)

            def all_delivered() -> bool:
                return all(
                    requests.get(f"{api}/api/v1/alerts/{a['id']}", timeout=2).json()["deliveries"][0]["state"] == "delivered"
                    for a in stored
                )

            wait_until(all_delivered, 15, "the outbox to record every delivery", second.proc, log)
            # Still exactly one delivery per alert once the outbox is empty.
            got = hook.received
            metrics = requests.get(api + "/metrics", timeout=2).text
        assert 'toolwatch_webhook_outbox_depth{receiver="ops"} 0.0' in metrics
    keys = [r.headers["Idempotency-Key"] for r in got]
    assert sorted(keys) == sorted(a["id"] for a in stored), "every alert delivered, none twice"
    for r in got:
        ts = r.headers["X-Toolwatch-Timestamp"]
        mac = hmac.new(SECRET.encode(), ts.encode() + b"." + r.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest("v1=" + mac, r.headers["X-Toolwatch-Signature"])
        assert json.loads(r.body)["alert"]["id"] == r.headers["Idempotency-Key"]
    assert sorted(json.loads(r.body)["alert"]["finding"]["tool"] for r in got) == sorted(TOOLS)
