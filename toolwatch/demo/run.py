"""What ``toolwatch demo`` runs (its command line is in ``cli.py``, which imports this lazily)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from toolwatch.collector.config import Config, WebhookConfig
from toolwatch.collector.daemon import Daemon
from toolwatch.collector.store import StoredAlert
from toolwatch.detectors.events import severity_rank

from .agents import run_agents
from .servers import build_mail_server, build_notes_server, build_web_server, serve_http
from .webhook_inbox import start_inbox

ATTACKS = ("exfil", "spike", "rugpull", "injection")
_TITLES = {
    "learn": "Learning: three agents go about their normal work",
    "exfil": "Attack 1 — exfiltration: the mail assistant mails the secret note outside",
    "spike": "Attack 2 — volume spike: the coding agent suddenly makes hundreds of calls",
    "rugpull": "Attack 3 — rug-pull: the web server rewrites a tool's description mid-session",
    "injection": "Attack 4 — prompt injection: a fetched page takes over the research agent",
}
_COLOURS = {"critical": "1;31", "high": "31", "medium": "33", "low": "36", "info": "2"}


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _addr(default_port: int) -> str:
    """The documented default port when it is free, else any free loopback port."""
    return f"127.0.0.1:{default_port}" if _free("127.0.0.1", default_port) else "127.0.0.1:0"


def demo_config(data_dir: Path, webhook_url: str, webhook_secret: str) -> Config:
    """Embedded defaults, with learning periods short enough for a demo of a minute or two."""
    cfg = Config(
        otlp_http=_addr(4318),
        otlp_grpc=_addr(4317),
        listen=_addr(9464),
        data_dir=str(data_dir),
        webhooks=[WebhookConfig(url=webhook_url, name="demo-inbox", secret=webhook_secret)],
        log_level="warning",
        fingerprint_key=os.environ.get("TOOLWATCH_FINGERPRINT_KEY", ""),
    )
    cfg.pipeline.batch_max_delay_ms = 50
    cfg.detectors = {
        "new_tool": {"min_calls": 20},
        "volume": {"window_s": 1, "min_history": 3, "min_calls_agent": 30, "min_calls_tool": 30, "min_calls_fleet": 60},
        # The demo's agents keep one MCP session per server for a whole phase.
        "sequence": {"min_calls": 30, "min_sessions": 1},
    }
    cfg.validate()
    return cfg


class Screen:
    """What the operator sees: phases, progress lines, and each alert as it is raised."""

    def __init__(self, out: TextIO, colour: bool, min_severity: str = "low") -> None:
        self.out = out
        self.colour = colour
        self.min_rank = severity_rank(min_severity)
        self.shown: set[str] = set()

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def phase(self, name: str) -> None:
        self.line()
        self.line(self._c("1", f"== {_TITLES[name]}"))

    def progress(self, text: str) -> None:
        self.line(self._c("2", f"   · {text}"))

    def alerts(self, alerts: list[StoredAlert]) -> int:
        n = 0
        for a in sorted(alerts, key=lambda a: (a.created_at, a.id)):
            if a.id in self.shown or severity_rank(a.severity) < self.min_rank:
                continue
            self.shown.add(a.id)
            n += 1
            f = a.finding
            tag = self._c(_COLOURS.get(a.severity, "0"), f"[{a.severity.upper():8}]")
            self.line(f"   {tag} {a.detector:<13} {a.agent_id:<15} {f.get('reason', '')}")
            for item in (f.get("evidence") or {}).get("explanation", [])[:2]:
                self.line(
                    self._c(
                        "2",
                        f"              why: {item.get('feature')} observed {item.get('observed')!r}"
                        f" vs baseline {item.get('baseline')!r}",
                    )
                )
        return n


async def _drain(daemon: Daemon, settle_s: float = 0.6) -> None:
    """Let the exporters flush into the daemon, then wait for the pipeline to catch up."""
    await asyncio.sleep(settle_s)
    await daemon.pipeline.drained(30)


async def run_demo(
    data_dir: Path,
    *,
    rounds: int = 10,
    spike_calls: int = 300,
    keep_running: bool = False,
    out: TextIO = sys.stdout,
    colour: bool | None = None,
) -> dict[str, Any]:
    """Run the whole demo; returns a summary (used by the tests)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    _start_fresh(data_dir)
    os.environ.setdefault("TOOLWATCH_FINGERPRINT_KEY", secrets.token_hex(32))  # agents and daemon share it
    screen = Screen(out, out.isatty() if colour is None else colour)
    alert_log = data_dir / "alerts.log"
    _route_alert_log(alert_log)
    secret = secrets.token_hex(16)
    inbox, inbox_runner, inbox_url = await start_inbox(secret.encode())
    daemon = Daemon(demo_config(data_dir, inbox_url, secret))
    started = time.monotonic()
    await daemon.start()
    http_port = daemon.receiver("otlp_http").bound_port  # type: ignore[attr-defined]
    endpoint = f"http://127.0.0.1:{http_port}"
    api = f"http://127.0.0.1:{daemon.api.bound_port}"
    screen.line(f"toolwatch demo — daemon up: OTLP/HTTP {endpoint}, API and /metrics {api}, data in {data_dir}")
    phases: dict[str, int] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            urls = {
                "notes": await stack.enter_async_context(serve_http(build_notes_server())),
                "mail": await stack.enter_async_context(serve_http(build_mail_server())),
                "web": await stack.enter_async_context(serve_http(build_web_server())),
            }
            screen.line(f"MCP servers (streamable HTTP): {', '.join(f'{k} {v}' for k, v in urls.items())}")
            for phase in ("learn", *ATTACKS):
                screen.phase(phase)
                phase_urls = dict(urls)
                if phase == "rugpull":  # a fresh web server that changes its tool after two fetches
                    phase_urls["web"] = await stack.enter_async_context(serve_http(build_web_server(rug_pull_after=2)))
                before = daemon.pipeline.processed
                report = await run_agents(
                    endpoint,
                    phase=phase,
                    rounds=rounds,
                    spike_calls=spike_calls,
                    progress=screen.progress,
                    server_urls=phase_urls,
                )
                await _drain(daemon)
                phases[phase] = daemon.pipeline.processed - before
                screen.progress(
                    f"{sum(report.calls.values())} tool calls; {phases[phase]} spans ingested and analysed"
                )
                shown = screen.alerts(daemon.store.list_alerts(limit=1000))
                if phase == "learn" and shown == 0:
                    screen.progress("no alerts while learning, as it should be")
        await asyncio.sleep(1.5)  # let the webhook sink deliver the last alerts
        summary = _summary(daemon, inbox, phases, time.monotonic() - started)
        _print_summary(screen, summary, api, data_dir, alert_log)
        if keep_running:
            screen.line("\nThe daemon keeps running (Ctrl-C to stop); agents can send OTLP to " + endpoint)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            import signal

            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        return summary
    finally:
        await daemon.shutdown()
        await inbox_runner.cleanup()


