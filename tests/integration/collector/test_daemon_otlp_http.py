"""The foundation's acceptance: real SDK exporter -> running daemon -> metric + signed webhook."""

from __future__ import annotations

import gzip
import json
import time

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from helpers.daemon import DaemonThread, make_config
from helpers.spans import emit_call, provider
from helpers.webhook_receiver import WebhookReceiver
from toolwatch.collector.config import WebhookConfig
from toolwatch.collector.sinks.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


def _wait(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_sdk_exporter_to_daemon_raises_metric_and_signed_webhook(tmp_path):
    with WebhookReceiver() as hook:
        cfg = make_config(tmp_path, webhooks=[WebhookConfig(url=hook.url, secret="s3cret")])
        cfg.detectors = {"new_tool": {"min_calls": 5}}
        with DaemonThread(cfg) as d:
            tp = provider(OTLPSpanExporter(endpoint=d.otlp_http_url))
            for i in range(6):
                emit_call(tp, agent="coder", server="files", tool="read_file", session=f"s{i % 2}", args={"path": "a.py"})
            emit_call(tp, agent="coder", server="mail", tool="send_mail", args={"to": "<email>"})
            tp.shutdown()
            d.drain()
            assert d.metric("toolwatch_spans_received_total", {"receiver": "otlp_http"}) == 7
            assert d.metric("toolwatch_tool_calls_total", {"agent": "coder", "server": "files", "tool": "read_file"}) == 6
            assert d.metric("toolwatch_findings_total", {"detector": "new_tool", "severity": "medium"}) == 1
            # The webhook pages on >= medium by default; low findings (here exfiltration's read-then-send)
            # stay in the store and the API.
            stored = d.daemon.store.list_alerts()
            pages = [a for a in stored if a.severity not in ("info", "low")]
            assert len(pages) < len(stored)
            got = hook.wait_for(len(pages))
            assert _wait(lambda: all(s["delivered_at"] is not None
                                     for a in pages for s in d.daemon.store.delivery_status(a.id)))
            assert len(hook.received) == len(pages)
            assert all(d.daemon.store.delivery_status(a.id) == [] for a in stored if a not in pages)
            for rec in got:
                assert verify(b"s3cret", rec.headers[TIMESTAMP_HEADER], rec.body, rec.headers[SIGNATURE_HEADER], now=time.time())
            (mine,) = [r for r in got if json.loads(r.body)["alert"]["detector"] == "new_tool"]
            alert = json.loads(mine.body)["alert"]
            assert alert["finding"]["tool"] == "send_mail"
            assert mine.headers["Idempotency-Key"] == alert["id"]
            # The metric is exposed over HTTP too, as Prometheus would scrape it.
            text = requests.get(d.api_url + "/metrics", timeout=5).text
            assert 'toolwatch_alerts_total{detector="new_tool",severity="medium"} 1.0' in text
            api = requests.get(d.api_url + "/api/v1/alerts?detector=new_tool", timeout=5).json()
            assert [a["id"] for a in api["alerts"]] == [alert["id"]]
            assert _wait(lambda: d.daemon.store.delivery_status(alert["id"])[0]["delivered_at"] is not None)


def test_bad_input_is_rejected_with_reason_counted_and_daemon_keeps_serving(tmp_path):
    cfg = make_config(tmp_path, max_body_bytes=64 * 1024)
    with DaemonThread(cfg) as d:
        url = d.otlp_http_url
        # A valid request we can truncate and compress.
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        req = ExportTraceServiceRequest()
        span = req.resource_spans.add().scope_spans.add().spans.add()
        span.name = "tools/call x"
        span.trace_id = b"\x01" * 16
        span.span_id = b"\x02" * 8
        kv = span.attributes.add()
        kv.key, kv.value.string_value = "gen_ai.operation.name", "execute_tool"
        kv = span.attributes.add()
        kv.key, kv.value.string_value = "gen_ai.tool.name", "x"
        good = req.SerializeToString()
        cases = [
            (b"definitely not protobuf \xff\xfe", {"Content-Type": "application/x-protobuf"}, 400, "bad_protobuf"),
            (good[: len(good) // 2], {"Content-Type": "application/x-protobuf"}, 400, "bad_protobuf"),
            (good, {"Content-Type": "text/plain"}, 415, "bad_content_type"),
            (b"{not json", {"Content-Type": "application/json"}, 400, "bad_json"),
            (b"\x00" * (65 * 1024), {"Content-Type": "application/x-protobuf"}, 413, "too_large"),
            (b"garbage", {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, 400, "bad_encoding"),
        ]
        for body, headers, status, reason in cases:
            r = requests.post(url, data=body, headers=headers, timeout=5)
            assert r.status_code == status, (reason, r.status_code, r.content[:200])
            assert r.content, f"{reason}: the rejection must say why"
            # a worker process (the default on 2+ CPUs) counts it in the daemon just after answering
            assert _wait(lambda: d.metric("toolwatch_requests_rejected_total",
                                          {"receiver": "otlp_http", "reason": reason}) >= 1), reason
        # A truncated protobuf may happen to be well-formed; what matters is it's never a 5xx.
        # Still serving: a valid gzip'd request is accepted.
        r = requests.post(
            url,
            data=gzip.compress(good),
            headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
            timeout=5,
        )
        assert r.status_code == 200
        d.drain()
        assert d.metric("toolwatch_spans_received_total", {"receiver": "otlp_http"}) == 1
        assert requests.get(d.api_url + "/healthz", timeout=5).status_code == 200
        assert requests.get(d.api_url + "/readyz", timeout=5).status_code == 200


def test_sdk_grpc_exporter_reaches_daemon(tmp_path):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    with DaemonThread(make_config(tmp_path)) as d:
        exporter = GrpcExporter(endpoint=d.otlp_grpc_target, insecure=True)
        tp = provider(exporter)
        emit_call(tp, agent="a", server="s", tool="t")
        tp.shutdown()
        d.drain()
        assert d.metric("toolwatch_spans_received_total", {"receiver": "otlp_grpc"}) == 1
