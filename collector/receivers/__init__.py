"""Receivers: sources of span batches. Each owns its wire format and its limits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..metrics import Metrics
from ..normalize import Normalizer
from ..pipeline import Pipeline


class Receiver(ABC):
    name: str = ""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def shutdown(self) -> None:
        """Safe without start and safe twice."""


class Overloaded(Exception):
    """The pipeline queue is full: tell the client to retry later."""


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

    def __call__(self, receiver: str, req: ExportTraceServiceRequest) -> IngestResult:
        norm = self.normalizer.normalize(req)
        if not self.pipeline.submit(norm.calls, norm.listings):
            self.metrics.requests_rejected.labels(receiver, "queue_full").inc()
            raise Overloaded(f"pipeline queue is full ({self.pipeline.depth} events waiting); retry later")
        self.metrics.spans_received.labels(receiver).inc(norm.spans)
        if norm.rejected:
            self.metrics.spans_rejected.labels(receiver, "invalid_span").inc(norm.rejected)
        return IngestResult(norm.spans, norm.rejected, "; ".join(norm.errors))
