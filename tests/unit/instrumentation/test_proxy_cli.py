"""``toolwatch proxy`` argument handling: errors name the flag and what to do."""

from __future__ import annotations

import argparse

import pytest
from toolwatch.instrumentation.proxy.cli import parse_args, run_proxy

from toolwatch.cli import build_parser


def problem(capsys, argv: list[str]) -> tuple[int, str]:
    code = run_proxy(parse_args(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "needle"), [
    (["--", "srv"], "--agent-id is required"),
    (["--agent-id", "a"], "give the server command after `--`"),
    (["--agent-id", "a", "--listen", "127.0.0.1:9000"], "needs both --listen HOST:PORT and --upstream URL"),
    (["--agent-id", "a", "--listen", "127.0.0.1:9000", "--upstream", "ftp://x/mcp"], "must be an http(s) URL"),
    (["--agent-id", "a", "--listen", "127.0.0.1:9000", "--upstream", "http://x/mcp", "--", "srv"], "not both"),
    (["--agent-id", "a", "--max-message-bytes", "0", "--", "srv"], "--max-message-bytes must be positive"),
])
def test_invalid_invocations_exit_2_with_a_clear_message(capsys, monkeypatch, argv, needle):
    monkeypatch.delenv("TOOLWATCH_AGENT_ID", raising=False)
    code, err = problem(capsys, argv)
    assert code == 2 and needle in err


def test_listen_must_be_host_port(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--agent-id", "a", "--listen", "nowhere", "--upstream", "http://x/mcp"])
    assert "--listen expects HOST:PORT" in capsys.readouterr().err


def test_server_command_keeps_its_own_flags():
    args = parse_args(["--agent-id", "a", "--", "npx", "-y", "server", "--agent-id", "inner"])
    run_proxy_args = argparse.Namespace(**vars(args))
    assert run_proxy_args.command == ["--", "npx", "-y", "server", "--agent-id", "inner"]
    assert args.agent_id == "a"


def test_toolwatch_cli_has_the_proxy_subcommand():
    args = build_parser().parse_args(["proxy", "--agent-id", "x", "--", "srv"])
    assert args.func is run_proxy and args.agent_id == "x"


@pytest.mark.parametrize("upstream", ["http://h.example/mcp", "https://h.example/mcp", "http://127.0.0.1:8123/x",
                                      "https://[::1]:9443/mcp"])
@pytest.mark.parametrize("names", [[], ["--agent-name", "N", "--server-name", "S", "--service-name", "svc",
                                        "--otlp-endpoint", "http://127.0.0.1:4318"]])
def test_the_proxy_builds_the_worker_config_the_cli_built(upstream, names):
    """``HttpProxy`` makes the span worker's ``WorkerConfig`` from its own fields: what cli.py built before."""
    from urllib.parse import urlsplit

    from toolwatch.instrumentation.proxy.http import HttpProxy
    from toolwatch.instrumentation.proxy.tracker import ProxyStats
    from toolwatch.instrumentation.proxy.worker import WorkerConfig, WorkerOptions

    args = parse_args(["--agent-id", "a", *names, "--listen", "127.0.0.1:1", "--upstream", upstream])
    parts = urlsplit(args.upstream)  # cli.span_worker as of 3026c2a
    before = WorkerConfig(
        agent_id=args.agent_id, agent_name=args.agent_name or "", server_name=args.server_name or "",
        server_address=parts.hostname or "", server_port=parts.port or (443 if parts.scheme == "https" else 80),
        service_name=args.service_name, otlp_endpoint=args.otlp_endpoint)
    proxy = HttpProxy(args.upstream, stats=ProxyStats(), agent_id=args.agent_id, agent_name=args.agent_name or "",
                      server_name=args.server_name or "",
                      worker=WorkerOptions(service_name=args.service_name, otlp_endpoint=args.otlp_endpoint))
    assert proxy.worker is not None and proxy.worker.config == before
