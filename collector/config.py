"""Typed daemon configuration: defaults < YAML file < ``TOOLWATCH_*`` environment < command line.

Every error names the key that is wrong and what would be right, and is raised at start-up:
the daemon never starts half-configured.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import urlsplit

import yaml

from . import envvars
from .cpu_affinity import CpuAffinitySetting, choose_cpu_affinity, parse_cpu_affinity
from .metrics import TOOL_LABEL_CAP
from .otlp_processes import AUTO, MAX_PROCESSES

if TYPE_CHECKING:
    from .event_time import EventTimeRule


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


def parse_hostport(value: str, key: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port)."""
    text = str(value).strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT (e.g. 127.0.0.1:4318)")
    try:
        num = int(port)
    except ValueError:
        raise ConfigError(f"{key}: port {port!r} in {value!r} is not a number") from None
    if not 0 <= num <= 65535:
        raise ConfigError(f"{key}: port {num} in {value!r} is outside 0-65535")
    return host, num


def otlp_processes_error(value: object) -> str:
    """What ``otlp_processes`` accepts, for every place that reads it (file, flag, Config)."""
    return (f"otlp_processes: must be auto (one worker process per OTLP receiver when this process can use at least "
            f"2 CPUs, else 0) or a whole number from 0 to {MAX_PROCESSES} (0 = OTLP in the daemon's process), "
            f"got {value!r}")


def decode_processes_error(value: object) -> str:
    """What ``kafka.decode_processes`` accepts (file, Config)."""
    return (f"kafka.decode_processes: must be auto (one decode worker process when this process can use at "
            f"least 2 CPUs, else 0) or a whole number from 0 to {MAX_PROCESSES} (0 = decode in the consumer "
            f"thread), got {value!r}")


