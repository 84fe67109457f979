"""``toolwatch demo``: the daemon, three real MCP servers and three simulated agents, live.

Everything runs in this process on loopback: the daemon (OTLP receivers, detectors, SQLite store,
/metrics, API), a signature-checking webhook inbox, the notes/mail/web MCP servers over streamable
HTTP, and agents whose instrumented MCP sessions export spans over OTLP/HTTP. After a learning
period the demo stages an exfiltration, a volume spike, a rug-pull and a prompt injection, and
prints each alert as the daemon raises it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the daemon with real MCP servers and simulated agents, and stage attacks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data-dir", default="./toolwatch-demo-data", help="where the demo's store goes (default ./toolwatch-demo-data)")
    p.add_argument("--rounds", type=int, default=10, help="learning rounds before the attacks (default 10, at least 3)")
    p.add_argument("--spike-calls", type=int, default=300, help="calls in the volume spike (default 300)")
    p.add_argument("--keep-running", action="store_true", help="keep the daemon up after the summary")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.rounds < 3:
        print("toolwatch demo: --rounds must be at least 3 (the detectors need something to learn)", file=sys.stderr)
        return 2
    if args.spike_calls < 50:
        print("toolwatch demo: --spike-calls must be at least 50 to make a spike", file=sys.stderr)
        return 2
    from .run import run_demo  # heavy (daemon, MCP servers): only when the demo runs

    try:
        asyncio.run(
            run_demo(Path(args.data_dir), rounds=args.rounds, spike_calls=args.spike_calls, keep_running=args.keep_running)
        )
    except KeyboardInterrupt:
        return 130
    return 0
