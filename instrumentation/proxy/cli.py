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
    parser.add_argument("command", nargs=argparse.REMAINDER, help="stdio mode: -- <server command...>")
    parser.set_defaults(func=run_proxy)
    return parser


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
    problem = _validate(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from ..spans import SessionInfo
    from .tracker import CallTracker, ProxyStats

    stats = ProxyStats()
    built: dict[str, Any] = {}

    def build() -> tuple[Any, Any]:
        """Exporter and redactor, built once (after the stdio server is already spawning)."""
        if not built:
            from ..mcp_client import TRACER_NAME, default_redactor, setup_tracing

            built["provider"] = setup_tracing(args.service_name, endpoint=args.otlp_endpoint)
            built["tracer"] = built["provider"].get_tracer(TRACER_NAME)
            built["redactor"] = redactor if redactor is not None else default_redactor()
        return built["tracer"], built["redactor"]

    try:
        if args.listen:
            from .http import serve_http_proxy

            tracer, red = build()
            host, port = args.listen
            return asyncio.run(serve_http_proxy(
                host, port, args.upstream, tracer=tracer, redactor=red, stats=stats,
                agent_id=args.agent_id, agent_name=args.agent_name or "", server_name=args.server_name or "",
                max_message_bytes=args.max_message_bytes,
            ))
        from .stdio import report, run_stdio_proxy

        def make_tracker() -> CallTracker:
            tracer, red = build()
            info = SessionInfo(agent_id=args.agent_id, agent_name=args.agent_name or "",
                               server_name=args.server_name or "", transport="pipe", emitter="proxy")
            return CallTracker(info, tracer, red, stats)

        outcome = asyncio.run(run_stdio_proxy(args.command, make_tracker, max_message_bytes=args.max_message_bytes))
        report(outcome, stats.summary())
        return outcome.exit_code if outcome.exit_code >= 0 else 1
    except KeyboardInterrupt:
        return 130
    finally:
        if "provider" in built:
            built["provider"].shutdown()


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``proxy`` arguments (without the subcommand name), as ``toolwatch proxy`` would."""
    parser = argparse.ArgumentParser(prog="toolwatch")
    add_proxy_parser(parser.add_subparsers(dest="command_name", required=True))
    return parser.parse_args(["proxy", *argv])


def main(argv: list[str] | None = None, *, redactor: Any = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_proxy(args, redactor=redactor)
