"""``toolwatch run`` as an operator runs it: help, config errors, restart with state intact."""

from __future__ import annotations

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from helpers.procs import ToolwatchProcess, run_cli
from helpers.spans import emit_call, provider


def test_help_documents_every_option():
    out = run_cli("run", "--help")
    assert out.returncode == 0
    for flag in ("--config", "--otlp-http", "--otlp-grpc", "--listen", "--data-dir", "--webhook", "--api-token", "TOOLWATCH_"):
        assert flag in out.stdout, flag
    assert run_cli("--help").returncode == 0


def test_bad_config_fails_fast_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("webhooks:\n  - url: not-a-url\n")
    out = run_cli("run", "--config", str(bad), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2
    assert "webhooks[0].url" in out.stderr


def test_bad_flag_value_is_named(tmp_path):
    out = run_cli("run", "--listen", "nope", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2 and "listen" in out.stderr


def test_state_and_alerts_survive_restart(tmp_path):
    data = tmp_path / "data"
    cfg = tmp_path / "tw.yaml"
    cfg.write_text("detectors:\n  new_tool:\n    min_calls: 3\npipeline:\n  batch_max_delay_ms: 20\n")
    with ToolwatchProcess(data, "--config", str(cfg)) as tw:
        tp = provider(OTLPSpanExporter(endpoint=tw.otlp_http_url))
        for _ in range(3):
            emit_call(tp, agent="a", server="files", tool="read")
        tp.shutdown()
        assert tw.stop() == 0  # SIGTERM drains the queue and saves detector state
    with ToolwatchProcess(data, "--config", str(cfg)) as tw:
        tp = provider(OTLPSpanExporter(endpoint=tw.otlp_http_url))
        emit_call(tp, agent="a", server="files", tool="read")  # known: learned before the restart
        emit_call(tp, agent="a", server="mail", tool="send")  # new after the learning period
        tp.shutdown()
        import time

        deadline = time.time() + 10
        alerts = []
        while time.time() < deadline and not alerts:
            alerts = requests.get(tw.api_url + "/api/v1/alerts?detector=new_tool", timeout=5).json()["alerts"]
            time.sleep(0.1)
        assert [a["finding"]["tool"] for a in alerts] == ["send"]


def test_a_port_in_use_is_named_and_what_started_is_stopped(tmp_path):
    """The OTLP/gRPC port is taken: grpcio raises RuntimeError (not the OSError the CLI reports),
    and the OTLP/HTTP worker process started just before was left to the interpreter's exit."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        out = run_cli("run", "--data-dir", str(tmp_path / "d"), "--otlp-http", "127.0.0.1:0", "--listen", "127.0.0.1:0",
                      "--otlp-processes", "1", "--otlp-grpc", f"127.0.0.1:{port}", timeout=60)
    finally:
        taken.close()
    assert out.returncode == 1, out.stderr
    assert f"toolwatch: cannot start: otlp_grpc: cannot listen on 127.0.0.1:{port}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "OTLP worker process" in out.stderr and "stopped (exit code 0)" in out.stderr, out.stderr
