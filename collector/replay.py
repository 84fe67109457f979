"""``toolwatch replay``: recorded traffic through the same normaliser, detectors and alert router as live.

Input files hold one JSON object per line, either an OTLP ``ExportTraceServiceRequest`` in OTLP/JSON
(the OpenTelemetry Collector file exporter's format) or one tool call (``toolcall_lines``); both may
be mixed. Detectors work in event time, so a replay gives the findings live ingestion gave. Bad lines
are reported as ``file:line: reason`` and skipped; the lines beside them are kept.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from prometheus_client import CollectorRegistry

from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import Finding, ToolCall, ToolListing

from . import otlp
from .alerts import AlertRouter
from .config import Config
from .metrics import Metrics
from .normalize import ArgsRedactor, Normalizer, drop_raw_args
from .pipeline import Pipeline
from .sinks import Sink
from .sinks.webhook import WebhookSink
from .store import Store
from .toolcall_lines import toolcall_from_dict


class LineError(ValueError):
    """One input line that cannot be used; the message says why."""


@dataclass
class Parsed:
    calls: list[ToolCall] = field(default_factory=list)
    listings: list[ToolListing] = field(default_factory=list)
    spans: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


def parse_line(text: str, normalizer: Normalizer) -> Parsed:
    """One line -> events; raises ``LineError`` for a line that is neither format."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise LineError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LineError(f"expected a JSON object, got {type(data).__name__}")
    if "resourceSpans" in data or "resource_spans" in data:
        try:
            req = otlp.decode_request(text.encode("utf-8", "surrogatepass"), otlp.JSON)
        except otlp.DecodeError as exc:
            raise LineError(str(exc)) from None
        norm = normalizer.normalize(req)
        return Parsed(norm.calls, norm.listings, norm.spans, norm.rejected, norm.errors)
    try:
        call = toolcall_from_dict(data)
    except ValueError as exc:
        raise LineError(f"not an OTLP request (no resourceSpans) nor a tool call: {exc}") from None
    return Parsed(calls=[call], spans=1)


class Progress:
    """A plain-text progress bar on one terminal line, redrawn at most every ``interval_s``."""

    def __init__(self, total_bytes: int, stream: TextIO, *, enabled: bool = True, interval_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = max(1, total_bytes)
        self.stream = stream
        self.enabled = enabled
        self.interval_s = interval_s
        self.clock = clock
        self.start = clock()
        self._last = 0.0

    def render(self, done_bytes: int, spans: int, width: int = 30) -> str:
        frac = min(1.0, done_bytes / self.total)
        filled = int(frac * width)
        rate = spans / max(1e-9, self.clock() - self.start)
        return f"\rreplay [{'#' * filled}{'-' * (width - filled)}] {frac * 100:5.1f}%  {spans:,} spans  {rate:,.0f} spans/s"

    def update(self, done_bytes: int, spans: int, *, force: bool = False) -> None:
        now = self.clock()
        if self.enabled and (force or now - self._last >= self.interval_s):
            self._last = now
            self.stream.write(self.render(done_bytes, spans))
            self.stream.flush()

    def finish(self, done_bytes: int, spans: int) -> None:
        if self.enabled:
            self.update(done_bytes, spans, force=True)
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class ReplayResult:
    files: int = 0
    lines: int = 0
    bad_lines: int = 0
    spans: int = 0
    rejected_spans: int = 0
    calls: int = 0
    listings: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    alerts: int = 0
    """New alerts in the store (findings after grouping)."""

    def summary(self, limit: int = 20) -> str:
        rate = self.spans / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"replayed {self.files} file(s): {self.lines:,} lines, {self.spans:,} spans "
            f"({self.calls:,} tool calls, {self.listings:,} tool listings) in {self.seconds:.2f}s ({rate:,.0f} spans/s)",
            f"skipped: {self.bad_lines:,} bad line(s), {self.rejected_spans:,} rejected span(s)",
            f"findings: {len(self.findings):,} -> alerts: {self.alerts:,}",
        ]
        by_kind = Counter((f.detector, f.severity) for f in self.findings)
        for (det, sev), n in sorted(by_kind.items()):
            out.append(f"  {det:<24} {sev:<8} {n:,}")
        for f in self.findings[:limit]:
            out.append(f"  - [{f.severity}] {f.detector} agent={f.agent_id} {f.reason}")
        if len(self.findings) > limit:
            out.append(f"  ... and {len(self.findings) - limit:,} more (see the store in --data-dir)")
        return "\n".join(out)