DEMO_FILES = ("toolwatch.db", "toolwatch.db-wal", "toolwatch.db-shm", "alerts.log", "webhook.secret", "fingerprint.key")


def _start_fresh(data_dir: Path) -> None:
    """Each demo run tells the whole story from the start: remove what an earlier run left (only our files)."""
    for name in DEMO_FILES:
        (data_dir / name).unlink(missing_ok=True)


def _route_alert_log(path: Path) -> None:
    """Alert log lines go to a file the operator can tail, not over the live view."""
    logger = logging.getLogger("toolwatch.alerts")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.handlers = [handler]
    logger.propagate = False
    logging.getLogger("toolwatch").setLevel(logging.WARNING)


def _summary(daemon: Daemon, inbox: Any, phases: dict[str, int], elapsed: float) -> dict[str, Any]:
    alerts = daemon.store.list_alerts(limit=1000)
    by = Counter((a.detector, a.severity) for a in alerts)
    return {
        "elapsed_s": round(elapsed, 1),
        "spans": phases,
        "alerts": [a.to_dict() for a in alerts],
        "by_detector": {f"{d}/{s}": n for (d, s), n in sorted(by.items())},
        "webhooks_received": len(inbox.received),
        "webhook_bad_signatures": inbox.bad_signatures,
        "pending_approvals": sum(len(d.pending()) for d in daemon.detectors if hasattr(d, "pending")),
    }


def _print_summary(screen: Screen, s: dict[str, Any], api: str, data_dir: Path, alert_log: Path) -> None:
    screen.line()
    screen.line(screen._c("1", "== Summary"))
    screen.line(f"   {sum(s['spans'].values())} spans analysed in {s['elapsed_s']} s; {len(s['alerts'])} alerts")
    for key, n in s["by_detector"].items():
        screen.line(f"     {key:<28} {n}")
    screen.line(
        f"   signed webhooks delivered: {s['webhooks_received']} (signatures verified; {s['webhook_bad_signatures']} bad)"
    )
    screen.line(f"   tool definitions waiting for approval: {s['pending_approvals']}")
    screen.line()
    screen.line("Where to look:")
    screen.line(f"   alert log      {alert_log}")
    screen.line(f"   store          {data_dir / 'toolwatch.db'} (SQLite: alerts, outbox, baselines)")
    screen.line(f"   browse it      toolwatch run --data-dir {data_dir}   then  {api}/api/v1/alerts , {api}/metrics")
    screen.line("   or re-run with --keep-running to keep this daemon up")
