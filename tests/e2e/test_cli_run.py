"""``toolwatch run`` as an operator runs it: help, config errors, restart with state intact."""

from __future__ import annotations

import os
import time

import pytest
import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from helpers.procs import ToolwatchProcess, child_pids, process_gone, run_cli, wait_until
from helpers.spans import emit_call, provider


def test_help_documents_every_option():
    out = run_cli("run", "--help")
    assert out.returncode == 0
    for flag in ("--config", "--otlp-http", "--otlp-grpc", "--listen", "--data-dir", "--webhook", "--api-token", "TOOLWATCH_",
                 "--otlp-processes N|auto"):
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
        deadline = time.time() + 10
        alerts = []
        while time.time() < deadline and not alerts:
            alerts = requests.get(tw.api_url + "/api/v1/alerts?detector=new_tool", timeout=5).json()["alerts"]
            time.sleep(0.1)
        assert [a["finding"]["tool"] for a in alerts] == ["send"]


def test_a_port_in_use_is_named_and_what_started_is_stopped(tmp_path):
    """The OTLP/gRPC port is taken: the start says which setting's port, and the OTLP/HTTP worker
    process started just before is stopped (it was once left to the interpreter's exit)."""
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


def _stop_the_group(tmp_path, *signals) -> tuple[int, str, list[int], int]:
    """``toolwatch run`` with an OTLP worker process in a process group of its own; 5 calls are
    acknowledged and wait in its queue when ``signals`` go to the whole group, as systemd's
    control-group stop (SIGTERM) or a terminal's Ctrl-C (SIGINT) send them. Returns the exit code,
    the output, the children it had, and the calls the saved state holds."""
    import subprocess

    from helpers.otlp_build import add_span, request
    from toolwatch.collector.store import Store
    from toolwatch.instrumentation import semconv as sc

    data = tmp_path / "data"
    cfg = tmp_path / "tw.yaml"
    cfg.write_text("detectors:\n  new_tool:\n    min_calls: 1\n"
                   "pipeline:\n  batch_max_delay_ms: 600000\n  batch_max_size: 100000\n")
    tw = ToolwatchProcess(data, "--config", str(cfg), "--otlp-processes", "1", "--otlp-grpc", "off",
                          env={"TOOLWATCH_FINGERPRINT_KEY": "k" * 32})
    original = subprocess.Popen

    def in_own_group(*a, **kw):
        return original(*a, start_new_session=True, **kw)

    subprocess.Popen = in_own_group
    try:
        tw.start(60)
    finally:
        subprocess.Popen = original
    try:
        req = request("svc")
        for i in range(5):
            add_span(req, {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: f"tool{i}",
                           sc.GEN_AI_AGENT_ID: "a"}, start_ns=time.time_ns())
        r = requests.post(tw.otlp_http_url, data=req.SerializeToString(), timeout=10,
                          headers={"Content-Type": "application/x-protobuf"})
        assert r.status_code == 200
        children = child_pids(tw.proc.pid)
        assert children
        for sig in signals:
            os.killpg(tw.proc.pid, sig)
            time.sleep(0.02)
        code = tw.proc.wait(30)
    finally:
        tw.__exit__()
    store = Store(data / "toolwatch.db")
    try:
        calls = store.load_state("new_tool")["agents"]["a"]["calls"]
    finally:
        store.close()
    return code, tw.output(), children, calls


def test_sigterm_to_the_whole_group_drains_saves_and_leaves_no_child(tmp_path):
    code, out, children, calls = _stop_the_group(tmp_path, __import__("signal").SIGTERM)
    assert code == 0, out
    assert calls == 5, out
    wait_until(lambda: all(process_gone(p) for p in children), 10, "every child process to exit")
    assert "SIGTERM received: stopping" in out and "Traceback" not in out, out


def test_ctrl_c_twice_still_drains_saves_and_exits_without_a_traceback(tmp_path):
    import signal

    code, out, children, calls = _stop_the_group(tmp_path, signal.SIGINT, signal.SIGINT)
    assert code in (0, 130), out  # 130: the second Ctrl-C came after the stop had finished
    assert calls == 5, out
    wait_until(lambda: all(process_gone(p) for p in children), 10, "every child process to exit")
    assert "Traceback" not in out, out


def test_a_ctrl_c_after_the_stop_exits_130_without_a_traceback(tmp_path):
    """Once ``run_forever`` has given asyncio.run its Ctrl-C handler back, a further Ctrl-C raises
    KeyboardInterrupt out of asyncio.run; the CLI printed its traceback. The script sends the two
    Ctrl-Cs (real signals) right when the daemon's stop is done, then runs the CLI as installed."""
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "from toolwatch import cli\n"
        "from toolwatch.collector.daemon import Daemon\n"
        "run = Daemon.run_forever\n"
        "async def run_then_ctrl_c_twice(self):\n"
        "    self.request_stop()\n"
        "    await run(self)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "Daemon.run_forever = run_then_ctrl_c_twice\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, "run", "--data-dir", str(tmp_path / "d"), "--otlp-http",
                          "127.0.0.1:0", "--otlp-grpc", "off", "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 130, out.stderr
    assert "toolwatch: interrupted" in out.stderr and "Traceback" not in out.stderr, out.stderr


def _received_http_spans(tw: ToolwatchProcess, n: int) -> None:
    deadline = time.time() + 10
    text = ""
    while time.time() < deadline:
        text = requests.get(tw.api_url + "/metrics", timeout=5).text
        if f'toolwatch_spans_received_total{{receiver="otlp_http"}} {float(n)}' in text:
            return
        time.sleep(0.1)
    raise AssertionError(f"{n} OTLP/HTTP spans not counted:\n" + "\n".join(
        line for line in text.splitlines() if "spans_received" in line))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="auto runs a worker only with 2+ usable CPUs")
def test_by_default_otlp_http_runs_in_one_worker_process_and_the_choice_is_logged(tmp_path):
    with ToolwatchProcess(tmp_path / "data") as tw:
        tp = provider(OTLPSpanExporter(endpoint=tw.otlp_http_url))
        for _ in range(2):
            emit_call(tp, agent="a", server="files", tool="read")
        tp.shutdown()
        _received_http_spans(tw, 2)
        assert tw.stop() == 0
    log = tw.output()
    assert "otlp_processes: auto chose 1 (one worker process per OTLP receiver: " in log, log
    assert "/v1/traces in 1 worker processes (pids" in log, log


def test_auto_on_one_usable_cpu_serves_otlp_http_in_the_daemon(tmp_path):
    with ToolwatchProcess(tmp_path / "data", "--otlp-processes", "auto", cpus={min(os.sched_getaffinity(0))}) as tw:
        tp = provider(OTLPSpanExporter(endpoint=tw.otlp_http_url))
        emit_call(tp, agent="a", server="files", tool="read")
        tp.shutdown()
        _received_http_spans(tw, 1)
        assert tw.stop() == 0
    log = tw.output()
    assert "otlp_processes: auto chose 0 (OTLP in the daemon's process: only 1 CPU usable" in log, log
    assert f"OTLP/HTTP receiver on http://127.0.0.1:{tw.http_port}/v1/traces\n" in log, log
    assert "OTLP worker process" not in log and "worker processes (pids" not in log, log


def test_a_bad_otlp_processes_flag_names_the_key_and_the_allowed_values(tmp_path):
    out = run_cli("run", "--otlp-processes", "two", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2
    assert "configuration error: otlp_processes: must be auto" in out.stderr and "0 to 64" in out.stderr, out.stderr
