"""``toolwatch replay``: a recorded file gives the findings live ingestion gave; bad lines are skipped."""

from __future__ import annotations

import json
import subprocess
import sys

import requests
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from helpers.daemon import DaemonThread, make_config
from helpers.otlp_calls import to_otlp_json
from helpers.spans import emit_call, provider
from helpers.webhook_receiver import WebhookReceiver
from toolwatch.collector.config import Config
from toolwatch.collector.daemon import build_detectors
from toolwatch.collector.replay import replay_files
from toolwatch.collector.store import Store


def recorded_requests():
    """Spans from the OpenTelemetry SDK, grouped into export requests as an exporter sends them."""
    mem = InMemorySpanExporter()
    tp = provider(mem)
    for i in range(40):
        for agent in ("coder", "writer"):
            emit_call(tp, agent=agent, server="files", tool="read_file" if i % 2 else "list_dir", session=f"{agent}{i // 10}")
            if i in (20, 33):
                emit_call(tp, agent=agent, server="web", tool=f"fetch{i}")
    tp.shutdown()
    spans = mem.get_finished_spans()
    return [encode_spans(spans[i : i + 16]) for i in range(0, len(spans), 16)]


def test_replay_gives_the_same_alerts_as_live_ingestion(tmp_path):
    reqs = recorded_requests()
    detectors_cfg = {"new_tool": {"min_calls": 10}}
    cfg = make_config(tmp_path / "live", otlp_processes=0)
    cfg.detectors = detectors_cfg
    with DaemonThread(cfg) as d:
        for req in reqs:
            r = requests.post(d.otlp_http_url, data=req.SerializeToString(),
                              headers={"Content-Type": "application/x-protobuf"}, timeout=5)
            assert r.status_code == 200
        d.drain()
        live = {(a.id, a.agent_id, a.finding["tool"]) for a in d.daemon.store.list_alerts(limit=1000)}
    assert len(live) == 4

    recording = tmp_path / "traces.jsonl"
    recording.write_bytes(b"".join(to_otlp_json(req) + b"\n" for req in reqs))
    rcfg = Config(data_dir=str(tmp_path / "replay"), detectors=detectors_cfg)
    rcfg.validate()
    result = replay_files([recording], rcfg, build_detectors(rcfg), progress=False)
    store = Store(tmp_path / "replay" / "toolwatch.db")
    replayed = {(a.id, a.agent_id, a.finding["tool"]) for a in store.list_alerts(limit=1000)}
    store.close()
    assert replayed == live
    assert result.alerts == 4 and result.spans == sum(len(r.resource_spans[0].scope_spans[0].spans) for r in reqs)
    assert result.bad_lines == 0


def test_cli_skips_bad_lines_reports_them_and_keeps_their_neighbours(tmp_path):
    lines = [json.dumps({"time_ns": 1_000 + i, "agent_id": "a", "tool": "read", "server": "fs"}) for i in range(12)]
    lines.insert(3, "{not json")
    lines.insert(7, json.dumps({"time_ns": "yesterday", "agent_id": "a", "tool": "x"}))
    lines.append(json.dumps({"time_ns": 5_000, "agent_id": "a", "tool": "mail", "server": "smtp"}))
    path = tmp_path / "calls.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "tw.yaml"
    cfg.write_text("detectors:\n  new_tool:\n    min_calls: 10\n")
    with WebhookReceiver() as hook:
        proc = subprocess.run(
            [sys.executable, "-m", "toolwatch.cli", "replay", str(path), "--config", str(cfg),
             "--webhook", hook.url, "--webhook-secret", "k", "--data-dir", str(tmp_path / "d")],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"{path}:4: not valid JSON" in proc.stderr
        assert f"{path}:8: " in proc.stderr and "'time_ns' must be a whole number" in proc.stderr
        assert "13 spans" in proc.stdout and "2 bad line(s)" in proc.stdout
        assert "new_tool" in proc.stdout and "smtp/mail" in proc.stdout
        got = hook.wait_for(1)
        assert json.loads(got[0].body)["alert"]["finding"]["tool"] == "mail"
