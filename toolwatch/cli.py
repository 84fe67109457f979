"""The ``toolwatch`` command line (subcommands are added by their owners)."""

from __future__ import annotations

import argparse

from toolwatch.instrumentation.proxy.cli import add_proxy_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolwatch", description="Observe and guard AI agents' MCP tool calls.")
    subparsers = parser.add_subparsers(dest="command_name", required=True)
    add_proxy_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