def parse_process_count(value: Any, error: Callable[[object], str] = otlp_processes_error) -> int | str:
    """``otlp_processes`` (or ``kafka.decode_processes``, with its ``error``) from a config file or a flag:
    ``auto`` (any case) or a whole number.

    Flags arrive as text, YAML as int (or a whole float, which the old int-only key accepted);
    the range is checked by ``Config.validate``."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == AUTO:
            return AUTO
        if text.isascii() and text.isdigit():
            return int(text)
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(error(value))


def check_process_count(value: object, error: Callable[[object], str]) -> None:
    """``auto`` or a whole number from 0 to ``MAX_PROCESSES``, else ``ConfigError(error(value))``."""
    if value != AUTO and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PROCESSES):
        raise ConfigError(error(value))


def _cpu_affinity(value: Any) -> CpuAffinitySetting:
    try:
        return parse_cpu_affinity(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class WebhookConfig:
    """One webhook receiver. Payloads are signed with ``secret`` (HMAC-SHA256)."""

    url: str
    name: str = ""
    secret: str = ""
    format: str = "toolwatch"
    timeout_s: float = 5.0
    min_severity: str = "medium"
    """Route: alerts at or above this severity (info/low findings are API and dashboard signals, not pages)."""
    detectors: list[str] = field(default_factory=list)
    """Route: only alerts from these detectors (empty = all)."""
    agents: list[str] = field(default_factory=list)
    """Route: only alerts for agents matching these shell-style patterns, e.g. ``prod-*`` (empty = all)."""
    rate_limit_per_min: float = 0.0
    """Token bucket: at most this many requests per minute (0 = unlimited); excess waits in the outbox."""
    rate_limit_burst: int = 10
    backoff_base_s: float = 1.0
    """Retry delay: full jitter over ``min(backoff_cap_s, backoff_base_s * 2**attempts)``."""
    backoff_cap_s: float = 300.0
    max_age_s: float = 86400.0
    """An undelivered message older than this is marked dead (kept, visible, no longer retried)."""
    group_by: list[str] = field(default_factory=list)
    """Digest formats (slack, alertmanager): one message per distinct value of these alert fields."""

    FORMATS = ("toolwatch", "slack", "alertmanager")

    def validate(self, key: str) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{key}.url: {self.url!r} is not an http(s) URL")
        if self.format not in self.FORMATS:
            raise ConfigError(f"{key}.format: {self.format!r} is not one of {', '.join(self.FORMATS)}")
        if not 0 < self.timeout_s <= 300:
            raise ConfigError(f"{key}.timeout_s: must be in (0, 300], got {self.timeout_s}")
        from toolwatch.detectors.events import SEVERITIES

        if self.min_severity not in SEVERITIES:
            raise ConfigError(f"{key}.min_severity: {self.min_severity!r} is not one of {', '.join(SEVERITIES)}")
        from .webhook_config import validate_webhook_extras

        validate_webhook_extras(self, key)


SNAPSHOT_PROCESS = ("auto", "on", "off")


def snapshot_in_process(cfg: "Config", state_path: Path | None) -> bool:
    """``pipeline.snapshot_process`` resolved: whether snapshots are written by a forked child."""
    from .snapshot_process import fork_available

    choice = cfg.pipeline.snapshot_process
    if choice == "off" or cfg.kafka.changelog:
        return False
    return fork_available(state_path)


@dataclass
class PipelineConfig:
    batch_max_size: int = 4096
    """Most events one micro-batch takes. Under load every batch is full; a detector pass costs less
    per event in large batches (per-batch work and the CPU caches each detector refills after the
    others): 512 made the daemon's CPU per span ~20 % higher on fleet traffic (docs/ingestion.md).
    Light load is unaffected: a partial batch goes after ``batch_max_delay_ms``."""
    batch_max_delay_ms: int = 200
    queue_max_spans: int = 200_000
    queue_max_wait_ms: int = 500
    """While the oldest queued events have waited longer than this past ``batch_max_delay_ms`` (which
    a partial batch waits by design), the queue counts as full: receivers answer 429 /
    RESOURCE_EXHAUSTED and Kafka pauses. 0: only queue_max_spans bounds the queue."""
    snapshot_interval_s: float = 30.0
    max_future_skew_s: float = 300.0
    """Spans stamped further ahead of the wall clock are clamped to now or rejected (future_policy)."""
    future_policy: str = "clamp"
    allowed_lateness_s: float = 3600.0
    """Spans further behind the latest admitted event time are rejected as too_late."""
    max_age_s: float = 0.0
    """If > 0, spans older than this (wall clock) are rejected as too_old; 0 allows replays."""
    retrain_max_share: float = 0.25
    """Longest share of wall time model refits may take: after a refit of t seconds the next waits
    t * (1 / share - 1). Refits cost ~0.5 s of CPU each; without a bound, their cadence (every N new
    rows) grows with traffic and they take the core the detectors need."""
    retrain_max_models: int = 4
    """Most keys one refit run fits (an agent's model each, all group models as one), most urgent
    first (first models, then the most overdue); the rest wait for the next run. Agents that start
    together come due together: without a cap their refits came in waves (all at once, then a long
    pause), the daemon taking every new model in a few batches; capped, the same share of refit
    time is spread evenly. 0 fits all in one run."""
    refit_in_process: bool = False
    """Fit IsolationForest models in the daemon's own process (a thread) instead of the refit worker
    process (collector/refit_worker.py). The worker fits on the machine's other core, leaving the
    daemon's interpreter to the detectors; models are identical either way."""
    snapshot_process: str = "auto"
    """Write detector-state snapshots from a forked child process (collector/snapshot_process.py) while
    batches go on: ``on``, ``off`` (the daemon's own process, no batch meanwhile) or ``auto`` (on where
    ``fork`` exists, except with a Kafka ``state_changelog_topic``, whose per-agent captures are taken
    with each save in the daemon)."""
    gc_young_threshold: int = 50_000
    """The garbage collector's generation-0 threshold while the daemon runs (Python's is 700; 0 leaves
    Python's). At 700 the collector ran dozens of times per batch, walking every object that had
    survived since, and took about a third of the daemon's CPU; detector state holds no reference
    cycles, so collecting less often costs only a little memory (docs/ingestion.md)."""
    switch_interval_ms: float = 0.0
    """If > 0, the interpreter's thread switch interval while the daemon runs (``sys.setswitchinterval``);
    0 leaves Python's (5 ms). The event loop gives up the GIL at every socket call and then waits
    up to this long for the detector thread to hand it back: shorter serves requests sooner during
    a batch but takes CPU share from the detectors (see docs/ingestion.md), so it is off by default."""

    def event_time_rule(self) -> "EventTimeRule":
        from .event_time import EventTimeRule

        return EventTimeRule(self.max_future_skew_s, self.future_policy, self.allowed_lateness_s, self.max_age_s)

    def validate(self) -> None:
        try:
            self.event_time_rule().validate("pipeline")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.batch_max_size < 1:
            raise ConfigError("pipeline.batch_max_size must be at least 1")
        if self.batch_max_delay_ms < 1:
            raise ConfigError("pipeline.batch_max_delay_ms must be at least 1")
        if self.queue_max_spans < self.batch_max_size:
            raise ConfigError("pipeline.queue_max_spans must be greater or equal to pipeline.batch_max_size")
        if self.queue_max_wait_ms < 0:
            raise ConfigError(f"pipeline.queue_max_wait_ms must be 0 (off) or positive (got {self.queue_max_wait_ms})")
        if self.snapshot_interval_s <= 0:
            raise ConfigError("pipeline.snapshot_interval_s must be positive")
        if not 0 < self.retrain_max_share <= 1:
            raise ConfigError(f"pipeline.retrain_max_share must be in (0, 1], got {self.retrain_max_share!r}")
        if not 0 <= self.retrain_max_models <= 10_000:
            raise ConfigError("pipeline.retrain_max_models must be in [0, 10000] (0: no cap), "
                              f"got {self.retrain_max_models!r}")
        if self.snapshot_process not in SNAPSHOT_PROCESS:
            raise ConfigError(f"pipeline.snapshot_process: {self.snapshot_process!r} is not one of "
                              f"{', '.join(SNAPSHOT_PROCESS)}")
        if not 0 <= self.gc_young_threshold <= 10_000_000:
            raise ConfigError(f"pipeline.gc_young_threshold must be in [0, 10000000], got {self.gc_young_threshold!r}")
        if not 0 <= self.switch_interval_ms <= 100:
            raise ConfigError(f"pipeline.switch_interval_ms must be in [0, 100], got {self.switch_interval_ms!r}")


@dataclass
class AlertsConfig:
    group_window_s: float = 600.0
    """Findings with the same dedup key within this event-time window are one alert."""

    def validate(self) -> None:
        if self.group_window_s < 0:
            raise ConfigError("alerts.group_window_s must not be negative")


@dataclass
class KafkaConfig:
    """The Kafka receiver: consume what the OpenTelemetry Collector's Kafka exporter writes."""

    enabled: bool = False
    bootstrap_servers: str = "localhost:9092"
    """Comma-separated ``HOST:PORT`` list."""
    topic: str = "otlp_spans"
    """The Kafka exporter's default traces topic."""
    group_id: str = "toolwatch"
    encoding: str = "otlp_proto"
    """``otlp_proto`` or ``otlp_json`` (the exporter's encodings), or ``auto`` (sniff each record)."""
    dead_letter_topic: str = ""
    """Where undecodable records go; empty = the file ``<data_dir>/kafka-dead-letter.jsonl``."""
    client_id: str = "toolwatch"
    auto_offset_reset: str = "earliest"
    commit_interval_ms: int = 1000
    """How often processed offsets are committed (each commit first snapshots detector state)."""
    max_poll_records: int = 2000
    max_poll_interval_ms: int = 10000
    """Also the group's rebalance timeout: a few seconds keeps joins quick on every broker."""
    session_timeout_ms: int = 10000
    state_changelog_topic: str = ""
    """Scale-out (several daemons, one group): compacted topic, co-partitioned with ``topic``, holding
    each agent's detector state so it moves with its partition. Empty = single node (SQLite only)."""
    decode_processes: int | str = AUTO
    """Records decoded and normalised in this many worker processes; 0 = in the consumer thread;
    ``auto`` = 1 when this process can use at least 2 CPUs, else 0 (receivers/decode_workers.py)."""

    ENCODINGS = ("otlp_proto", "otlp_json", "auto")

    @property
    def changelog(self) -> bool:
        """Whether the scale-out state changelog is in use (Kafka on, with a ``state_changelog_topic``)."""
        return self.enabled and bool(self.state_changelog_topic)

    def validate(self) -> None:
        if not self.enabled:
            return
        servers = [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
        if not servers:
            raise ConfigError("kafka.bootstrap_servers: empty; give HOST:PORT[,HOST:PORT...]")
        for server in servers:
            parse_hostport(server, "kafka.bootstrap_servers")
        for key in ("topic", "group_id"):
            if not getattr(self, key).strip():
                raise ConfigError(f"kafka.{key}: must not be empty")
        if self.encoding not in self.ENCODINGS:
            raise ConfigError(f"kafka.encoding: {self.encoding!r} is not one of {', '.join(self.ENCODINGS)}")
        if self.dead_letter_topic and self.dead_letter_topic == self.topic:
            raise ConfigError("kafka.dead_letter_topic: must differ from kafka.topic")
        if self.state_changelog_topic and self.state_changelog_topic in (self.topic, self.dead_letter_topic):
            raise ConfigError("kafka.state_changelog_topic: must differ from kafka.topic and kafka.dead_letter_topic")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError(f"kafka.auto_offset_reset: {self.auto_offset_reset!r} is not earliest or latest")
        for key in ("commit_interval_ms", "max_poll_records", "max_poll_interval_ms", "session_timeout_ms"):
            if getattr(self, key) < 1:
                raise ConfigError(f"kafka.{key}: must be at least 1")
        check_process_count(self.decode_processes, decode_processes_error)


@dataclass
class Config:
    otlp_http: str = "127.0.0.1:4318"
    otlp_grpc: str = "127.0.0.1:4317"
    otlp_processes: int | str = AUTO
    """Each OTLP receiver (OTLP/HTTP, OTLP/gRPC) in this many worker processes (receive, decode,
    normalise there; the daemon keeps the detectors); 0 = in the daemon's own process; ``auto`` = 1
    when this process can use at least 2 CPUs, else 0 (collector/otlp_processes.py)."""
    cpu_affinity: CpuAffinitySetting = AUTO
    """The CPUs the daemon's own threads (event loop, detectors) keep to; its worker processes keep
    the rest. ``auto`` = the highest-numbered usable CPU when the daemon has worker processes and
    at least 2 CPUs, ``off`` = the OS places them (collector/cpu_affinity.py)."""
    listen: str = "127.0.0.1:9464"
    data_dir: str = "./toolwatch-data"
    api_token: str = ""
    webhook_secret: str = ""
    fingerprint_key: str = ""
    """Key of the keyed fingerprints (hex or text); the same on every agent, proxy and daemon."""
    log_level: str = "info"
    max_body_bytes: int = 8 * 1024 * 1024
    receiver_token: str = ""
    """If set, OTLP receivers require ``Authorization: Bearer <token>``."""
    tls_cert_file: str = ""
    """PEM certificate chain; with tls_key_file, OTLP receivers speak TLS (https, secure gRPC)."""
    tls_key_file: str = ""
    retry_after_s: int = 2
    """Seconds clients are told to wait (Retry-After, gRPC RetryInfo) when the daemon is overloaded."""
    allow_remote: bool = False
    """Binding a non-loopback address must be asked for explicitly."""
    tool_label_cap: int = TOOL_LABEL_CAP
    """Distinct (agent, server, tool) series of ``toolwatch_tool_calls_total``; later ones count as
    ``other`` (collector/metrics.py, ``CallTally``). The default covers a fleet of a few hundred agents."""
    webhooks: list[WebhookConfig] = field(default_factory=list)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    detectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    source: str = "defaults"

    LOG_LEVELS = ("debug", "info", "warning", "error")

    def validate(self) -> None:
        for key in ("otlp_http", "otlp_grpc", "listen"):
            value = getattr(self, key)
            if key != "listen" and value in ("", "off", "none"):
                continue
            host, _ = parse_hostport(value, key)
            if not is_loopback(host) and not self.allow_remote:
                raise ConfigError(
                    f"{key}: {value!r} is not a loopback address; set allow_remote: true "
                    "(or --allow-remote) to listen beyond this host, ideally with api_token set"
                )
        check_process_count(self.otlp_processes, otlp_processes_error)
        try:
            affinity = parse_cpu_affinity(self.cpu_affinity)
            if isinstance(affinity, tuple):  # are they CPUs this process may use?
                choose_cpu_affinity(affinity, helpers=True)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.cpu_affinity = affinity
        if self.log_level not in self.LOG_LEVELS:
            raise ConfigError(f"log_level: {self.log_level!r} is not one of {', '.join(self.LOG_LEVELS)}")
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes must be at least 1024")
        if not self.data_dir:
            raise ConfigError("data_dir must not be empty")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file and tls_key_file: set both (PEM files) to enable TLS, or neither")
        for key in ("tls_cert_file", "tls_key_file"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise ConfigError(f"{key}: {path!r} is not a readable file")
        if isinstance(self.tool_label_cap, bool) or not isinstance(self.tool_label_cap, int) or not 1 <= self.tool_label_cap <= 1_000_000:
            raise ConfigError(
                "tool_label_cap: must be a whole number from 1 to 1000000 (series of toolwatch_tool_calls_total "
                f"before further agent/server/tool combinations count as 'other'), got {self.tool_label_cap!r}"
            )
        if not 1 <= self.retry_after_s <= 3600:
            raise ConfigError(f"retry_after_s: must be between 1 and 3600 seconds, got {self.retry_after_s}")
        names = set()
        for i, hook in enumerate(self.webhooks):
            hook.validate(f"webhooks[{i}]")
            if not hook.name:
                hook.name = f"webhook{i + 1}" if len(self.webhooks) > 1 else "webhook"
            if hook.name in names:
                raise ConfigError(f"webhooks[{i}].name: {hook.name!r} is used twice; names must be unique")
            names.add(hook.name)
        self.pipeline.validate()
        if self.pipeline.snapshot_process == "on" and self.kafka.changelog:
            raise ConfigError("pipeline.snapshot_process: on cannot be used with kafka.state_changelog_topic (each "
                              "snapshot captures the agents' state for the changelog in the daemon); set it to "
                              "auto or off")
        self.alerts.validate()
        self.kafka.validate()
        for name, conf in self.detectors.items():
            if not isinstance(conf, dict):
                raise ConfigError(f"detectors.{name}: must be a mapping of settings, got {type(conf).__name__}")

    def enabled(self, key: str) -> bool:
        return getattr(self, key) not in ("", "off", "none")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def _dataclass_from(cls: type, data: Any, key: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key}: must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        default = known[name].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{key}.{name}: must be true or false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key}.{name}: must be a number, got {value!r}")
            if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{key}.{name}: must be a whole number, got {value!r}")
            value = type(default)(value)
        elif isinstance(default, str):
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise ConfigError(f"{key}.{name}: must be a string, got {value!r}")
            value = str(value)
        kwargs[name] = value
    return cls(**kwargs)


def config_from_mapping(data: Any, source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of settings, got {type(data).__name__}")
    data = dict(data)
    webhooks = data.pop("webhooks", []) or []
    pipeline = data.pop("pipeline", {}) or {}
    if isinstance(pipeline, Mapping) and isinstance(pipeline.get("snapshot_process"), bool):
        pipeline = {**pipeline, "snapshot_process": "on" if pipeline["snapshot_process"] else "off"}  # YAML's on/off
    alerts = data.pop("alerts", {}) or {}
    detectors = data.pop("detectors", {}) or {}
    kafka = data.pop("kafka", {}) or {}
    decode_processes: int | str = AUTO
    if isinstance(kafka, Mapping) and "decode_processes" in kafka:
        kafka = dict(kafka)
        decode_processes = parse_process_count(kafka.pop("decode_processes"), decode_processes_error)
    data.pop("source", None)
    otlp_processes = parse_process_count(data.pop("otlp_processes")) if "otlp_processes" in data else AUTO
    cpu_affinity = _cpu_affinity(data.pop("cpu_affinity")) if "cpu_affinity" in data else AUTO
    cfg = _dataclass_from(Config, data, source)
    cfg.otlp_processes = otlp_processes
    cfg.cpu_affinity = cpu_affinity
    if not isinstance(webhooks, list):
        raise ConfigError(f"{source}: webhooks must be a list of {{url: ..., name: ...}} entries")
    for i, hook in enumerate(webhooks):
        if isinstance(hook, str):
            hook = {"url": hook}
        if isinstance(hook, Mapping) and "url" not in hook:
            raise ConfigError(f"webhooks[{i}].url: missing; every webhook needs a url")
        cfg.webhooks.append(_dataclass_from(WebhookConfig, hook, f"webhooks[{i}]"))
    cfg.pipeline = _dataclass_from(PipelineConfig, pipeline, "pipeline")
    cfg.alerts = _dataclass_from(AlertsConfig, alerts, "alerts")
    cfg.kafka = _dataclass_from(KafkaConfig, kafka, "kafka")
    cfg.kafka.decode_processes = decode_processes
    if not isinstance(detectors, Mapping):
        raise ConfigError("detectors: must be a mapping of detector name -> settings")
    cfg.detectors = {str(k): (dict(v) if isinstance(v, Mapping) else v) for k, v in detectors.items()}
    cfg.source = source
    return cfg


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective config. ``overrides`` are command-line values (None = not given)."""
    env = os.environ if environ is None else environ
    path = path or env.get(envvars.CONFIG) or None
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot be read ({exc.strerror or exc})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"config file {path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        cfg = config_from_mapping(data, source=str(path))
    else:
        cfg = Config()
    for name, var in envvars.SCALAR_FIELDS.items():
        if var in env and env[var] != "":
            setattr(cfg, name, env[var])
    if env.get(envvars.WEBHOOK):
        cfg.webhooks.extend(WebhookConfig(url=u.strip()) for u in env[envvars.WEBHOOK].split(",") if u.strip())
    for name, var in envvars.KAFKA_FIELDS.items():
        if env.get(var):
            setattr(cfg.kafka, name, env[var])
            if name == "bootstrap_servers":
                cfg.kafka.enabled = True
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name == "kafka_bootstrap":
            cfg.kafka.bootstrap_servers, cfg.kafka.enabled = value, True
        elif name == "webhooks":
            cfg.webhooks.extend(WebhookConfig(url=u) for u in value)
        elif name == "otlp_processes":
            cfg.otlp_processes = parse_process_count(value)
        elif name == "cpu_affinity":
            cfg.cpu_affinity = _cpu_affinity(value)
        else:
            setattr(cfg, name, value)
    if cfg.webhook_secret:
        for hook in cfg.webhooks:
            hook.secret = hook.secret or cfg.webhook_secret
    cfg.validate()
    return cfg
