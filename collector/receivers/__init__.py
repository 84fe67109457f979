"""Receivers: sources of span batches. Each owns its wire format and its limits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..metrics import Metrics
from ..normalize import Normalized, Normalizer
from ..otlp import Decoded
from ..pipeline import Pipeline
from .tls import TlsFiles


class Receiver(ABC):
    name: str = ""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def shutdown(self) -> None:
        """Safe without start and safe twice."""


class NetworkReceiver(Receiver):
    """Settings shared by the receivers that listen on a socket (OTLP/HTTP, OTLP/gRPC)."""

    bound_port: int | None = None

    def __init__(
        self,
        host: str,
        port: int,
        ingest: "Ingest",
        metrics: Metrics,
        *,
        max_body_bytes: int,
        retry_after_s: int = 2,
        bearer_token: str = "",
        tls: "TlsFiles | None" = None,
    ) -> None:
        self.host, self.port = host, port
        self.ingest = ingest
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.retry_after_s = retry_after_s
        self.bearer_token = bearer_token
        self._auth = f"Bearer {bearer_token}"
        self.tls = tls

    def refuse_early(self) -> None:
        """``Ingest.refuse_early`` for this receiver (a worker process asks the depth the daemon shares)."""
        self.ingest.refuse_early(self.name)

    def _count_rejected(self, reason: str) -> None:
        """Count a request refused here (a worker process sends the count to the daemon instead)."""
        self.metrics.requests_rejected.labels(self.name, reason).inc()

    async def admit(self, decoded: Decoded) -> "IngestResult":
        """Normalise and queue a decoded request; raises ``Overloaded`` or ``Unavailable``.

        In the daemon this is ``Ingest`` itself; a worker process (``otlp_processes``) normalises
        the request and asks the daemon to admit it (``otlp_worker_main.DaemonAdmitted``)."""
        return self.ingest(self.name, decoded.request, decoded.rejected, tuple(decoded.errors))


def span_count(req: ExportTraceServiceRequest) -> int:
    """Spans in a request: an upper bound of the events it can add to the queue."""
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


class Overloaded(Exception):
    """The pipeline queue is full: tell the client to retry later (HTTP 429, RESOURCE_EXHAUSTED)."""


class Unavailable(Exception):
    """The pipeline is not running (starting up or draining): retry later (HTTP 503, UNAVAILABLE)."""


@dataclass
class IngestResult:
    spans: int
    rejected: int
    message: str


class Ingest:
    """Shared by every receiver: normalise a decoded request, count it, hand it to the pipeline."""

    def __init__(self, normalizer: Normalizer, pipeline: Pipeline, metrics: Metrics) -> None:
        self.normalizer = normalizer
        self.pipeline = pipeline
        self.metrics = metrics

    def __call__(
        self, receiver: str, req: ExportTraceServiceRequest, decode_rejected: int = 0, decode_errors: tuple[str, ...] = ()
    ) -> IngestResult:
        """Normalise, count and admit one decoded request; raises ``Overloaded`` or ``Unavailable``.

        A request whose spans cannot all fit in the queue is refused before it is normalised.
        Under sustained overload the queue stays full and exporters resend refused requests
        every few milliseconds; normalising each resend only to throw it away took more CPU than
        the detectors had left, so throughput fell the longer the backlog lasted (issue #4).
        """
        self._refuse(receiver, span_count(req))
        return self.consume(receiver, self.normalizer.normalize(req), decode_rejected, decode_errors)

    def refuse_early(self, receiver: str) -> None:
        """Raise ``Overloaded`` when no request with spans could be admitted now: the queue is full
        to its last span, or behind. Receivers ask before they decompress and decode a body; under
        a retry storm, decoding each resend only to refuse it cost the daemon's CPU (in-process)."""
        self._refuse(receiver, 1)

    def _refuse(self, receiver: str, spans: int) -> None:
        """Raise ``Overloaded`` when a request of ``spans`` spans cannot fit now (``Pipeline.full_for``),
        only while the pipeline runs: a stopped one (draining) is ``consume``'s ``Unavailable``."""
        if self.pipeline.running and self.pipeline.full_for(spans):
            raise self._queue_full(receiver)

    def _queue_full(self, receiver: str) -> Overloaded:
        """Count a queue_full refusal; the exception to raise (both refusals answer alike)."""
        self.metrics.requests_rejected.labels(receiver, "queue_full").inc()
        pipe = self.pipeline
        why = (f"the oldest for {pipe.oldest_wait_s() * 1000:.0f} ms, past pipeline.batch_max_delay_ms + queue_max_wait_ms"
               if pipe.behind() else f"of pipeline.queue_max_spans {pipe.queue_max}")
        return Overloaded(f"pipeline queue is full ({pipe.depth} events waiting, {why}); retry later")

    def consume(self, receiver: str, norm: Normalized, decode_rejected: int = 0, decode_errors: tuple[str, ...] = ()) -> IngestResult:
        """Admit normalised events; ``decode_rejected`` spans were already lost to decoding."""
        if not self.pipeline.running:
            self.metrics.requests_rejected.labels(receiver, "unavailable").inc()
            raise Unavailable("the daemon is starting or shutting down; retry later")
        adm = self.pipeline.admit(norm.calls, norm.listings)
        if not adm.accepted:
            raise self._queue_full(receiver)
        spans = norm.spans + decode_rejected
        self.metrics.spans_received.labels(receiver).inc(spans)
        errors = [*decode_errors, *norm.errors]
        if decode_rejected:
            self.metrics.spans_rejected.labels(receiver, "undecodable").inc(decode_rejected)
        if norm.rejected:
            self.metrics.spans_rejected.labels(receiver, "invalid_span").inc(norm.rejected)
        for reason, n in adm.verdict.rejected.items():
            self.metrics.spans_rejected.labels(receiver, f"event_time_{reason}").inc(n)
            errors.append(f"{n} span(s) rejected by the event-time rule: {reason} (see docs/ingestion.md)")
        rejected = decode_rejected + norm.rejected + adm.verdict.rejected_total
        return IngestResult(spans, rejected, "; ".join(errors[:8]))
