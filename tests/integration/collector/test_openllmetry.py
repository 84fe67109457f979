"""A real OpenLLMetry-instrumented MCP client and server, exporting to a running daemon.

opentelemetry-instrumentation-mcp 0.62 patches only mcp<2, so the client runs in its own virtual
environment (.venv-openllmetry, made by ``make openllmetry-venv``; made here if missing). The
daemon must recognise the tool calls and the tools/list, and the raw arguments and results that
OpenLLMetry always sends must appear nowhere in what the daemon stores, logs, exposes or alerts.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from helpers.daemon import DaemonThread, make_config
from helpers.webhook_receiver import WebhookReceiver
from toolwatch.collector.config import WebhookConfig

ROOT = Path(__file__).resolve().parents[3]
VENV = ROOT / ".venv-openllmetry"
STAMP = VENV / ".installed"
APP = Path(__file__).with_name("openllmetry_app")
SECRET_ARG = "zq7-SECRET-ARG-4f1c"
SECRET_RESULT = "zq7-SECRET-RESULT-9b2e"


@pytest.fixture(scope="session")
def openllmetry_python() -> Path:
    if not STAMP.exists():
        proc = subprocess.run(["make", "-C", str(ROOT), "openllmetry-venv"], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(
                "could not build .venv-openllmetry (mcp<2 + opentelemetry-instrumentation-mcp) with "
                f"'make openllmetry-venv'; pip said:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
    return VENV / "bin" / "python"


@dataclass
class Red:
    value: object
    labels: tuple[str, ...] = ("customer",)
    fingerprints: tuple[str, ...] = ("fp-abc",)
    destinations: tuple[str, ...] = ()
    sketch: tuple[int, ...] = ()


def test_openllmetry_client_calls_are_recognised_and_raw_content_never_kept(tmp_path, openllmetry_python, caplog):
    seen_by_redactor: list[str] = []

    def redactor(text: str) -> Red:
        seen_by_redactor.append(text)
        return Red({"redacted": True})

    caplog.set_level(logging.DEBUG)
    with WebhookReceiver() as hook:
        cfg = make_config(tmp_path, webhooks=[WebhookConfig(url=hook.url, secret="k")])
        cfg.detectors = {"new_tool": {"min_calls": 3}}
        with DaemonThread(cfg, redact_args=redactor) as d:
            proc = subprocess.run(
                [str(openllmetry_python), str(APP / "client.py"), d.otlp_http_url, SECRET_ARG, SECRET_RESULT],
                capture_output=True, text=True, timeout=60,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            d.drain()
            labels = {"agent": "ollm-agent", "server": "", "tool": "lookup_customer"}
            assert d.metric("toolwatch_tool_calls_total", labels) == 3
            assert d.metric("toolwatch_tool_calls_total", {**labels, "tool": "export_all"}) == 1
            assert d.metric("toolwatch_tool_listings_total", {"server": "unknown"}) == 1
            # The raw arguments did reach the daemon, and went through the redactor, unwrapped:
            assert json.loads(seen_by_redactor[0]) == {"query": SECRET_ARG}
            alerts = hook.wait_for(1)
            exposed = [
                requests.get(d.api_url + "/metrics", timeout=5).text,
                requests.get(d.api_url + "/api/v1/alerts", timeout=5).text,
            ]
            alert_ids = [a["id"] for a in json.loads(exposed[1])["alerts"]]
            exposed += [requests.get(f"{d.api_url}/api/v1/alerts/{i}", timeout=5).text for i in alert_ids]
            assert any("export_all" in e for e in exposed)  # the finding is about the new tool
        stored = b"".join(p.read_bytes() for p in Path(cfg.data_dir).iterdir() if p.is_file())
    assert b"export_all" in stored  # the store is not empty: the alert is in it
    logged = caplog.text + proc.stdout + proc.stderr
    for secret in (SECRET_ARG, SECRET_RESULT):
        assert secret.encode() not in stored
        assert secret not in logged
        assert all(secret not in e for e in exposed)
        assert all(secret.encode() not in a.body for a in alerts)