class Replayer:
    """Builds the live pipeline's components over ``data_dir`` and feeds it files as fast as it goes."""

    def __init__(
        self,
        cfg: Config,
        detectors: Sequence[Detector],
        *,
        redact_args: ArgsRedactor | None = None,
        err: TextIO = sys.stderr,
        progress: bool = True,
        webhook_secret: bytes = b"",
    ) -> None:
        self.cfg = cfg
        self.err = err
        self.show_progress = progress
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics(CollectorRegistry())
        self.store = Store(cfg.data_path / "toolwatch.db")
        self.sinks: list[Sink] = [
            WebhookSink(h, self.store, self.metrics, h.secret.encode() or webhook_secret) for h in cfg.webhooks
        ]
        self.router = AlertRouter(self.store, self.metrics, self.sinks, group_window_ns=int(cfg.alerts.group_window_s * 1e9))
        p = cfg.pipeline
        self.pipeline = Pipeline(
            list(detectors), self.router, self.store, self.metrics,
            batch_max_size=p.batch_max_size, batch_max_delay_s=p.batch_max_delay_ms / 1000,
            queue_max=p.queue_max_spans, queue_max_wait_s=p.queue_max_wait_ms / 1000,
            snapshot_interval_s=p.snapshot_interval_s,
        )
        self.normalizer = Normalizer(redact_args or drop_raw_args)

    async def _submit(self, calls: list[ToolCall], listings: list[ToolListing]) -> None:
        while not self.pipeline.submit(calls, listings):
            await self.pipeline.wait_progress()

    async def run(self, paths: Sequence[Path], *, webhook_timeout_s: float = 30.0) -> ReplayResult:
        res = ReplayResult(files=len(paths))
        self.pipeline.listeners.append(res.findings.extend)
        alerts_before = self.store.count_alerts()
        total = sum(p.stat().st_size for p in paths)
        bar = Progress(total, self.err, enabled=self.show_progress)
        started = time.monotonic()
        await self.pipeline.start()
        for sink in self.sinks:
            await sink.start()
        try:
            done_bytes = 0
            calls: list[ToolCall] = []
            listings: list[ToolListing] = []
            for path in paths:
                with open(path, "rb") as fh:
                    for lineno, raw in enumerate(fh, 1):
                        done_bytes += len(raw)
                        text = raw.decode("utf-8", "replace").strip()
                        if not text:
                            continue
                        res.lines += 1
                        try:
                            parsed = parse_line(text, self.normalizer)
                        except LineError as exc:
                            res.bad_lines += 1
                            self._report(f"{path}:{lineno}: {exc}"[:500])
                            continue
                        if parsed.rejected:
                            self._report(f"{path}:{lineno}: {parsed.rejected} span(s) rejected: {'; '.join(parsed.errors)}"[:500])
                        res.spans += parsed.spans
                        res.rejected_spans += parsed.rejected
                        calls.extend(parsed.calls)
                        listings.extend(parsed.listings)
                        if len(calls) + len(listings) >= self.pipeline.batch_max_size:
                            res.calls, res.listings = res.calls + len(calls), res.listings + len(listings)
                            await self._submit(calls, listings)
                            calls, listings = [], []
                            bar.update(done_bytes, res.spans)
            res.calls, res.listings = res.calls + len(calls), res.listings + len(listings)
            await self._submit(calls, listings)
            await self.pipeline.drained(timeout=None)  # type: ignore[arg-type]
            bar.finish(done_bytes, res.spans)
            await self._deliver(webhook_timeout_s)
        finally:
            await self.pipeline.shutdown()
            for sink in self.sinks:
                await sink.shutdown()
            res.seconds = time.monotonic() - started
            res.alerts = self.store.count_alerts() - alerts_before
            self.store.close()
        return res

    def _report(self, line: str) -> None:
        if self.show_progress:
            self.err.write("\r\x1b[K")
        self.err.write(line + "\n")

    async def _deliver(self, timeout_s: float) -> None:
        """Give webhook sinks time to deliver what the replay raised (they retry from the outbox)."""
        deadline = time.monotonic() + timeout_s
        while self.sinks and any(self.store.outbox_depth(s.name) for s in self.sinks):
            if time.monotonic() > deadline:
                self.err.write("replay: some webhook deliveries are still pending; they stay in the outbox of --data-dir\n")
                return
            await asyncio.sleep(0.05)


def replay_files(
    paths: Sequence[Path], cfg: Config, detectors: Sequence[Detector], **kwargs: Any
) -> ReplayResult:
    """Synchronous entry point for the CLI."""
    run_kwargs = {k: kwargs.pop(k) for k in ("webhook_timeout_s",) if k in kwargs}
    return asyncio.run(Replayer(cfg, detectors, **kwargs).run(paths, **run_kwargs))
