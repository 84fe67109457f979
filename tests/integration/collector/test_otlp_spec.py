"""OTLP receivers to spec, against a running daemon: SDK exporters, partial success, retryable
answers under overload and while draining, bearer token, TLS, and bad input among good.

Each runs on the daemon's default (``otlp_processes: auto``: each OTLP receiver in a worker process
where 2+ CPUs are usable) and with both in the daemon's own process (``otlp_processes: 0``)."""

from __future__ import annotations

import json
import time

import grpc
import pytest
import requests
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from helpers.daemon import DaemonThread, make_config
from helpers.gate import Gate
from helpers.otlp_build import add_span, request
from helpers.otlp_grpc import grpc_export as _grpc_export
from helpers.spans import emit_call, provider
from helpers.tls import self_signed
from toolwatch.instrumentation import semconv as sc

PB = {"Content-Type": "application/x-protobuf"}


def _calls_body(n: int, *, bad: int = 0, agent: str = "a1", start_ns: int | None = None) -> bytes:
    req = request("svc")
    now = start_ns or time.time_ns()
    for i in range(n):
        add_span(req, {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: f"tool{i}", sc.GEN_AI_AGENT_ID: agent}, start_ns=now)
    for _ in range(bad):
        add_span(req, {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: "NOTUTF8!!"}, start_ns=now)
    return req.SerializeToString().replace(b"NOTUTF8!!", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7")


@pytest.fixture(params=["default", "in-process"])
def procs(request) -> dict:
    """``make_config`` keyword arguments: the default ``otlp_processes``, or OTLP in the daemon."""
    return {} if request.param == "default" else {"otlp_processes": 0}


def _wait(pred, timeout: float = 10.0) -> bool:
    """Worker processes count the requests they refuse in the daemon a few milliseconds after answering."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _calls(d, agent: str = "a1") -> float:
    return sum(
        s.value
        for m in d.daemon.metrics.registry.collect()
        if m.name == "toolwatch_tool_calls"
        for s in m.samples
        if s.name.endswith("_total") and s.labels["agent"] == agent
    )


def test_sdk_grpc_and_http_exporters_are_both_recognised(tmp_path, procs):
    with DaemonThread(make_config(tmp_path, **procs)) as d:
        for exporter, agent in ((GrpcExporter(endpoint=d.otlp_grpc_target, insecure=True), "via-grpc"), (HttpExporter(endpoint=d.otlp_http_url), "via-http")):
            tp = provider(exporter)
            for _ in range(3):
                emit_call(tp, agent=agent, server="files", tool="read_file")
            tp.shutdown()
        d.drain()
        assert _calls(d, "via-grpc") == 3 and _calls(d, "via-http") == 3
        assert d.metric("toolwatch_spans_received_total", {"receiver": "otlp_grpc"}) == 3


def test_one_bad_span_among_good_ones_is_partial_success_on_http_and_grpc(tmp_path, procs):
    with DaemonThread(make_config(tmp_path, **procs)) as d:
        r = requests.post(d.otlp_http_url, data=_calls_body(4, bad=1, agent="h"), headers=PB, timeout=5)
        assert r.status_code == 200
        resp = ExportTraceServiceResponse.FromString(r.content)
        assert resp.partial_success.rejected_spans == 1 and "UTF-8" in resp.partial_success.error_message
        resp = _grpc_export(d.otlp_grpc_target, _calls_body(4, bad=2, agent="g"))
        assert resp.partial_success.rejected_spans == 2
        d.drain()
        assert _calls(d, "h") == 4 and _calls(d, "g") == 4
        assert d.metric("toolwatch_spans_rejected_total", {"receiver": "otlp_http", "reason": "undecodable"}) == 1
        assert d.metric("toolwatch_spans_received_total", {"receiver": "otlp_grpc"}) == 6


def test_event_time_rejections_are_reported_as_partial_success(tmp_path, procs):
    cfg = make_config(tmp_path, **procs)
    cfg.pipeline.future_policy = "reject"
    with DaemonThread(cfg) as d:
        far = time.time_ns() + 86400 * 10**9
        body = _calls_body(2, start_ns=far)
        r = requests.post(d.otlp_http_url, data=body, headers=PB, timeout=5)
        resp = ExportTraceServiceResponse.FromString(r.content)
        assert r.status_code == 200 and resp.partial_success.rejected_spans == 2
        assert "future" in resp.partial_success.error_message
        assert d.metric("toolwatch_spans_event_time_total", {"action": "rejected", "reason": "future"}) == 2


def test_garbage_never_takes_the_daemon_down(tmp_path, procs):
    with DaemonThread(make_config(tmp_path, **procs)) as d:
        for body, ctype in ((b"\x00\xff" * 100, "application/x-protobuf"), (b"{[", "application/json"), (b"\xff", "application/json")):
            assert requests.post(d.otlp_http_url, data=body, headers={"Content-Type": ctype}, timeout=5).status_code == 400
        with pytest.raises(grpc.RpcError) as err:
            _grpc_export(d.otlp_grpc_target, b"\x0a\x05\xff\xff")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert requests.post(d.otlp_http_url, data=_calls_body(2, agent="after"), headers=PB, timeout=5).status_code == 200
        d.drain()
        assert _calls(d, "after") == 2


def test_overload_answers_429_and_resource_exhausted_with_retry_hints(tmp_path, procs):
    cfg = make_config(tmp_path, retry_after_s=7, **procs)
    cfg.pipeline.batch_max_size = 2
    cfg.pipeline.queue_max_spans = 4
    gate = Gate()
    with DaemonThread(cfg, detectors=[gate]) as d:
        try:
            assert requests.post(d.otlp_http_url, data=_calls_body(2), headers=PB, timeout=5).status_code == 200
            assert gate.entered.wait(5)
            assert requests.post(d.otlp_http_url, data=_calls_body(4), headers=PB, timeout=5).status_code == 200
            r = requests.post(d.otlp_http_url, data=_calls_body(1), headers=PB, timeout=5)
            assert r.status_code == 429 and r.headers["Retry-After"] == "7"
            assert "queue is full" in status_pb2.Status.FromString(r.content).message
            with pytest.raises(grpc.RpcError) as err:
                _grpc_export(d.otlp_grpc_target, _calls_body(1))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = dict(err.value.trailing_metadata())["grpc-status-details-bin"]
            info = error_details_pb2.RetryInfo()
            assert status_pb2.Status.FromString(details).details[0].Unpack(info) and info.retry_delay.seconds == 7
            # Full to the last span: a body is refused before it is decoded (garbage gets 429, not 400).
            r = requests.post(d.otlp_http_url, data=b"\x0a\x05\xff\xff", headers=PB, timeout=5)
            assert r.status_code == 429 and r.headers["Retry-After"] == "7"
            with pytest.raises(grpc.RpcError) as err:
                _grpc_export(d.otlp_grpc_target, b"\x0a\x05\xff\xff")
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for receiver in ("otlp_http", "otlp_grpc"):
                assert _wait(lambda: d.metric("toolwatch_requests_rejected_total",
                                              {"receiver": receiver, "reason": "queue_full"}) == 2), receiver
                assert d.metric("toolwatch_requests_rejected_total", {"receiver": receiver, "reason": "bad_protobuf"}) == 0
        finally:
            gate.release.set()
        d.drain()
        assert d.metric("toolwatch_spans_received_total", {"receiver": "otlp_http"}) == 6


def test_draining_daemon_answers_503_and_unavailable(tmp_path, procs):
    with DaemonThread(make_config(tmp_path, **procs)) as d:
        d.call(d.daemon.pipeline.shutdown())
        r = requests.post(d.otlp_http_url, data=_calls_body(1), headers=PB, timeout=5)
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        with pytest.raises(grpc.RpcError) as err:
            _grpc_export(d.otlp_grpc_target, _calls_body(1))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bearer_token_is_required_on_both_receivers(tmp_path, procs):
    with DaemonThread(make_config(tmp_path, receiver_token="t0ken", **procs)) as d:
        assert requests.post(d.otlp_http_url, data=_calls_body(1), headers=PB, timeout=5).status_code == 401
        ok = requests.post(d.otlp_http_url, data=_calls_body(1, agent="tok"), headers={**PB, "Authorization": "Bearer t0ken"}, timeout=5)
        assert ok.status_code == 200
        with pytest.raises(grpc.RpcError) as err:
            _grpc_export(d.otlp_grpc_target, _calls_body(1), metadata=(("authorization", "Bearer wrong"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        tp = provider(GrpcExporter(endpoint=d.otlp_grpc_target, insecure=True, headers={"authorization": "Bearer t0ken"}))
        emit_call(tp, agent="tok", server="s", tool="t")
        tp.shutdown()
        d.drain()
        assert _calls(d, "tok") == 2


def test_tls_on_both_receivers_with_a_self_signed_certificate(tmp_path, procs):
    cert, key = self_signed(tmp_path)
    with DaemonThread(make_config(tmp_path, tls_cert_file=str(cert), tls_key_file=str(key), **procs)) as d:
        url = d.otlp_http_url.replace("http://", "https://")
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(url, data=_calls_body(1), headers=PB, timeout=5)  # untrusted without the cert
        assert requests.post(url, data=_calls_body(1, agent="tls"), headers=PB, timeout=5, verify=str(cert)).status_code == 200
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        _grpc_export(d.otlp_grpc_target, _calls_body(1, agent="tls"), creds=creds)
        d.drain()
        assert _calls(d, "tls") == 2


def test_json_partial_success_is_json(tmp_path, procs):
    with DaemonThread(make_config(tmp_path, **procs)) as d:
        spans = [
            {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "00000000000000a1", "name": "x", "startTimeUnixNano": str(time.time_ns()),
             "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "execute_tool"}},
                            {"key": "gen_ai.tool.name", "value": {"stringValue": "ok"}}]},
            {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "zz", "name": "bad"},
        ]
        body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})
        r = requests.post(d.otlp_http_url, data=body, headers={"Content-Type": "application/json"}, timeout=5)
        assert r.status_code == 200 and r.json()["partialSuccess"]["rejectedSpans"] == "1"


def test_fuzzed_bodies_never_take_the_daemon_down_and_good_input_still_counts(tmp_path, procs):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    with DaemonThread(make_config(tmp_path, **procs)) as d:
        good = _calls_body(3, agent="fz")

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.data())
        def post_mutant(data):
            body = bytearray(good)
            for _ in range(data.draw(st.integers(1, 6))):
                body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
            ctype = data.draw(st.sampled_from(["application/x-protobuf", "application/json"]))
            r = requests.post(d.otlp_http_url, data=bytes(body), headers={"Content-Type": ctype}, timeout=5)
            assert r.status_code in (200, 400), r.text
            try:
                _grpc_export(d.otlp_grpc_target, bytes(body))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT

        post_mutant()
        d.drain()
        before = _calls(d, "fz")
        assert requests.post(d.otlp_http_url, data=good, headers=PB, timeout=5).status_code == 200
        d.drain()
        assert _calls(d, "fz") == before + 3
        assert requests.get(d.api_url + "/healthz", timeout=5).status_code == 200
