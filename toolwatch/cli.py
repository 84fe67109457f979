"""``toolwatch`` command line. Each subcommand builds its components here and nowhere else."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
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
    p.add_argument(
        "--otlp-processes", metavar="N|auto",
        help="serve each OTLP receiver (HTTP, gRPC) in N worker processes of its own (0: in the daemon; default "
        "auto: 1 if this process can use at least 2 CPUs, else 0)",
    )
    p.add_argument(
        "--cpu-affinity", metavar="auto|off|CPUS",
        help="keep the daemon's own threads on these CPUs (e.g. 3 or 2-3); default auto: on the highest usable CPU "
        "when it has worker processes and at least 2 CPUs; off: the OS places them",
    )
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
        "otlp_processes": args.otlp_processes,
        "cpu_affinity": args.cpu_affinity,
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
        # The stop is done and saved: a Ctrl-C from here on (a second press, landing while the
        # interpreter exits) has nothing left to interrupt, and used to kill the exit with SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except OSError as exc:
        print(f"toolwatch: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # A Ctrl-C once the daemon's own handlers are gone again (its stop is done, asyncio.run is
        # closing): nothing is left to save, so no traceback, just the usual exit status.
        print("toolwatch: interrupted", file=sys.stderr)
        return 130
    return 0


def add_replay_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="run recorded spans or tool calls through the detectors",
        description=(
            "Replay recorded traffic through the same normaliser, detectors and alert router as the daemon, "
            "as fast as they go, and print a summary of the findings. Each FILE holds one JSON object per "
            "line: an OTLP/JSON ExportTraceServiceRequest (the OpenTelemetry Collector file exporter's "
            "format) or one tool call (see docs/replay.md). Bad lines are reported as FILE:LINE and skipped."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="JSON-lines file(s) to replay, in order")
    p.add_argument("--config", metavar="FILE", help="YAML config file (detectors, pipeline, alerts, webhooks)")
    p.add_argument(
        "--data-dir", metavar="DIR",
        help="store for alerts and detector state (default: a temporary directory, removed afterwards); "
        "an existing directory's detector state is the starting baseline",
    )
    p.add_argument("--webhook", metavar="URL", action="append", help="also send the alerts to this URL (repeatable)")
    p.add_argument("--webhook-secret", metavar="SECRET", help="HMAC key for webhook signatures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="warning")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from toolwatch.collector.config import ConfigError, load_config
    from toolwatch.collector.daemon import build_detectors
    from toolwatch.collector.replay import replay_files

    _setup_logging(args.log_level)
    paths = [Path(f) for f in args.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"toolwatch replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="toolwatch-replay-") as tmp:
        overrides = {
            "data_dir": args.data_dir or tmp,  # never the config's data_dir: a running daemon owns it
            "webhooks": args.webhook,
            "webhook_secret": args.webhook_secret,
            "otlp_http": "off",
            "otlp_grpc": "off",
        }
        try:
            cfg = load_config(args.config, overrides=overrides)
            detectors = build_detectors(cfg)
        except ConfigError as exc:
            print(f"toolwatch replay: configuration error: {exc}", file=sys.stderr)
            return 2
        if cfg.webhooks and not all(h.secret for h in cfg.webhooks):
            print("toolwatch replay: --webhook needs --webhook-secret (or webhook_secret in the config)", file=sys.stderr)
            return 2
        result = replay_files(paths, cfg, detectors, progress=not args.no_progress)
    print(result.summary())
    return 0


def build_parser(extra: Sequence[Callable[[argparse._SubParsersAction], None]] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolwatch", description="Runtime observability and anomaly detection for AI agents' tool calls."
    )
    parser.add_argument("--version", action="version", version=f"toolwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_run_parser(sub)
    for add in _subcommands() if extra is None else extra:
        add(sub)
    return parser


def add_rules_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rules", help="work with rule files", description="Work with toolwatch rule files.")
    rsub = p.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    t = rsub.add_parser(
        "test",
        help="check rule files against their samples and recorded traces",
        description=(
            "Load rule files (the shipped defaults when none are given), run each rule's positive and "
            "negative samples (inline, or in a sibling NAME.samples.yaml), and optionally run the rules over "
            "recorded traces (JSON lines of tool calls). Exit 0: all samples pass; 1: a sample failed; "
            "2: a rule or trace file is broken."
        ),
    )
    t.add_argument("files", nargs="*", metavar="FILE", help="rule files, in load order")
    t.add_argument("--traces", nargs="+", default=[], metavar="FILE", help="JSON-lines traces to evaluate")
    t.set_defaults(func=cmd_rules_test)


def cmd_rules_test(args: argparse.Namespace) -> int:
    from toolwatch.collector.rules_cli import run_rules_test

    return run_rules_test(args.files, args.traces)


def _subcommands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Optional subcommands live next to their code; each module adds its own parser."""
    from toolwatch.collector import admin_cli, holds_cli

    from toolwatch.instrumentation.proxy.cli import add_proxy_parser

    from toolwatch.demo.cli import add_demo_parser

    adders: list[Callable[[argparse._SubParsersAction], None]] = [
        add_demo_parser,
        add_proxy_parser,
        add_rules_parser,
        admin_cli.add_parsers,
        holds_cli.add_parsers,
        add_replay_parser,
    ]
    return adders


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
