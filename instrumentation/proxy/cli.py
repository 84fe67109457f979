"""``toolwatch proxy``: argument parsing and the composition root of the proxy."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any
from urllib.parse import urlsplit

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen expects HOST:PORT (e.g. 127.0.0.1:8100), got {text!r}")
    return host or "127.0.0.1", int(port)


def add_proxy_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``proxy`` subcommand to a ``toolwatch`` argparse subparsers object."""
    parser = subparsers.add_parser(
        "proxy",
        help="transparent MCP proxy that emits a span per tool call",
        description=(
            "Sit between an MCP client and an MCP server, pass every JSON-RPC message through "
            "unchanged, and export one OpenTelemetry span per tools/call and tools/list (arguments "
            "redacted, results only measured). stdio: toolwatch proxy --agent-id X -- <server "
            "command...>; streamable HTTP: toolwatch proxy --agent-id X --listen 127.0.0.1:8100 "
            "--upstream http://host:port/mcp"
        ),
    )
    parser.add_argument("--agent-id", default=os.environ.get("TOOLWATCH_AGENT_ID"),
                        help="agent the calls belong to (env TOOLWATCH_AGENT_ID); required")
    parser.add_argument("--agent-name", default=os.environ.get("TOOLWATCH_AGENT_NAME"), help="display name of the agent")
    parser.add_argument("--server-name", default=None,
                        help="name for the server on spans (default: the name it gives in initialize)")
    parser.add_argument("--otlp-endpoint", default=os.environ.get("TOOLWATCH_OTLP_ENDPOINT"),
                        help="OTLP/HTTP base URL (default: OTEL_EXPORTER_OTLP_* or http://127.0.0.1:4318)")
    parser.add_argument("--service-name", default="toolwatch-proxy",
                        help="resource service.name unless OTEL_SERVICE_NAME is set")
    parser.add_argument("--listen", type=_host_port, default=None, metavar="HOST:PORT",
                        help="streamable HTTP mode: address to listen on")
    parser.add_argument("--upstream", default=None, metavar="URL", help="streamable HTTP mode: the server's MCP URL")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest message that is parsed for spans; larger ones pass through unparsed")
    parser.add_argument("--in-process-spans", action="store_true",
                        help="streamable HTTP mode: build and export spans in the proxy process instead of a "
                             "worker process (for debugging; always so with --enforce)")
    add_enforce_arguments(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="stdio mode: -- <server command...>")
    parser.set_defaults(func=run_proxy)
    return parser


def add_enforce_arguments(parser: argparse.ArgumentParser) -> None:
    """Opt-in enforcement flags (docs/enforcement.md)."""
    g = parser.add_argument_group("enforcement (opt-in; see docs/enforcement.md)")
    g.add_argument("--enforce", action="store_true",
                   help="decide every tools/call before forwarding it: block, hold for approval, hide quarantined tools")
    g.add_argument("--daemon-url", default=os.environ.get("TOOLWATCH_API_URL", "http://127.0.0.1:9464"),
                   help="the toolwatch daemon's API (default http://127.0.0.1:9464 or TOOLWATCH_API_URL)")
    g.add_argument("--daemon-token", default=os.environ.get("TOOLWATCH_API_TOKEN", ""),
                   help="bearer token of the daemon's API (default TOOLWATCH_API_TOKEN)")
    g.add_argument("--fail-closed", action="store_true",
                   help="deny calls while the daemon is unreachable (default: fail open, logged loudly)")
    g.add_argument("--policy", metavar="FILE", default="",
                   help="policy YAML evaluated locally while the daemon is unreachable (instead of the fail mode)")
    g.add_argument("--decision-ttl", type=float, default=2.0, metavar="S", help="cache allow/deny decisions this long")
    g.add_argument("--decision-timeout", type=float, default=0.5, metavar="S",
                   help="a decision slower than this counts as daemon unreachable")
    g.add_argument("--hold-timeout", type=float, default=300.0, metavar="S",
                   help="how long a held call waits for a human")
    g.add_argument("--hold-default", choices=["deny", "allow"], default="deny",
                   help="what a held call gets when nobody decides in time")
    g.add_argument("--quarantine-poll", type=float, default=2.0, metavar="S",
                   help="how often hidden tools are re-checked for approval")


