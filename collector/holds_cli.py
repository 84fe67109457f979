"""``toolwatch holds list|approve|deny``: decide calls an enforcing proxy holds for approval."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from datetime import datetime, timezone
from typing import Any, TextIO

from .admin_cli import ApiClient, ApiError, _client_args


def _print_holds(holds: list[dict[str, Any]], out: TextIO) -> None:
    if not holds:
        print("no holds", file=out)
        return
    for h in holds:
        until = datetime.fromtimestamp(h["expires_at"], tz=timezone.utc).strftime("%H:%M:%SZ")
        print(f"{h['id']}  {h['status']:<9}  {h['agent_id']:<16}  {h['server']}/{h['tool']:<24}  until {until}  "
              f"{h['reason'][:80]}\n    arguments (redacted): {h['arguments'][:200]}", file=out)


def cmd_holds(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    client = ApiClient(args.url, args.token)
    try:
        if args.holds_command == "list":
            data = client.request("GET", "/api/v1/holds", {"status": None if args.all else "pending"})
            if args.json:
                json.dump(data, out, indent=2, sort_keys=True)
                print(file=out)
            else:
                _print_holds(data["holds"], out)
        else:
            hold = client.request("POST", f"/api/v1/holds/{urllib.parse.quote(args.id, safe='')}/{args.holds_command}")
            print(f"{hold['status']} {hold['id']} ({hold['server']}/{hold['tool']} for {hold['agent_id']})", file=out)
    except ApiError as exc:
        print(f"toolwatch: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``holds`` to the ``toolwatch`` parser."""
    holds = sub.add_parser("holds", help="approve or deny tool calls held by an enforcing proxy",
                           description="List, approve or deny tool calls an enforcing proxy holds for a human.")
    hsub = holds.add_subparsers(dest="holds_command", metavar="ACTION", required=True)
    p = hsub.add_parser("list", help="list pending holds", description="List held calls (pending unless --all).")
    _client_args(p)
    p.add_argument("--all", action="store_true", help="also list decided and timed-out holds")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    for verb, text in (("approve", "let the held call proceed"), ("deny", "refuse the held call")):
        p = hsub.add_parser(verb, help=text, description=f"{verb.capitalize()} a held call: {text}.")
        _client_args(p)
        p.add_argument("id", help="hold id (from 'toolwatch holds list' or the webhook)")
    holds.set_defaults(func=cmd_holds)
