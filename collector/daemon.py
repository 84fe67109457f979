"""The composition root: builds every component from a Config and runs them. Nothing at import time."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Awaitable, Callable

from prometheus_client import CollectorRegistry

from toolwatch.detectors.base import Detector
from toolwatch.detectors.rules import RuleEngine
from toolwatch.instrumentation.fingerprint import key_from_text
from toolwatch.instrumentation.redact import Redactor

from .agent_metrics import AgentMetrics
from .alerts import AlertRouter
from .approvals import Approvals, find_approval_source
from .api import Api
from .config import Config, parse_hostport, snapshot_in_process
from .cpu_affinity import ThreadAffinity, choose_cpu_affinity, parse_cpu_affinity
from .detector_registry import build_detectors
from .enforcement import EnforcementService
from .enforcement_api import EnforcementApi
from .hold_notify import HoldNotifier, HoldTarget
from .interpreter import InterpreterSettings
from .holds import HoldBook
from .metrics import Metrics
from .normalize import ArgsRedactor, Normalizer
from .otlp_processes import AUTO, choose_decode_processes, choose_otlp_processes
from .pipeline import Pipeline
from .receivers import Ingest, Receiver
from .receivers.tls import tls_files
from .receivers.otlp_grpc import OtlpGrpcReceiver
from .receivers.decode_workers import DecodeWorkers
from .receivers.kafka import build_kafka_receiver
from .receivers.otlp_http import OtlpHttpReceiver
from .receivers.otlp_workers import OtlpGrpcWorkers, OtlpHttpWorkers
from .refit_worker import RefitWorker
from .retrain import Retrainer
from .rules_watch import RuleFileWatcher
from .sinks import Sink
from .sinks.log import LogSink
from .sinks.webhook import WebhookSink
from .stop_signals import stop_signals
from .store import Store
from .uncancellable import finish_despite_cancel

log = logging.getLogger("toolwatch.daemon")


def _kept_secret(path: Path, what: str) -> str:
    """A random secret generated once and kept (mode 0600) so restarts agree with themselves."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    log.warning("no %s configured: generated one in %s", what, path)
    return value


def ingest_redactor(cfg: Config) -> ArgsRedactor:
    """The edge's redaction, applied on ingest to arguments that arrive unredacted.

    Fingerprints only line up with the agents' when every emitter uses the same key
    (TOOLWATCH_FINGERPRINT_KEY); without one, a key is generated and kept in the data directory.
    """
    return Redactor(key_from_text(fingerprint_key_text(cfg))).redact_json_text


def fingerprint_key_text(cfg: Config) -> str:
    """The configured fingerprint key, else one generated once and kept in the data directory."""
    return cfg.fingerprint_key or _kept_secret(cfg.data_path / "fingerprint.key", "fingerprint_key")