def _enforce_problem(args: argparse.Namespace) -> str | None:
    if not getattr(args, "enforce", False):
        if getattr(args, "fail_closed", False) or getattr(args, "policy", ""):
            return "toolwatch proxy: --fail-closed and --policy only apply with --enforce"
        return None
    parts = urlsplit(args.daemon_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"toolwatch proxy: --daemon-url must be an http(s) URL, got {args.daemon_url!r}"
    for name in ("decision_ttl", "decision_timeout", "hold_timeout", "quarantine_poll"):
        if getattr(args, name) <= 0 and name != "decision_ttl":
            return f"toolwatch proxy: --{name.replace('_', '-')} must be positive"
    if args.decision_ttl < 0:
        return "toolwatch proxy: --decision-ttl must be zero or more"
    return None


def _validate(args: argparse.Namespace) -> str | None:
    command = [c for c in args.command]
    if command and command[0] == "--":
        command = command[1:]
    args.command = command
    if not args.agent_id:
        return "toolwatch proxy: --agent-id is required (or set TOOLWATCH_AGENT_ID)"
    if args.max_message_bytes <= 0:
        return "toolwatch proxy: --max-message-bytes must be positive"
    if args.listen or args.upstream:
        if not (args.listen and args.upstream):
            return "toolwatch proxy: HTTP mode needs both --listen HOST:PORT and --upstream URL"
        if command:
            return "toolwatch proxy: give either a server command (stdio) or --listen/--upstream (HTTP), not both"
        parts = urlsplit(args.upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"toolwatch proxy: --upstream must be an http(s) URL, got {args.upstream!r}"
        return None
    if not command:
        return "toolwatch proxy: give the server command after `--` (stdio) or --listen and --upstream (HTTP)"
    return None


def run_proxy(args: argparse.Namespace, *, redactor: Any = None) -> int:
    """Run the proxy until the client or the server goes away; return the process exit code.

    ``redactor`` defaults to ``Redactor.from_env()``; tests pass their own.
    """
    problem = _validate(args) or _enforce_problem(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from ..spans import SessionInfo
    from .tracker import CallTracker, ProxyStats

    stats = ProxyStats()
    built: dict[str, Any] = {}

    def build() -> tuple[Any, Any]:
        """Exporter and redactor, built once (after the stdio server is already spawning)."""
        if "tracer" not in built:
            from ..mcp_client import TRACER_NAME, default_redactor, setup_tracing

            built["provider"] = setup_tracing(args.service_name, endpoint=args.otlp_endpoint)
            built["tracer"] = built["provider"].get_tracer(TRACER_NAME)
            built["redactor"] = redactor if redactor is not None else default_redactor()
        return built["tracer"], built["redactor"]

    try:
        if args.listen:
            from .http import serve_http_proxy
            from toolwatch.event_loop import run

            host, port = args.listen
            if not (args.enforce or args.in_process_spans or redactor is not None):
                from .worker import WorkerOptions

                return run(serve_http_proxy(
                    host, port, args.upstream, stats=stats, agent_id=args.agent_id,
                    agent_name=args.agent_name or "", server_name=args.server_name or "",
                    max_message_bytes=args.max_message_bytes,
                    worker=WorkerOptions(service_name=args.service_name, otlp_endpoint=args.otlp_endpoint)))
            tracer, red = build()
            http_enforcement = None
            if args.enforce:
                from .enforce_http import HttpEnforcement

                http_enforcement = HttpEnforcement(decision_client(args, built), red)
            return run(serve_http_proxy(
                host, port, args.upstream, tracer=tracer, redactor=red, stats=stats,
                agent_id=args.agent_id, agent_name=args.agent_name or "", server_name=args.server_name or "",
                max_message_bytes=args.max_message_bytes, enforcement=http_enforcement,
            ))
        from .stdio import report, run_stdio_proxy

        def make_tracker() -> CallTracker:
            tracer, red = build()
            info = SessionInfo(agent_id=args.agent_id, agent_name=args.agent_name or "",
                               server_name=args.server_name or "", transport="pipe", emitter="proxy")
            return CallTracker(info, tracer, red, stats)

        factory = enforcer_factory(args, built) if args.enforce else None
        outcome = asyncio.run(run_stdio_proxy(args.command, make_tracker, max_message_bytes=args.max_message_bytes,
                                              enforcer_factory=factory))
        summary = stats.summary()
        if "enforce_stats" in built:
            summary += f"; {built['enforce_stats'].summary()}"
        report(outcome, summary)
        return outcome.exit_code if outcome.exit_code >= 0 else 1
    except KeyboardInterrupt:
        return 130
    finally:
        if "provider" in built:
            built["provider"].shutdown()


def enforcer_factory(args: argparse.Namespace, built: dict[str, Any]) -> Any:
    """Build the ``Enforcer`` once the tracker exists (policy file errors exit before the server starts)."""
    import time

    client = decision_client(args, built)

    def make(tracker: Any, recorder: Any) -> Any:
        from .enforce import Enforcer

        return Enforcer(client, tracker, recorder, built["redactor"], now_ns=time.time_ns)

    return make


def decision_client(args: argparse.Namespace, built: dict[str, Any]) -> Any:
    """The one ``DecisionClient`` of this proxy process (stdio or HTTP), announced on stderr."""
    from .decisions import DecisionClient, EnforceOptions

    options = EnforceOptions(daemon_url=args.daemon_url, token=args.daemon_token, fail_closed=args.fail_closed,
                             policy_file=args.policy, cache_ttl_s=args.decision_ttl, timeout_s=args.decision_timeout,
                             hold_timeout_s=args.hold_timeout, hold_default=args.hold_default,
                             poll_s=args.quarantine_poll)
    client = DecisionClient(options)
    built["enforce_stats"] = client.stats
    mode = "fail-closed" if args.fail_closed else "fail-open"
    print(f"toolwatch proxy: enforcing via {args.daemon_url} ({mode}"
          f"{', local policy ' + args.policy if args.policy else ''})", file=sys.stderr, flush=True)
    return client


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``proxy`` arguments (without the subcommand name), as ``toolwatch proxy`` would."""
    parser = argparse.ArgumentParser(prog="toolwatch")
    add_proxy_parser(parser.add_subparsers(dest="command_name", required=True))
    return parser.parse_args(["proxy", *argv])


def main(argv: list[str] | None = None, *, redactor: Any = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_proxy(args, redactor=redactor)
