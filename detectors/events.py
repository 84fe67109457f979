"""Events the detectors read and findings they write: plain dataclasses, no I/O."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high", "critical")
"""Ordered from least to most severe; index = rank."""


def severity_rank(severity: str) -> int:
    """Rank of a severity name; unknown names rank as ``info`` so they never outrank real ones."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        return 0


class _CallToken:
    """The slot ``ToolCall.token`` lives in: outside the dataclass's fields, so field order,
    equality, ``repr`` and the worker frames' field tuples are what they were without it."""

    __slots__ = ("token",)


def tool_token(server: str, tool: str) -> str:
    """``server/tool`` (just ``tool`` without a server): a call's ``token``, the unit of call-sequence
    models, for code that has a server and tool but no call."""
    return f"{server}/{tool}" if server else tool


@dataclass(slots=True)
class ToolCall(_CallToken):
    """One tool call, normalised from whatever span convention carried it.

    Times are event times from the span (nanoseconds since the epoch), never arrival times, so
    a replay of recorded traffic gives the same findings as live ingestion.

    ``token`` (``server/tool``, the unit of call-sequence models) is set once, when the call is
    built: detectors read it several times per call, and an f-string per read cost more than
    the rest of some of those reads. A call's ``server`` and ``tool`` are therefore settled when
    it is built; to change one, build another call (``dataclasses.replace``).
    """

    time_ns: int
    agent_id: str
    tool: str
    server: str = ""
    session_id: str = ""
    duration_ns: int = 0
    trace_id: str = ""
    span_id: str = ""
    request_id: str = ""
    agent_name: str = ""
    server_address: str = ""
    error_type: str = ""
    args_json: str = ""
    """Redacted arguments (JSON text); never raw values."""
    args_bytes: int = 0
    result_bytes: int = 0
    args_labels: tuple[str, ...] = ()
    result_labels: tuple[str, ...] = ()
    args_fingerprints: tuple[str, ...] = ()
    result_fingerprints: tuple[str, ...] = ()
    args_sketch: tuple[int, ...] = ()
    result_sketch: tuple[int, ...] = ()
    result_injection_score: float = 0.0
    destinations: tuple[str, ...] = ()
    definition_sha256: str = ""
    source: str = ""
    """Which convention the span used (toolwatch, genai, openllmetry, openinference, …)."""

    def __post_init__(self) -> None:
        self.token = f"{self.server}/{self.tool}" if self.server else self.tool  # tool_token, inlined (per call)

    @property
    def is_error(self) -> bool:
        return bool(self.error_type)


@dataclass(slots=True, frozen=True)
class ToolDefinition:
    """A tool as a server lists it; what poisoning and rug-pulls change."""

    name: str
    description: str = ""
    input_schema: Any = None
    output_schema: Any = None
    annotations: Any = None
    title: str = ""

    def canonical(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": self.input_schema,
            "outputSchema": self.output_schema,
            "annotations": self.annotations,
        }

    def sha256(self) -> str:
        """Hash of the whole canonical definition, so a change to any part shows."""
        return canonical_sha256(self.canonical())


def canonical_sha256(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(slots=True)
class ToolListing:
    """A ``tools/list`` result seen for one server in one session."""

    time_ns: int
    agent_id: str
    server: str
    tools: tuple[ToolDefinition, ...]
    session_id: str = ""
    server_version: str = ""
    instructions_sha256: str = ""
    trace_id: str = ""
    span_id: str = ""
    after_list_changed: bool = False
    source: str = ""


_CALL_TIME = attrgetter("time_ns")


@dataclass(slots=True)
class Batch:
    """A micro-batch handed to every detector; ``watermark_ns`` is the event-time clock."""

    calls: list[ToolCall] = field(default_factory=list)
    listings: list[ToolListing] = field(default_factory=list)
    watermark_ns: int = 0
    _by_time: tuple[list[ToolCall], int, list[ToolCall]] | None = field(
        default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.calls) + len(self.listings)

    def by_time(self) -> list[ToolCall]:
        """The calls in event-time order (a stable sort): made once per batch and shared, not modified.

        Why: several detectors walk a batch in time order, and each sorted it (~30 ns a call).
        Sorted again when ``calls`` is another list or another length than it was."""
        calls = self.calls
        memo = self._by_time
        if memo is None or memo[0] is not calls or memo[1] != len(calls):
            memo = self._by_time = (calls, len(calls), sorted(calls, key=_CALL_TIME))
        return memo[2]

    def calls_in_time_order(self) -> None:
        """Declare ``calls`` already stably sorted by event time (the pipeline sorts every batch):
        ``by_time`` then hands out ``calls`` itself instead of sorting a copy of a sorted list
        (~25 ns a call), until ``calls`` is replaced or changes length."""
        calls = self.calls
        self._by_time = (calls, len(calls), calls)


@dataclass(slots=True)
class Finding:
    """What a detector concluded, with the evidence an operator needs to act; never a raw secret."""

    detector: str
    severity: str
    agent_id: str
    reason: str
    time_ns: int
    session_id: str = ""
    server: str = ""
    tool: str = ""
    span_ids: tuple[str, ...] = ()
    trace_ids: tuple[str, ...] = ()
    score: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)
    """JSON-safe details: fingerprint ids, diffs, rates, feature contributions."""
    dedup_key: str = ""
    """Findings with the same key within the grouping window are one incident."""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")
        if not self.dedup_key:
            self.dedup_key = f"{self.detector}:{self.agent_id}:{self.server}/{self.tool}"

    @classmethod
    def about(cls, call: ToolCall, **fields: Any) -> "Finding":
        """A finding about one call: who, when, where and which span come from the call."""
        return cls(
            agent_id=call.agent_id,
            time_ns=call.time_ns,
            session_id=call.session_id,
            server=call.server,
            tool=call.tool,
            span_ids=(call.span_id,) if call.span_id else (),
            trace_ids=(call.trace_id,) if call.trace_id else (),
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "severity": self.severity,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "server": self.server,
            "tool": self.tool,
            "reason": self.reason,
            "time_ns": self.time_ns,
            "span_ids": list(self.span_ids),
            "trace_ids": list(self.trace_ids),
            "score": self.score,
            "evidence": self.evidence,
            "dedup_key": self.dedup_key,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finding":
        return cls(
            detector=str(data["detector"]),
            severity=str(data["severity"]),
            agent_id=str(data["agent_id"]),
            reason=str(data["reason"]),
            time_ns=int(data["time_ns"]),
            session_id=str(data.get("session_id", "")),
            server=str(data.get("server", "")),
            tool=str(data.get("tool", "")),
            span_ids=tuple(data.get("span_ids", ())),
            trace_ids=tuple(data.get("trace_ids", ())),
            score=float(data.get("score", 0.0)),
            evidence=dict(data.get("evidence", {})),
            dedup_key=str(data.get("dedup_key", "")),
        )


def destination_key(destination: str) -> str:
    """What makes a destination new: its host (or e-mail domain), not the full URL.

    Emitters report hosts, e-mail domains and URLs; every page of a site is a new URL, so
    newness is judged on the host, lower-cased, without port or credentials.
    """
    d = destination.strip().lower()
    if "://" in d:
        d = d.split("://", 1)[1]
        d = d.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        d = d.rsplit("@", 1)[-1]
        if not d.startswith("["):
            d = d.split(":", 1)[0]
    elif "@" in d:
        d = d.rsplit("@", 1)[-1]
    return d


def destination_keys(destinations: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k for k in map(destination_key, destinations) if k))
