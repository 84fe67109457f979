"""``toolwatch alerts …`` and ``toolwatch approvals …``: the alert API from the command line.

These commands talk HTTP to a running daemon (``--url``, default http://127.0.0.1:9464) with the
bearer token from ``--token`` or ``TOOLWATCH_API_TOKEN``. Standard library only, so they work
wherever the daemon's package is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Any, TextIO

from . import envvars

DEFAULT_URL = "http://127.0.0.1:9464"


class ApiError(Exception):
    """The API answered with an error, or could not be reached; the message says what to do."""


class ApiClient:
    def __init__(self, url: str, token: str = "", timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, query: dict[str, Any] | None = None) -> Any:
        q = {k: v for k, v in (query or {}).items() if v not in (None, "")}
        full = self.url + path + ("?" + urllib.parse.urlencode(q) if q else "")
        req = urllib.request.Request(full, method=method, data=b"" if method == "POST" else None)
        req.add_header("Accept", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", "")
            except (ValueError, AttributeError):
                message = ""
            hint = " (pass --token or set TOOLWATCH_API_TOKEN)" if exc.code == 401 else ""
            raise ApiError(f"{method} {path}: HTTP {exc.code}: {message or exc.reason}{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(
                f"cannot reach the toolwatch API at {self.url} ({reason}); is 'toolwatch run' running? "
                f"pass --url or set {envvars.API_URL}"
            ) from None

    def alerts(self, *, limit: int, fetch_all: bool, **filters: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.request("GET", "/api/v1/alerts", {**filters, "limit": limit, "cursor": cursor})
            out += page["alerts"]
            cursor = page.get("next_cursor")
            if not fetch_all or not cursor:
                return out


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _print_alerts(alerts: list[dict[str, Any]], out: TextIO) -> None:
    if not alerts:
        print("no alerts", file=out)
        return
    print(f"{'ID':<24}  {'SEVERITY':<8}  {'STATUS':<6}  {'DETECTOR':<14}  {'AGENT':<16}  {'LAST SEEN':<20}  COUNT  REASON", file=out)
    for a in alerts:
        reason = str(a.get("finding", {}).get("reason", ""))
        print(
            f"{a['id']:<24}  {a['severity']:<8}  {a['status']:<6}  {a['detector']:<14}  {a['agent_id']:<16}  "
            f"{_when(a['last_ns']):<20}  {a['count']:>5}  {reason[:80]}",
            file=out,
        )


def _print_pending(data: dict[str, Any], out: TextIO) -> None:
    pending = data.get("pending", [])
    if not pending:
        print(f"no pending tool-definition changes (detector {data.get('detector', '?')})", file=out)
        return
    for p in pending:
        where = f"{p.get('server', '')}/{p.get('tool', '')}".strip("/")
        print(f"{p.get('id', '?')}  {p.get('kind', ''):<12}  {where:<32}  {p.get('reason', '')}", file=out)


def cmd_alerts(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    client = ApiClient(args.url, args.token)
    try:
        if args.alerts_command == "list":
            alerts = client.alerts(
                limit=args.limit, fetch_all=args.all, status=args.status, severity=args.severity,
                detector=args.detector, agent=args.agent,
            )
            if args.json:
                json.dump(alerts, out, indent=2, sort_keys=True)
                print(file=out)
            else:
                _print_alerts(alerts, out)
        elif args.alerts_command == "show":
            json.dump(client.request("GET", f"/api/v1/alerts/{urllib.parse.quote(args.id, safe='')}"), out, indent=2, sort_keys=True)
            print(file=out)
        elif args.alerts_command == "ack":
            alert = client.request("POST", f"/api/v1/alerts/{urllib.parse.quote(args.id, safe='')}/ack")
            print(f"acknowledged {alert['id']}", file=out)
        elif args.alerts_command == "redeliver":
            res = client.request("POST", f"/api/v1/alerts/{urllib.parse.quote(args.id, safe='')}/redeliver")
            print(f"requeued {res['requeued']} dead webhook message(s) of {res['id']}", file=out)
    except ApiError as exc:
        print(f"toolwatch: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_approvals(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    client = ApiClient(args.url, args.token)
    try:
        if args.approvals_command == "list":
            data = client.request("GET", "/api/v1/approvals")
            if args.json:
                json.dump(data, out, indent=2, sort_keys=True)
                print(file=out)
            else:
                _print_pending(data, out)
        else:
            verb = args.approvals_command
            result = client.request("POST", f"/api/v1/approvals/{urllib.parse.quote(args.id, safe='')}/{verb}")
            print(f"{result['decision']} {result['id']}", file=out)
    except ApiError as exc:
        print(f"toolwatch: {exc}", file=sys.stderr)
        return 1
    return 0


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default=os.environ.get(envvars.API_URL) or DEFAULT_URL,
        help=f"daemon API base URL (default {DEFAULT_URL}, or {envvars.API_URL})",
    )
    p.add_argument(
        "--token", default=os.environ.get(envvars.API_TOKEN, ""),
        help=f"API bearer token (default: {envvars.API_TOKEN})",
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``alerts`` and ``approvals`` subcommands to the ``toolwatch`` parser."""
    from toolwatch.detectors.events import SEVERITIES

    alerts = sub.add_parser("alerts", help="list and acknowledge alerts of a running daemon",
                            description="List, show and acknowledge alerts through the daemon's API.")
    asub = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    p = asub.add_parser("list", help="list alerts, newest first", description="List alerts, newest first.")
    _client_args(p)
    p.add_argument("--status", choices=["open", "acked"], help="only alerts with this status")
    p.add_argument("--severity", choices=list(SEVERITIES), help="only alerts with this severity")
    p.add_argument("--detector", help="only alerts from this detector")
    p.add_argument("--agent", help="only alerts for this agent id")
    p.add_argument("--limit", type=int, default=50, help="alerts per page (1-1000, default 50)")
    p.add_argument("--all", action="store_true", help="follow pages until every matching alert is listed")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = asub.add_parser("show", help="one alert with its webhook deliveries", description="Show one alert as JSON.")
    _client_args(p)
    p.add_argument("id", help="alert id")
    p = asub.add_parser("ack", help="acknowledge an alert", description="Acknowledge an alert (idempotent).")
    _client_args(p)
    p.add_argument("id", help="alert id")
    p = asub.add_parser("redeliver", help="retry webhook messages that were given up on",
                        description="Requeue an alert's dead webhook messages (older than max_age_s) for delivery.")
    _client_args(p)
    p.add_argument("id", help="alert id")
    alerts.set_defaults(func=cmd_alerts)

    appr = sub.add_parser("approvals", help="review pending tool-definition changes (rug-pulls)",
                          description="List, approve or reject tool-definition changes held by the rug-pull detector.")
    psub = appr.add_subparsers(dest="approvals_command", metavar="ACTION", required=True)
    p = psub.add_parser("list", help="list pending changes", description="List pending tool-definition changes.")
    _client_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    for verb, text in (("approve", "accept the change as the new pinned definition"), ("reject", "keep the old definition")):
        p = psub.add_parser(verb, help=text, description=f"{verb.capitalize()} a pending change: {text}.")
        _client_args(p)
        p.add_argument("id", help="pending change id (from 'toolwatch approvals list')")
    appr.set_defaults(func=cmd_approvals)
