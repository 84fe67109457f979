"""``toolwatch`` command line. Each subcommand builds its components here and nowhere else."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Callable, Sequence

from toolwatch import __version__

RUN_EPILOG = """\
Every option can also be set in the YAML config file (same name, underscores) and by an
environment variable: TOOLWATCH_CONFIG, TOOLWATCH_OTLP_HTTP, TOOLWATCH_OTLP_GRPC, TOOLWATCH_LISTEN,
TOOLWATCH_DATA_DIR, TOOLWATCH_WEBHOOK (comma-separated), TOOLWATCH_WEBHOOK_SECRET,
TOOLWATCH_API_TOKEN, TOOLWATCH_LOG_LEVEL, TOOLWATCH_KAFKA_BOOTSTRAP, TOOLWATCH_KAFKA_TOPIC,
TOOLWATCH_KAFKA_GROUP_ID, TOOLWATCH_KAFKA_DEAD_LETTER_TOPIC. Precedence: defaults < file < environment < flags.
Use 'off' as an address to disable a receiver. See docs/configuration.md.
"""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the collector daemon",
        description="Run the toolwatch daemon: OTLP receivers -> detectors -> alerts (metrics, webhooks, log).",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML config file")
    p.add_argument("--otlp-http", metavar="HOST:PORT", help="OTLP/HTTP receiver address (default 127.0.0.1:4318)")
    p.add_argument("--otlp-grpc", metavar="HOST:PORT", help="OTLP/gRPC receiver address (default 127.0.0.1:4317)")
    p.add_argument("--listen", metavar="HOST:PORT", help="HTTP API and /metrics address (default 127.0.0.1:9464)")
    p.add_argument("--data-dir", metavar="DIR", help="where the SQLite store lives (default ./toolwatch-data)")
    p.add_argument("--webhook", metavar="URL", action="append", help="send alerts to this URL (repeatable)")
    p.add_argument("--webhook-secret", metavar="SECRET", help="HMAC key for webhook signatures")
    p.add_argument("--api-token", metavar="TOKEN", help="require 'Authorization: Bearer TOKEN' on /api/*")
    p.add_argument("--allow-remote", action="store_true", default=None, help="allow binding non-loopback addresses")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity (default info)")
    p.add_argument(
        "--kafka-bootstrap", metavar="HOST:PORT[,...]", help="consume OTLP spans from Kafka at these brokers (enables kafka:)"
    )
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from toolwatch.collector.config import ConfigError, load_config
    from toolwatch.collector.daemon import Daemon

    overrides = {
        "otlp_http": args.otlp_http,
        "otlp_grpc": args.otlp_grpc,
        "listen": args.listen,
        "data_dir": args.data_dir,
        "webhooks": args.webhook,
        "webhook_secret": args.webhook_secret,
        "api_token": args.api_token,
        "allow_remote": args.allow_remote,
        "log_level": args.log_level,
        "kafka_bootstrap": args.kafka_bootstrap,
    }
    try:
        cfg = load_config(args.config, overrides=overrides)
        _setup_logging(cfg.log_level)
        daemon = Daemon(cfg)
    except ConfigError as exc:
        print(f"toolwatch: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(daemon.run_forever())
    except OSError as exc:
        print(f"toolwatch: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser(extra: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolwatch", description="Runtime observability and anomaly detection for AI agents' tool calls."
    )
    parser.add_argument("--version", action="version", version=f"toolwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_run_parser(sub)
    for add in extra:
        add(sub)
    return parser


def _subcommands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Optional subcommands live next to their code; each module adds its own parser."""
    adders: list[Callable[[argparse._SubParsersAction], None]] = []
    return adders


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(_subcommands())
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
