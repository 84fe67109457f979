"""The composition root: builds every component from a Config and runs them. Nothing at import time."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from toolwatch.detectors.base import Detector
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector

from .alerts import AlertRouter
from .api import Api
from .config import Config, ConfigError, parse_hostport
from .metrics import Metrics
from .normalize import ArgsRedactor, Normalizer, drop_raw_args
from .pipeline import Pipeline
from .receivers import Ingest, Receiver
from .receivers.otlp_grpc import OtlpGrpcReceiver
from .receivers.kafka import build_kafka_receiver
from .receivers.otlp_http import OtlpHttpReceiver
from .sinks import Sink
from .sinks.log import LogSink
from .sinks.webhook import WebhookSink
from .store import Store

log = logging.getLogger("toolwatch.daemon")


def _detector_conf(cls: type, raw: dict[str, Any], name: str) -> Any:
    try:
        conf = cls(**{k: v for k, v in raw.items() if k != "enabled"})
        conf.validate()
    except TypeError as exc:
        raise ConfigError(f"detectors.{name}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return conf


def build_detectors(cfg: Config) -> list[Detector]:
    """Every built-in detector, configured from ``cfg.detectors``; ``enabled: false`` turns one off."""
    known: dict[str, Callable[[dict[str, Any]], Detector]] = {
        "new_tool": lambda raw: NewToolDetector(_detector_conf(NewToolConfig, raw, "new_tool")),
    }
    unknown = sorted(set(cfg.detectors) - set(known))
    if unknown:
        raise ConfigError(f"detectors: unknown detector(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    out = []
    for name, make in known.items():
        raw = dict(cfg.detectors.get(name, {}))
        if raw.get("enabled", True) is False:
            continue
        out.append(make(raw))
    return out


def webhook_secret(cfg: Config) -> bytes:
    """The configured secret, else one generated once and kept (0600) in the data directory."""
    if cfg.webhook_secret:
        return cfg.webhook_secret.encode()
    path = cfg.data_path / "webhook.secret"
    if path.exists():
        return path.read_text().strip().encode()
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    log.warning("no webhook_secret configured: generated one in %s; give it to your webhook receivers", path)
    return value.encode()


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        registry: CollectorRegistry | None = None,
        detectors: list[Detector] | None = None,
        redact_args: ArgsRedactor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics(registry)
        self.store = Store(cfg.data_path / "toolwatch.db", clock=clock)
        self.detectors = build_detectors(cfg) if detectors is None else detectors
        secret = webhook_secret(cfg) if cfg.webhooks else b""
        self.sinks: list[Sink] = [LogSink()]
        self.sinks += [WebhookSink(h, self.store, self.metrics, h.secret.encode() or secret, clock=clock) for h in cfg.webhooks]
        self.router = AlertRouter(
            self.store, self.metrics, self.sinks, group_window_ns=int(cfg.alerts.group_window_s * 1e9), clock=clock
        )
        p = cfg.pipeline
        self.pipeline = Pipeline(
            self.detectors,
            self.router,
            self.store,
            self.metrics,
            batch_max_size=p.batch_max_size,
            batch_max_delay_s=p.batch_max_delay_ms / 1000,
            queue_max=p.queue_max_spans,
            snapshot_interval_s=p.snapshot_interval_s,
        )
        self.ingest = Ingest(Normalizer(redact_args or drop_raw_args), self.pipeline, self.metrics)
        self.receivers: list[Receiver] = []
        if cfg.enabled("otlp_http"):
            host, port = parse_hostport(cfg.otlp_http, "otlp_http")
            self.receivers.append(
                OtlpHttpReceiver(host, port, self.ingest, self.metrics, max_body_bytes=cfg.max_body_bytes)
            )
        if cfg.enabled("otlp_grpc"):
            host, port = parse_hostport(cfg.otlp_grpc, "otlp_grpc")
            self.receivers.append(OtlpGrpcReceiver(host, port, self.ingest, self.metrics, max_body_bytes=cfg.max_body_bytes))
        if cfg.kafka.enabled:
            self.receivers.append(
                build_kafka_receiver(
                    cfg.kafka, cfg.data_path, self.ingest.normalizer, self.pipeline, self.metrics,
                    max_record_bytes=cfg.max_body_bytes,
                )
            )
        host, port = parse_hostport(cfg.listen, "listen")
        self.api = Api(host, port, self.store, self.metrics, ready=self.ready, api_token=cfg.api_token)
        self._started = False
        self._stop = asyncio.Event()

    def ready(self) -> bool:
        return self._started and self.pipeline.running

    def receiver(self, name: str) -> Receiver:
        return next(r for r in self.receivers if r.name == name)

    def _update_agent_gauge(self) -> None:
        states: dict[str, int] = {"learning": 0, "active": 0, "frozen": 0}
        for det in self.detectors:
            fn = getattr(det, "agent_state", None)
            if fn is None:
                continue
            for agent in det.agents():
                s = fn(agent)
                states[s] = states.get(s, 0) + 1
            break
        for state, n in states.items():
            self.metrics.agents.labels(state).set(n)

    async def start(self) -> None:
        await self.pipeline.start()
        for sink in self.sinks:
            await sink.start()
        await self.api.start()
        for r in self.receivers:
            await r.start()
        self.pipeline.listeners.append(lambda _f: self._update_agent_gauge())
        self._started = True

    async def shutdown(self) -> None:
        """Stop accepting, drain the queue into the detectors and the store, then stop the sinks."""
        self._started = False
        for r in self.receivers:
            await r.shutdown()
        await self.pipeline.shutdown()
        for sink in self.sinks:
            await sink.shutdown()
        await self.api.shutdown()
        self.store.close()

    def request_stop(self) -> None:
        self._stop.set()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):
                pass
        await self.start()
        log.info("toolwatch is running; data in %s", Path(self.cfg.data_dir).resolve())
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()