def webhook_secret(cfg: Config) -> bytes:
    """The configured secret, else one generated once and kept in the data directory."""
    return (cfg.webhook_secret or _kept_secret(cfg.data_path / "webhook.secret", "webhook_secret")).encode()


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
        otlp = cfg.enabled("otlp_http") or cfg.enabled("otlp_grpc")
        choice = choose_otlp_processes(cfg.otlp_processes, redact_args_given=redact_args is not None)
        if otlp and choice.processes and redact_args is not None:
            raise ValueError(
                "redact_args cannot be used with otlp_processes > 0: the worker processes build the ingest "
                "redactor from fingerprint_key; pass otlp_processes=0 (or auto) or drop redact_args"
            )
        if otlp and cfg.otlp_processes == AUTO:
            log.info("otlp_processes: auto chose %d (%s)", choice.processes, choice.reason)
        self.otlp_processes = choice.processes if otlp else 0
        """Worker processes per OTLP receiver (OTLP/HTTP, OTLP/gRPC) this daemon runs (``cfg.otlp_processes``
        with ``auto`` resolved)."""
        decode = choose_decode_processes(cfg.kafka.decode_processes, redact_args_given=redact_args is not None)
        if cfg.kafka.enabled and decode.processes and redact_args is not None:
            raise ValueError(
                "redact_args cannot be used with kafka.decode_processes > 0: the decode workers build the ingest "
                "redactor from fingerprint_key; pass kafka.decode_processes=0 (or auto) or drop redact_args"
            )
        if cfg.kafka.enabled and cfg.kafka.decode_processes == AUTO:
            log.info("kafka.decode_processes: auto chose %d (%s)", decode.processes, decode.reason)
        self.decode_processes = decode.processes if cfg.kafka.enabled else 0
        """Kafka decode worker processes this daemon runs (``kafka.decode_processes`` resolved)."""
        self.cfg = cfg
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics(registry, tool_label_cap=cfg.tool_label_cap)
        self.store = Store(cfg.data_path / "toolwatch.db", clock=clock)
        self.detectors = build_detectors(cfg) if detectors is None else detectors
        secret = webhook_secret(cfg) if any(not h.secret for h in cfg.webhooks) else b""
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
            queue_max_wait_s=p.queue_max_wait_ms / 1000,
            snapshot_interval_s=p.snapshot_interval_s,
            event_time=p.event_time_rule(),
            snapshot_process=snapshot_in_process(cfg, self.store.state_path),
            child_cpus=lambda: self.affinity.original_cpus,
        )
        self.agent_metrics = AgentMetrics(self.metrics.registry, self.detectors, clock=clock)
        self.pipeline.batch_listeners.append(self.agent_metrics.after_batch)
        self.affinity = ThreadAffinity(choose_cpu_affinity(
            parse_cpu_affinity(cfg.cpu_affinity), helpers=bool(self.otlp_processes or self.decode_processes) or not p.refit_in_process))
        """The daemon's threads on one CPU while it runs (``cpu_affinity``); child processes start outside it."""
        log.info("cpu_affinity: %s", self.affinity.choice.reason)
        self.refit_worker: RefitWorker | None = None
        if not p.refit_in_process:
            self.refit_worker = RefitWorker(spawn_guard=self.affinity.released)
            for d in self.detectors:
                if hasattr(d, "fitter") and hasattr(d, "retrain"):
                    d.fitter = self.refit_worker.fit  # type: ignore[attr-defined]
        self.retrainer = Retrainer(self.detectors, max_share=p.retrain_max_share,
                                   max_models=p.retrain_max_models or None,
                                   abort=self.refit_worker.abort if self.refit_worker is not None else None)
        self.pipeline.batch_listeners.append(self.retrainer)
        self.ingest = Ingest(Normalizer(redact_args or ingest_redactor(cfg)), self.pipeline, self.metrics)
        self.receivers: list[Receiver] = []
        in_process = {"otlp_http": OtlpHttpReceiver, "otlp_grpc": OtlpGrpcReceiver}
        in_workers = {"otlp_http": OtlpHttpWorkers, "otlp_grpc": OtlpGrpcWorkers}
        for key in ("otlp_http", "otlp_grpc"):
            if cfg.enabled(key):
                host, port = parse_hostport(getattr(cfg, key), key)
                common = dict(
                    max_body_bytes=cfg.max_body_bytes,
                    retry_after_s=cfg.retry_after_s,
                    bearer_token=cfg.receiver_token,
                    tls=tls_files(cfg),
                )
                if self.otlp_processes:
                    self.receivers.append(
                        in_workers[key](
                            host, port, self.ingest, self.metrics, processes=self.otlp_processes,
                            fingerprint_key=fingerprint_key_text(cfg), spawn_guard=self.affinity.released,
                            **common,  # type: ignore[arg-type]
                        )
                    )
                else:
                    self.receivers.append(in_process[key](host, port, self.ingest, self.metrics, **common))  # type: ignore[arg-type]
        if cfg.kafka.enabled:
            self.receivers.append(
                build_kafka_receiver(
                    cfg.kafka, cfg.data_path, self.ingest.normalizer, self.pipeline, self.metrics,
                    max_record_bytes=cfg.max_body_bytes,
                    decoders=DecodeWorkers(
                        self.decode_processes, fingerprint_key=fingerprint_key_text(cfg), encoding=cfg.kafka.encoding,
                        max_record_bytes=cfg.max_body_bytes, spawn_guard=self.affinity.released,
                        reply_timeout_s=cfg.kafka.max_poll_interval_ms / 2000,
                    ) if self.decode_processes else None,
                )
            )
        self.metrics.init_labels(
            [d.name for d in self.detectors], [r.name for r in self.receivers], [h.name for h in cfg.webhooks]
        )
        states = next((d for d in self.detectors if hasattr(d, "agent_states")), None)
        if states is not None:  # baseline state per agent, from the first detector that keeps one (the sequence model)
            self.metrics.watch_agent_states(states.agent_states)  # type: ignore[attr-defined]
        forest = next((d for d in self.detectors if hasattr(d, "scoring_counts")), None)
        if forest is not None:
            self.metrics.watch_forest_agents(forest.scoring_counts)  # type: ignore[attr-defined]
        approvals = None
        source = find_approval_source(self.detectors)
        if source is not None:
            self.metrics.watch_pending_approvals(source.pending)
            approvals = Approvals(source, self.pipeline.detector_lock, save_state=self.store.save_state)
        host, port = parse_hostport(cfg.listen, "listen")
        self.hold_notifier = HoldNotifier([HoldTarget(h.name, h.url, h.secret.encode() or secret, h.timeout_s)
                                           for h in cfg.webhooks])
        self.enforcement = EnforcementApi(
            EnforcementService(self.detectors, self.pipeline.detector_lock), HoldBook(clock=clock), self.hold_notifier,
            self.metrics,
        )
        # decisions never wait for a batch: they read the rug-pull state copied after each one
        self.pipeline.batch_listeners.append(self.enforcement.service.after_batch)
        self.api = Api(
            host, port, self.store, self.metrics, ready=self.ready, api_token=cfg.api_token, approvals=approvals,
            extra_routes=self.enforcement.routes,
        )
        engine = next((d for d in self.detectors if isinstance(d, RuleEngine)), None)
        self.rules_watcher = RuleFileWatcher(engine, self.pipeline, self.metrics) if engine else None
        self._started = False
        self._stop = asyncio.Event()
        self.interpreter = InterpreterSettings(cfg.pipeline.gc_young_threshold, cfg.pipeline.switch_interval_ms)

    def ready(self) -> bool:
        return self._started and self.pipeline.running

    def receiver(self, name: str) -> Receiver:
        return next(r for r in self.receivers if r.name == name)

    async def start(self) -> None:
        """Start every component; if one cannot start (a port in use), stop those already running.

        Without that, the OTLP worker processes started before a failing receiver went on accepting
        requests, and the daemon acknowledged calls it would never process."""
        try:
            await self._start()
        except BaseException:
            try:
                await self.shutdown()
            except Exception:  # each failed step is logged; the start's error is the one to report
                pass
            raise

    async def _start(self) -> None:
        self.interpreter.apply()  # for the daemon's lifetime; shutdown gives Python's back
        self.affinity.apply()  # before the pipeline starts its detector thread, which inherits it
        await self.pipeline.start()
        self.enforcement.service.after_batch()  # the restored state, before the first batch
        for sink in self.sinks:
            await sink.start()
        await self.api.start()
        self.hold_notifier.api_base = f"http://{self.api.host}:{self.api.bound_port}"
        if self.rules_watcher:
            await self.rules_watcher.start()
        for r in self.receivers:
            await r.start()
        self._started = True

    async def shutdown(self) -> None:
        """Stop accepting, drain the queue into the detectors and the store, then stop the sinks.

        Every step runs, in order, even when an earlier one fails (logged; the first failure is
        raised at the end) or this shutdown is cancelled (the steps run on in a task of their own;
        the cancel is passed on once they are done). Stopping at the first problem left calls that
        the receivers had acknowledged in the queue, never processed, and child processes (the
        refit worker) running."""
        await finish_despite_cancel(self._shutdown_steps(), "daemon-shutdown")

    async def _shutdown_steps(self) -> None:
        failures: list[Exception] = []

        async def step(what: str, action: Callable[[], Awaitable[object] | None]) -> None:
            try:
                result = action()
                if result is not None:
                    await result
            except Exception as exc:
                log.exception("shutdown: %s failed; the remaining shutdown steps still run", what)
                failures.append(exc)

        self._started = False
        # First, so every snapshot the stop takes (the Kafka receiver's hand-over, the drain's) comes
        # after the refit in flight has either finished (its model is saved) or been dropped within a
        # few seconds (the state saved asks for it again), never halfway.
        await step("stopping the retrainer", self.retrainer.shutdown)
        for r in self.receivers:
            await step(f"stopping receiver {r.name}", r.shutdown)
        if self.rules_watcher:
            await step("stopping the rule file watcher", self.rules_watcher.shutdown)
        await step("draining the pipeline", self.pipeline.shutdown)
        if self.refit_worker is not None:
            await step("stopping the refit worker", lambda: asyncio.to_thread(self.refit_worker.close))  # type: ignore[union-attr]
        for sink in self.sinks:
            await step(f"stopping sink {sink.name}", sink.shutdown)
        await step("stopping the hold notifier", self.hold_notifier.shutdown)
        await step("answering the held calls' long-polls", self.enforcement.holds.stop_waits)
        await step("stopping the API", self.api.shutdown)
        await step("closing the store", self.store.close)
        await step("restoring the interpreter settings", self.interpreter.restore)
        await step("restoring the threads' CPU affinity", self.affinity.restore)
        if failures:
            raise failures[0]

    def request_stop(self) -> None:
        self._stop.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        """Stop; a repeated signal says what the stop is still doing rather than doing nothing unseen."""
        if not self._stop.is_set():
            log.info("%s received: stopping (draining %d queued calls, saving state)", sig.name, self.pipeline.depth)
            self.request_stop()
            return
        log.warning("%s received again: the stop is still running (it processes and saves the calls already "
                    "accepted, then ends on its own). SIGKILL ends it at once but loses those calls and the "
                    "detector state since the last snapshot", sig.name)

    async def run_forever(self) -> None:
        """Start, run until SIGINT/SIGTERM (or ``request_stop``), shut down; the signal handlers that
        were installed before are back when this returns."""
        with stop_signals(asyncio.get_running_loop(), self._on_signal):
            await self.start()
            log.info("toolwatch is running; data in %s", Path(self.cfg.data_dir).resolve())
            try:
                await self._stop.wait()
            finally:
                await self.shutdown()
