"""Workloads of the ingest benches (bench/ingest.py, bench/ingest_kafka.py, bench/stages.py).

One module, so figures of the three transports are measured on the same traffic. Three workloads,
chosen with ``--workload`` in every bench:

- ``fleet`` (default): ``agents`` agents (200), each with its own routine: a small Markov chain
  over its own 3-8 tools, drawn from a catalog of 10 servers / 40 tools, walked in sessions of
  5-60 calls that end (a new session id each time). Agents share 20 routine shapes (``Job``: which
  tools, which may follow which), as a fleet runs the same agent for many users; each agent has
  its own transition weights, session lengths, destinations and activity. Argument and result sizes are lognormal per
  tool; some calls carry argument labels, fingerprints and destinations, and some results labels
  and fingerprints, as the instrumentation emits them. Rare injected anomalies (``anomaly_rate``
  of the calls, default 0.1%): an unusual tool, a burst (one long session of one tool with large
  results) and a sensitive read followed by a send of the same value to a new destination, so
  the alert path runs but does not dominate. A routine never pairs a tool that reads sensitive
  data with one that sends out (by the detectors' own name heuristics): that flow is the anomaly.
- ``random``: ``make_body``, the benches' original workload: every span a random agent (50), tool
  (6) and never-ending session (500); every session hops between unrelated tools, so a large
  share of spans raise findings. A stress test of the alert path, not a fleet.
- ``routine``: ingest_kafka.py's original workload (tests/helpers/otlp_calls.workload): 40 agents
  alternating two tools in one endless session each. Trivially predictable.

Every OTLP span carries the same 13 attributes, in ``make_body``'s order (optional label,
fingerprint and destination attributes follow them). The load generators must never be the
bottleneck, so a fleet is encoded once into a pool of request bodies (``FleetTraffic``) that each
request re-stamps in place: fresh trace/span ids, event times advancing with the wall clock at the
offered rate, and a pass number written into every session id (and into the anomalies' tool names,
destinations and fingerprints), so a replayed pool still ends its sessions and its anomalies are
still news. All of that is fixed-width, so re-stamping is a few vectorised byte writes, not a
protobuf walk. The pass number is written in decimal digits: in hex its letters could spell a word
the capability heuristics read (``..._3db1a2c3`` is a ``db`` tool that reads sensitive data), and
one such pass made every later send of the agents given its unusual tools an exfiltration finding.
"""

from __future__ import annotations

import bisect
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from toolwatch.detectors.capabilities import READS_SENSITIVE, SENDS_OUT, heuristic_capabilities
from toolwatch.instrumentation import semconv as sc

WORKLOADS = ("fleet", "random", "routine")
DEFAULT_WORKLOAD = "fleet"

STAMP = "~~~~~~~~"
"""Placeholder for the pass number (8 decimal digits, ``STAMP_DIGITS``) in session ids and anomaly names.
Digits only: the capability heuristics split names into words, and hex letters make words (``db``,
``feed``) that would give a stamped tool capabilities its catalog tool does not have."""
STAMP_DIGITS = 8
_STAMP_BYTES = STAMP.encode()
_TRACE_MARK = b"\xfe\xedTWtr"  # trace-id placeholder prefix (6 bytes) + span index (10 bytes)
ANOMALY_KINDS = ("unusual_tool", "burst", "exfiltration")
PROTOCOL_VERSION = "2025-06-18"


# --- the original workloads ------------------------------------------------------------------------
AGENTS = [f"agent-{i}" for i in range(50)]
TOOLS = [("files", "read_file"), ("files", "write_file"), ("web", "fetch"), ("mail", "send"), ("db", "query"), ("git", "commit")]


def _set(span: Any, key: str, value: Any) -> None:
    kv = span.attributes.add()
    kv.key = key
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, (list, tuple)):
        kv.value.array_value.SetInParent()
        for v in value:
            kv.value.array_value.values.add().string_value = v
    else:
        kv.value.string_value = value


def make_body(n: int, seed: int) -> bytes:
    """``random``: one request of ``n`` toolwatch tool-call spans (13 attributes each), timestamps near now."""
    rnd = random.Random(seed)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _set(rs.resource, "service.name", "bench-agent")
    ss = rs.scope_spans.add()
    ss.scope.name = "toolwatch.instrumentation"
    now = time.time_ns()
    for i in range(n):
        server, tool = rnd.choice(TOOLS)
        span = ss.spans.add()
        span.name = f"tools/call {tool}"
        span.kind = 3
        span.trace_id = rnd.randbytes(16)
        span.span_id = rnd.randbytes(8)
        span.start_time_unix_nano = now + i * 1000
        span.end_time_unix_nano = now + i * 1000 + 2_000_000
        _set(span, sc.MCP_METHOD_NAME, sc.METHOD_TOOLS_CALL)
        _set(span, sc.GEN_AI_OPERATION_NAME, sc.OP_EXECUTE_TOOL)
        _set(span, sc.GEN_AI_TOOL_NAME, tool)
        _set(span, sc.GEN_AI_AGENT_ID, rnd.choice(AGENTS))
        _set(span, sc.MCP_SESSION_ID, f"s-{rnd.randrange(500)}")
        _set(span, sc.TW_SERVER_NAME, server)
        _set(span, sc.JSONRPC_REQUEST_ID, str(i))
        _set(span, sc.GEN_AI_TOOL_CALL_ARGUMENTS, '{"path": "<path>", "mode": "r"}')
        _set(span, sc.TW_REDACTED, True)
        _set(span, sc.TW_ARGS_BYTES, 40 + i % 50)
        _set(span, sc.TW_RESULT_BYTES, 1000 + i % 999)
        _set(span, sc.TW_ARGS_LABELS, ["path"])
        _set(span, sc.MCP_PROTOCOL_VERSION, PROTOCOL_VERSION)
    return req.SerializeToString()


class LiveTraffic:
    """``random`` made live: each request is re-stamped with event times that advance with the wall
    clock, fresh trace and span ids, and per-agent sessions that end (a new session id after 5..60
    calls). Replaying the same few bodies instead repeats event times, ids and 500 never-ending
    sessions, which is not what a daemon running for weeks sees."""

    SESSION_ATTR = 4  # index of mcp.session.id in make_body's attribute order
    AGENT_ATTR = 3

    def __init__(self, bodies: list[bytes], seed: int) -> None:
        self.reqs = [ExportTraceServiceRequest.FromString(b) for b in bodies]
        self.rnd = random.Random(seed)
        self.seed = seed
        self.sessions: dict[str, list[int]] = {}  # agent -> [session number, calls left]
        self.n = 0

    def body(self, i: int) -> bytes:
        req = self.reqs[i % len(self.reqs)]
        spans = req.resource_spans[0].scope_spans[0].spans
        now = time.time_ns()
        ids = os.urandom(24 * len(spans))
        rnd, sessions = self.rnd, self.sessions
        for j, span in enumerate(spans):
            span.trace_id = ids[24 * j:24 * j + 16]
            span.span_id = ids[24 * j + 16:24 * j + 24]
            span.start_time_unix_nano = now + j * 1000
            span.end_time_unix_nano = now + j * 1000 + 2_000_000
            agent = span.attributes[self.AGENT_ATTR].value.string_value
            s = sessions.get(agent)
            if s is None or s[1] <= 0:
                self.n += 1
                s = sessions[agent] = [self.n, rnd.randrange(5, 61)]
            s[1] -= 1
            span.attributes[self.SESSION_ATTR].value.string_value = f"s-{self.seed}-{s[0]}"
        return req.SerializeToString()


class Replay:
    """The same bodies over and over (the max-rate runs of ``random`` and ``routine``)."""

    def __init__(self, bodies: list[bytes]) -> None:
        self.bodies = bodies

    def body(self, i: int) -> bytes:
        return self.bodies[i % len(self.bodies)]

    def fresh(self, rate: float | None = None) -> "Replay":
        return self


def _otlp_calls() -> Any:
    """tests/helpers/otlp_calls (the ``routine`` workload and the Kafka record format)."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from helpers import otlp_calls

    return otlp_calls


def routine_bodies(n_spans: int, batch: int, agents: int = 40) -> list[bytes]:
    """``routine`` as request bodies of ``batch`` spans, in the order the calls were made."""
    oc = _otlp_calls()
    calls = oc.workload(agents=agents, calls_per_agent=max(1, -(-n_spans // agents)), new_tool_every=997)[:n_spans]
    return [oc.request(calls[i:i + batch]).SerializeToString() for i in range(0, len(calls), batch)]


# --- the fleet -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One catalog tool: sizes are lognormal (median bytes, log-sigma)."""

    server: str
    tool: str
    args: tuple[float, float]
    result: tuple[float, float]
    args_json: str
    args_labels: tuple[str, ...] = ()
    result_labels: tuple[str, ...] = ()
    """Labels some of its results carry (each call: with probability ``label_p``)."""
    label_p: float = 0.0
    destinations: tuple[str, ...] = ()
    """Destinations it names: the agent picks 1-3 of these for good."""

    @property
    def token(self) -> str:
        return f"{self.server}/{self.tool}"


def _spec(server: str, tool: str, args: float, result: float, arg: str, **kw: Any) -> ToolSpec:
    return ToolSpec(server, tool, (args, 0.5), (result, kw.pop("sigma", 1.0)), '{"%s":"<%s>"}' % (arg, arg), **kw)


CATALOG: tuple[ToolSpec, ...] = (
    _spec("files", "read_file", 60, 4000, "path", args_labels=("path",)),
    _spec("files", "write_file", 2000, 40, "path", args_labels=("path",)),
    _spec("files", "list_dir", 50, 800, "path", args_labels=("path",), sigma=0.6),
    _spec("files", "search_files", 80, 1500, "query"),
    _spec("git", "status", 30, 600, "repo", sigma=0.5),
    _spec("git", "diff", 40, 3000, "repo"),
    _spec("git", "commit", 300, 200, "message", sigma=0.4),
    _spec("git", "log", 40, 2500, "repo"),
    _spec("web", "fetch", 120, 20000, "url", args_labels=("url",), sigma=1.2,
          destinations=("docs.python.org", "developer.mozilla.org", "pypi.org", "github.com", "stackoverflow.com")),
    _spec("web", "search", 60, 3000, "query", sigma=0.7),
    _spec("web", "http_post", 400, 300, "url", args_labels=("url",), destinations=("hooks.example.com",)),
    _spec("web", "screenshot", 100, 90000, "url", args_labels=("url",), sigma=0.8,
          destinations=("status.example.com",)),
    _spec("mail", "search_inbox", 60, 2000, "query", result_labels=("email",), label_p=0.6, sigma=0.7),
    _spec("mail", "read_message", 30, 6000, "id", result_labels=("email",), label_p=0.9),
    _spec("mail", "draft", 900, 100, "to", args_labels=("email",), sigma=0.5),
    _spec("mail", "send_message", 1200, 80, "to", args_labels=("email",), sigma=0.5,
          destinations=("example.com", "example.org", "partner.example.net")),
    _spec("calendar", "list_events", 40, 1500, "range", sigma=0.6),
    _spec("calendar", "create_event", 300, 120, "title", args_labels=("email",), sigma=0.4),
    _spec("calendar", "find_slot", 60, 400, "range", sigma=0.4),
    _spec("calendar", "cancel_event", 30, 60, "id", sigma=0.3),
    _spec("db", "query", 200, 40000, "sql", sigma=1.3),
    _spec("db", "list_tables", 20, 600, "schema", sigma=0.4),
    _spec("db", "describe", 40, 1200, "table", sigma=0.5),
    _spec("db", "explain", 200, 900, "sql", sigma=0.5),
    _spec("tickets", "search_tickets", 60, 1500, "query", sigma=0.6),
    _spec("tickets", "get_ticket", 20, 3000, "id", result_labels=("email",), label_p=0.3, sigma=0.8),
    _spec("tickets", "update_ticket", 300, 100, "id", sigma=0.4),
    _spec("tickets", "reply", 800, 100, "body", args_labels=("email",), sigma=0.5,
          destinations=("customers.example.com",)),
    _spec("crm", "lookup_customer", 40, 900, "name", result_labels=("email",), label_p=0.8, sigma=0.5),
    _spec("crm", "update_customer", 300, 80, "id", sigma=0.4),
    _spec("crm", "list_accounts", 40, 5000, "filter", sigma=0.8),
    _spec("crm", "account_notes", 30, 2500, "id", sigma=0.7),
    _spec("kb", "search_articles", 60, 2000, "query", sigma=0.6),
    _spec("kb", "get_article", 20, 5000, "id", sigma=0.8),
    _spec("kb", "suggest", 80, 700, "query", sigma=0.5),
    _spec("kb", "related", 20, 900, "id", sigma=0.5),
    _spec("shell", "run_tests", 80, 6000, "cmd", sigma=1.0),
    _spec("shell", "lint", 60, 1500, "cmd", sigma=0.8),
    _spec("shell", "build", 60, 8000, "cmd", sigma=1.0),
    _spec("shell", "format_code", 60, 300, "cmd", sigma=0.5),
)
SERVERS: tuple[str, ...] = tuple(dict.fromkeys(t.server for t in CATALOG))
EXFIL_SINK = next(t for t in CATALOG if t.token == "web/http_post")


def _caps(spec: ToolSpec) -> frozenset[str]:
    return heuristic_capabilities(spec.server, spec.tool)


def _compatible(tools: Iterable[ToolSpec]) -> bool:
    """No tool that reads sensitive data beside one that sends out: with such a pair every send
    after a read is a ``sensitive_then_send`` finding, which is the exfiltration anomaly's job."""
    caps = [_caps(t) for t in tools]
    return not (any(READS_SENSITIVE in c for c in caps) and any(SENDS_OUT in c for c in caps))


def _sends(tools: Iterable[ToolSpec]) -> bool:
    return any(SENDS_OUT in _caps(t) for t in tools)


@dataclass(frozen=True, slots=True)
class Call:
    """One planned call, before encoding (and before its ids and times are stamped)."""

    agent: str
    spec: ToolSpec
    session: str
    """Contains ``STAMP``."""
    args_bytes: int
    result_bytes: int
    duration_ns: int
    tool: str = ""
    """Tool name when it is not ``spec.tool`` (an unusual tool)."""
    args_labels: tuple[str, ...] = ()
    result_labels: tuple[str, ...] = ()
    args_fingerprints: tuple[str, ...] = ()
    result_fingerprints: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    anomaly: str = ""
    """'' for routine calls, else one of ``ANOMALY_KINDS``."""

    @property
    def tool_name(self) -> str:
        return self.tool or self.spec.tool


@dataclass
class Routine:
    """One agent's habits: its tools, who follows whom, how long its sessions run."""

    agent: str
    tools: list[ToolSpec]
    start: list[float]
    """Cumulative start weights over ``tools``."""
    next: list[list[float]]
    """Per tool, cumulative weights over ``tools`` for the next call."""
    session_median: float
    destinations: dict[str, tuple[str, ...]]
    """token -> the destinations this agent uses with it."""
    contacts: tuple[str, ...]
    """Fingerprints of values this agent passes in arguments (its own, never read from a result)."""


def _cum(weights: Iterable[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def _pick(rnd: random.Random, cum: list[float]) -> int:
    return bisect.bisect_right(cum, rnd.random() * cum[-1])


@dataclass(frozen=True, slots=True)
class Job:
    """The shape of a routine several agents share (fleets run the same agent for many users):
    its tools, which tools start a session and which may follow which."""

    tools: tuple[ToolSpec, ...]
    starts: tuple[int, ...]
    follows: tuple[tuple[int, ...], ...]


def make_job(rnd: random.Random) -> Job:
    """3-8 tools from 1-3 servers; no tool that reads sensitive data beside one that sends out.

    Successors: a ring (every tool reachable) plus 0-2 others per tool. The sequence detector
    never learns a transition it flagged, so a habit far rarer than the rest would be flagged for
    good once the agent's baseline is active: weights (per agent) stay within 1:3."""
    while True:
        servers = rnd.sample(SERVERS, rnd.randint(1, 3))
        pool = [t for t in CATALOG if t.server in servers]
        tools = rnd.sample(pool, min(len(pool), rnd.randint(3, 8)))
        if _compatible(tools):
            break
    n = len(tools)
    starts = tuple(rnd.sample(range(n), rnd.randint(1, 2)))
    follows = tuple(tuple(sorted({(i + 1) % n, *rnd.sample(range(n), rnd.randint(0, 2))})) for i in range(n))
    return Job(tuple(tools), starts, follows)


def make_routine(agent: str, job: Job, rnd: random.Random) -> Routine:
    """An agent doing ``job`` its own way: its own weights, session lengths, destinations, contacts."""
    n = len(job.tools)
    start = [rnd.uniform(1, 3) if i in job.starts else 0.0 for i in range(n)]
    nxt = [_cum(rnd.uniform(1, 3) if j in job.follows[i] else 0.0 for j in range(n)) for i in range(n)]
    tools = list(job.tools)
    dests = {t.token: tuple(rnd.sample(t.destinations, rnd.randint(1, min(3, len(t.destinations)))))
             for t in tools if t.destinations}
    contacts = tuple(f"{rnd.getrandbits(64):016x}" for _ in range(3))
    return Routine(agent, tools, _cum(start), nxt, rnd.uniform(8, 25), dests, contacts)


@dataclass(frozen=True)
class FleetConfig:
    agents: int = 200
    jobs: int = 20
    """Routine shapes the agents share (each agent does one, its own way)."""
    anomaly_rate: float = 0.001
    """Share of calls that belong to an injected anomaly (each kind about a third of them)."""
    seed: int = 0

    def validate(self) -> None:
        if self.agents < 1 or self.jobs < 1:
            raise ValueError("fleet: agents and jobs must be at least 1")
        if not 0.0 <= self.anomaly_rate < 0.5:
            raise ValueError("fleet: anomaly_rate must be in [0, 0.5)")


@dataclass
class _Open:
    """An agent's session in progress."""

    number: int
    left: int
    tool: int


class Fleet:
    """The agents of a seeded fleet and the calls they make, in the order they make them."""

    def __init__(self, config: FleetConfig | None = None) -> None:
        self.config = config or FleetConfig()
        self.config.validate()
        rnd = random.Random(f"fleet-{self.config.seed}")
        self.jobs = [make_job(rnd) for _ in range(self.config.jobs)]
        # Jobs drawn at random, not i % jobs: load generators take agents i % parts, and every one
        # should carry every kind of agent (a generator whose agents share no job with the others'
        # would start its agents among mature peers doing other jobs: see the sequence detector's
        # fleet prior).
        self.routines = [make_routine(f"fleet-agent-{i:03d}", rnd.choice(self.jobs), rnd)
                         for i in range(self.config.agents)]
        self.activity = [rnd.lognormvariate(0, 0.7) for _ in self.routines]

    def calls(self, n: int, part: int = 0, parts: int = 1) -> list[Call]:
        """The first ``n`` calls of the agents ``i % parts == part`` (load generator ``part``'s share)."""
        cfg = self.config
        idx = [i for i in range(len(self.routines)) if i % parts == part]
        if not idx:
            raise ValueError(f"fleet: {cfg.agents} agents cannot be shared by {parts} load generators")
        rnd = random.Random(f"calls-{cfg.seed}-{part}-{parts}")
        cum = _cum(self.activity[i] for i in idx)
        quiet = [i for i in idx if not _sends(self.routines[i].tools)]
        open_: dict[int, _Open] = {}
        sessions = Counter[int]()
        out: list[Call] = []
        anomalous = 0
        next_kind = self._next_kind(rnd)
        while len(out) < n:
            a = idx[_pick(rnd, cum)]
            r = self.routines[a]
            # The next anomaly is due when the calls so far owe half of it (the share stays within
            # half an anomaly of the rate at any length); then it comes at a random call soon after.
            if cfg.anomaly_rate and anomalous + _MEAN_LEN[next_kind] / 2 <= cfg.anomaly_rate * len(out) \
                    and rnd.random() < 0.05:
                if next_kind == "exfiltration" and quiet:
                    a = rnd.choice(quiet)  # an agent that never sends: its only send is the leak
                    r = self.routines[a]
                made = self._anomaly(next_kind, a, r, rnd, sessions, open_.get(a))
                out.extend(made)
                anomalous += len(made)
                next_kind = self._next_kind(rnd)
                continue
            s = open_.get(a)
            if s is None or s.left <= 0:
                sessions[a] += 1
                length = min(60, max(5, round(rnd.lognormvariate(math.log(r.session_median), 0.6))))
                s = open_[a] = _Open(sessions[a], length, _pick(rnd, r.start))
            else:
                s.tool = _pick(rnd, r.next[s.tool])
            s.left -= 1
            out.append(self._call(r, r.tools[s.tool], _session(r.agent, s.number), rnd))
        return out[:n]

    @staticmethod
    def _next_kind(rnd: random.Random) -> str:
        # Weighted by 1/length, so each kind makes about a third of the anomalous calls.
        return ANOMALY_KINDS[_pick(rnd, _KIND_CUM)]

    def _call(self, r: Routine, spec: ToolSpec, session: str, rnd: random.Random, scale: float = 1.0,
              **kw: Any) -> Call:
        args = int(rnd.lognormvariate(math.log(spec.args[0]), spec.args[1])) + 2
        result = int(scale * rnd.lognormvariate(math.log(spec.result[0]), spec.result[1])) + 2
        labels = spec.result_labels if spec.result_labels and rnd.random() < spec.label_p else ()
        fields: dict[str, Any] = {
            "args_labels": spec.args_labels,
            "result_labels": labels,
            "result_fingerprints": (f"{rnd.getrandbits(64):016x}",) if labels else (),
            "args_fingerprints": (rnd.choice(r.contacts),) if "email" in spec.args_labels else (),
            "destinations": (rnd.choice(r.destinations[spec.token]),) if spec.token in r.destinations else (),
        }
        fields.update(kw)
        duration = int(rnd.lognormvariate(math.log(30e6), 1.0))
        return Call(r.agent, spec, session, args, result, duration, **fields)

    def _anomaly(self, kind: str, a: int, r: Routine, rnd: random.Random, sessions: Counter[int],
                 open_s: _Open | None) -> list[Call]:
        if kind == "unusual_tool":
            # A catalog tool the agent never uses, named anew on every pass, inside its session.
            spec = rnd.choice([t for t in CATALOG if t not in r.tools and _compatible([*r.tools, t])])
            number = open_s.number if open_s is not None else sessions[a] + 1
            sessions[a] = max(sessions[a], number)
            return [self._call(r, spec, _session(r.agent, number), rnd, tool=f"{spec.tool}_{STAMP}",
                               anomaly=kind)]
        sessions[a] += 1
        session = _session(r.agent, sessions[a])
        if kind == "burst":
            spec = rnd.choice(r.tools)
            n = rnd.randint(*_BURST)
            return [self._call(r, spec, session, rnd, scale=20.0, anomaly=kind) for _ in range(n)]
        # exfiltration: one of its own tools returns personal data, the same value goes out to a
        # new destination through a sender it never uses.
        spec = rnd.choice(r.tools)
        fp = f"{STAMP}{a:08x}"
        read = self._call(r, spec, session, rnd, result_labels=("pii",), result_fingerprints=(fp,), anomaly=kind)
        send = self._call(r, EXFIL_SINK, session, rnd, args_labels=("url",), args_fingerprints=(fp,),
                          destinations=(f"x{STAMP}.exfil.example.net",), anomaly=kind)
        return [read, send]


_BURST = (40, 80)
_MEAN_LEN = {"unusual_tool": 1.0, "burst": sum(_BURST) / 2, "exfiltration": 2.0}
_KIND_CUM = _cum(1 / _MEAN_LEN[k] for k in ANOMALY_KINDS)


def _session(agent: str, number: int) -> str:
    return f"{agent}-{number:06d}-{STAMP}"


# --- encoding and re-stamping ------------------------------------------------------------------------
_TIME_MARK = 0x5EED_0000_0000_0000
_FIXED64_START, _FIXED64_END, _SPAN_ID_TAG = 0x39, 0x41, b"\x12\x08"


@dataclass
class Template:
    """An encoded request whose ids, times and pass number are written per request (``stamp``)."""

    body: bytes
    ids: np.ndarray
    """Byte offsets of every span's trace id (16 bytes) then span id (8), span after span."""
    starts: np.ndarray
    """Byte offsets of the 8 bytes of every span's start time (fixed64, little-endian)."""
    ends: np.ndarray
    durations: np.ndarray
    stamps: np.ndarray
    """Byte offsets of the 8 characters of every ``STAMP``."""
    spans: int = 0
    anomalous: int = 0


def encode(calls: Sequence[Call], service: str = "bench-fleet") -> Template:
    """One OTLP request of ``calls`` (13 attributes each, then the optional ones they carry)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _set(rs.resource, sc.SERVICE_NAME, service)
    ss = rs.scope_spans.add()
    ss.scope.name = "toolwatch.instrumentation"
    for j, c in enumerate(calls):
        tool = c.tool_name
        span = ss.spans.add()
        span.name = f"tools/call {tool}"
        span.kind = 3
        span.trace_id = _TRACE_MARK + j.to_bytes(10, "big")
        span.span_id = bytes(8)
        span.start_time_unix_nano = _TIME_MARK + 2 * j
        span.end_time_unix_nano = _TIME_MARK + 2 * j + 1
        _set(span, sc.MCP_METHOD_NAME, sc.METHOD_TOOLS_CALL)
        _set(span, sc.GEN_AI_OPERATION_NAME, sc.OP_EXECUTE_TOOL)
        _set(span, sc.GEN_AI_TOOL_NAME, tool)
        _set(span, sc.GEN_AI_AGENT_ID, c.agent)
        _set(span, sc.MCP_SESSION_ID, c.session)
        _set(span, sc.TW_SERVER_NAME, c.spec.server)
        _set(span, sc.JSONRPC_REQUEST_ID, str(j))
        _set(span, sc.GEN_AI_TOOL_CALL_ARGUMENTS, c.spec.args_json)
        _set(span, sc.TW_REDACTED, True)
        _set(span, sc.TW_ARGS_BYTES, c.args_bytes)
        _set(span, sc.TW_RESULT_BYTES, c.result_bytes)
        _set(span, sc.TW_ARGS_LABELS, c.args_labels)
        _set(span, sc.MCP_PROTOCOL_VERSION, PROTOCOL_VERSION)
        for key, values in ((sc.TW_RESULT_LABELS, c.result_labels), (sc.TW_ARGS_FINGERPRINTS, c.args_fingerprints),
                            (sc.TW_RESULT_FINGERPRINTS, c.result_fingerprints), (sc.TW_ARGS_DESTINATIONS, c.destinations)):
            if values:
                _set(span, key, values)
    body = req.SerializeToString()
    n = len(calls)
    ids, starts, ends = np.empty((n, 24), np.int64), np.empty((n, 8), np.int64), np.empty((n, 8), np.int64)
    eight, sixteen = np.arange(8), np.arange(16)
    pos = 0
    for j in range(n):
        t = body.index(_TRACE_MARK + j.to_bytes(10, "big"), pos)
        s = t + 18
        start = body.index((_TIME_MARK + 2 * j).to_bytes(8, "little"), s)
        end = body.index((_TIME_MARK + 2 * j + 1).to_bytes(8, "little"), start)
        if body[t + 16:s] != _SPAN_ID_TAG or body[start - 1] != _FIXED64_START or body[end - 1] != _FIXED64_END:
            raise AssertionError("workloads.encode: the span layout is not the one re-stamping expects")
        ids[j, :16], ids[j, 16:] = t + sixteen, s + eight
        starts[j], ends[j] = start + eight, end + eight
        pos = end
    stamps = []
    at = body.find(_STAMP_BYTES)
    while at >= 0:
        stamps.append(at)
        at = body.find(_STAMP_BYTES, at + len(_STAMP_BYTES))
    stamp_idx = (np.array(stamps, np.int64)[:, None] + eight).ravel() if stamps else np.empty(0, np.int64)
    return Template(body, ids.ravel(), starts.ravel(), ends.ravel(), np.array([c.duration_ns for c in calls], np.int64),
                    stamp_idx, n, sum(1 for c in calls if c.anomaly))


def pass_stamp(pass_no: int) -> bytes:
    """What replaces ``STAMP`` for pass ``pass_no``: its last ``STAMP_DIGITS`` decimal digits."""
    return b"%0*d" % (STAMP_DIGITS, pass_no % 10 ** STAMP_DIGITS)


def stamp(t: Template, times_ns: np.ndarray, pass_no: int, ids: bytes) -> bytes:
    """``t`` with these start times, ids (24 bytes a span) and pass number (in every STAMP)."""
    arr = np.frombuffer(t.body, np.uint8).copy()
    arr[t.ids] = np.frombuffer(ids, np.uint8)
    times = np.asarray(times_ns, dtype="<i8")
    arr[t.starts] = times.view(np.uint8)
    arr[t.ends] = (times + t.durations).astype("<i8").view(np.uint8)
    if len(t.stamps):
        arr[t.stamps] = np.tile(np.frombuffer(pass_stamp(pass_no), np.uint8), len(t.stamps) // 8)
    return arr.tobytes()


class FleetTraffic:
    """A pool of encoded fleet requests, re-stamped per request: fresh ids, event times that advance
    with the wall clock at ``rate`` spans/s (never backwards), and the pass number ``stamp_base + i //
    len(pool)``, so each replay of the pool opens new sessions and its anomalies are news again.
    ``stamp_base`` should differ between runs against the same daemon (default: random)."""

    def __init__(self, templates: list[Template], rate: float = 50_000.0, stamp_base: int | None = None,
                 ids_seed: int | None = None) -> None:
        if not templates:
            raise ValueError("FleetTraffic needs at least one request")
        self.templates = templates
        self.rate = rate
        self.step = max(1, int(1e9 / rate))
        self.base = int.from_bytes(os.urandom(4), "big") if stamp_base is None else stamp_base
        self._ids = random.Random(ids_seed).randbytes if ids_seed is not None else os.urandom
        self._last = 0
        self._aranges: dict[int, np.ndarray] = {}

    def fresh(self, rate: float | None = None) -> "FleetTraffic":
        """The same pool for another run against the same daemon: a new pass number base (so its
        sessions and anomalies are new again), event time at ``rate`` spans/s."""
        return FleetTraffic(self.templates, rate or self.rate)

    @property
    def spans_per_pass(self) -> int:
        return sum(t.spans for t in self.templates)

    def body(self, i: int, now_ns: int | None = None) -> bytes:
        t = self.templates[i % len(self.templates)]
        offsets = self._aranges.get(t.spans)
        if offsets is None:
            offsets = self._aranges[t.spans] = np.arange(t.spans, dtype=np.int64) * self.step
        start = max(time.time_ns() if now_ns is None else now_ns, self._last + self.step)
        self._last = start + int(offsets[-1])
        return stamp(t, start + offsets, self.base + i // len(self.templates), self._ids(24 * t.spans))


def fleet_templates(spans: int, batch: int, part: int = 0, parts: int = 1,
                    config: FleetConfig | None = None) -> list[Template]:
    """Load generator ``part``'s share of the fleet: its first ``spans`` calls, ``batch`` a request."""
    calls = Fleet(config).calls(spans, part, parts)
    return [encode(calls[i:i + batch]) for i in range(0, len(calls), batch)]


def traffic(workload: str, spans: int, batch: int, part: int = 0, parts: int = 1, *, seed: int = 0,
            anomaly_rate: float = 0.001, agents: int = 200, rate: float = 50_000.0) -> Any:
    """Load generator ``part`` of ``parts``: an object whose ``body(i)`` is its i-th request.

    ``fleet``: a pool of ``spans`` calls of its own agents, re-stamped per request (``FleetTraffic``);
    ``random`` and ``routine``: the same pre-encoded bodies replayed as they are (``Replay``)."""
    if workload == "fleet":
        cfg = FleetConfig(agents=agents, anomaly_rate=anomaly_rate, seed=seed)
        return FleetTraffic(fleet_templates(spans, batch, part, parts, cfg), rate)
    if workload == "random":
        return Replay([make_body(batch, seed + k) for k in range(8)])
    if workload == "routine":
        return Replay(routine_bodies(spans, batch))
    raise ValueError(f"unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")


def load_traffic(workload: str, clients: int, batch: int, pool_spans: int, *, seed: int = 0,
                 anomaly_rate: float = 0.001, agents: int = 200, rate: float = 100_000.0) -> list[Any]:
    """One traffic per load generator: a fleet's agents are shared out between them (each agent's
    calls come from one generator, in order); ``random`` and ``routine`` send the same bodies from
    every generator, as the benches always did."""
    if workload != "fleet":
        one = traffic(workload, pool_spans, batch, seed=seed)
        return [one] * clients
    return [traffic("fleet", pool_spans, batch, k, clients, seed=seed, anomaly_rate=anomaly_rate, agents=agents,
                    rate=rate) for k in range(clients)]


def first_bodies(traffics: list[Any], n_spans: int, per_body: int) -> list[bytes]:
    """The first requests of the load generators, taken in turn, enough for ``n_spans`` spans (the
    naive baseline's and the calibration's input)."""
    distinct = list({id(t): t for t in traffics}.values())
    n = len(distinct)
    return [distinct[k % n].body(k // n) for k in range(max(1, -(-n_spans // per_body)))]


def describe(workload: str, anomaly_rate: float = 0.001, pool_spans: int = 0, agents: int = 200) -> str:
    """One line for the bench output: which workload the figures are for."""
    if workload == "fleet":
        pool = f", a pool of {pool_spans:,} calls per load process re-stamped per request" if pool_spans else ""
        return (f"fleet: {agents} agents with routines of 3-8 tools out of {len(CATALOG)} on {len(SERVERS)} servers, "
                f"sessions of 5-60 calls, anomaly rate {100 * anomaly_rate:g}%{pool}")
    if workload == "random":
        return "random: make_body (50 agents, 6 tools, 500 never-ending sessions, every span a random hop)"
    if workload == "routine":
        return "routine: 40 agents alternating two tools in one endless session each (tests/helpers/otlp_calls)"
    raise ValueError(f"unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")


def fleet_bodies(spans: int, batch: int, config: FleetConfig | None = None, start_ns: int | None = None,
                 rate: float = 50_000.0) -> list[bytes]:
    """``spans`` fleet calls as request bodies, once through (no replay), event time from ``start_ns``."""
    pool = FleetTraffic(fleet_templates(spans, batch, config=config), rate, stamp_base=0,
                        ids_seed=(config or FleetConfig()).seed)
    start = time.time_ns() if start_ns is None else start_ns
    step = pool.step
    out, at = [], start
    for i, t in enumerate(pool.templates):
        out.append(pool.body(i, now_ns=at))
        at += t.spans * step
    return out


def bodies(workload: str, spans: int, batch: int, *, seed: int = 0, anomaly_rate: float = 0.001,
           start_ns: int | None = None, rate: float = 50_000.0) -> list[bytes]:
    """About ``spans`` spans of ``workload`` as request bodies, once through (bench/stages.py)."""
    if workload == "fleet":
        return fleet_bodies(spans, batch, FleetConfig(anomaly_rate=anomaly_rate, seed=seed), start_ns, rate)
    if workload == "random":
        return [make_body(batch, seed + k) for k in range(-(-spans // batch))]
    if workload == "routine":
        return routine_bodies(spans, batch)
    raise ValueError(f"unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")


def kafka_records(workload: str, spans: int, per_record: int, *, seed: int = 0, anomaly_rate: float = 0.001,
                  agents: int = 40, rate: float = 50_000.0, start_ns: int | None = None,
                  pool_spans: int = 0) -> list[tuple[bytes, bytes, int]]:
    """``iter_kafka_records``'s records as a list."""
    return list(iter_kafka_records(workload, spans, per_record, seed=seed, anomaly_rate=anomaly_rate, agents=agents,
                                   rate=rate, start_ns=start_ns, pool_spans=pool_spans))


def iter_kafka_records(workload: str, spans: int, per_record: int, *, seed: int = 0, anomaly_rate: float = 0.001,
                       agents: int = 40, rate: float = 50_000.0, start_ns: int | None = None,
                       pool_spans: int = 0) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, value, spans) Kafka records as bench/ingest_kafka.py produces them: each record one OTLP
    request of up to ``per_record`` spans of one agent, key = that agent (``random`` mixes agents:
    its key is the first span's); in the order the first call of each record was made (``routine``:
    agent by agent, as that bench always did). ``agents`` is the ``routine`` workload's (the fleet
    has its own 200). Fleet event times end about now, at ``rate`` spans/s. A generator: records made
    from a pool are made as they are sent, so memory holds the pool, not the run.

    ``pool_spans`` (fleet only; 0: every call distinct): the records of a pool of that many calls,
    re-stamped pass after pass up to ``spans`` (whole records: up to a record short; new ids, event
    times that go on, the pass number in every session id and anomaly, as ``FleetTraffic`` does for
    OTLP), so a run long enough for every agent to get its forest model is built in seconds rather
    than minutes and gigabytes."""
    if workload == "routine":
        oc = _otlp_calls()
        calls = oc.workload(agents=agents, calls_per_agent=spans // agents, new_tool_every=997)
        by_agent: dict[str, list[Any]] = {}
        for c in calls:
            by_agent.setdefault(c.agent, []).append(c)
        yield from ((agent.encode(), oc.request(mine[i:i + per_record]).SerializeToString(), len(mine[i:i + per_record]))
                    for agent, mine in by_agent.items() for i in range(0, len(mine), per_record))
        return
    if workload == "random":
        # make_body mixes agents in a request: the key is its first span's agent.
        for k in range(-(-spans // per_record)):
            body = make_body(per_record, seed + k)
            first = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans[0]
            yield first.attributes[LiveTraffic.AGENT_ATTR].value.string_value.encode(), body, per_record
        return
    if workload != "fleet":
        raise ValueError(f"unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")
    pool = min(spans, pool_spans) if pool_spans > 0 else spans
    calls = Fleet(FleetConfig(anomaly_rate=anomaly_rate, seed=seed)).calls(pool)
    step = max(1, int(1e9 / rate))
    start = time.time_ns() - spans * step if start_ns is None else start_ns
    mine: dict[str, list[int]] = {}
    for n, c in enumerate(calls):
        mine.setdefault(c.agent, []).append(n)
    chunks = sorted((idx[i:i + per_record] for idx in mine.values() for i in range(0, len(idx), per_record)),
                    key=lambda ch: ch[0])
    templates = [(calls[ch[0]].agent.encode(), encode([calls[n] for n in ch]), np.array(ch, np.int64))
                 for ch in chunks]
    n_pool = len(calls)
    del calls[:]  # the templates hold what the records need
    ids = random.Random(seed)
    done, pass_no = 0, 0
    while done < spans:
        for key, t, at in templates:
            if done + len(at) > spans:  # whole records only: up to ``spans``, less than a record short
                return
            times = start + (pass_no * n_pool + at) * step
            yield key, stamp(t, times, pass_no, ids.randbytes(24 * len(at))), len(at)
            done += len(at)
        pass_no += 1


def first_spans(records: Iterator[tuple[bytes, bytes, int]], n: int) -> Iterator[tuple[bytes, bytes, int]]:
    """Records (key, value, spans) of ``records`` until they hold ``n`` spans or more, whole records;
    the rest stay in ``records``, for the next part of the same traffic (bench/ingest_kafka.py's
    warm-up, then its measured spans)."""
    done = 0
    while done < n:
        rec = next(records, None)
        if rec is None:
            return
        done += rec[2]
        yield rec


# --- findings --------------------------------------------------------------------------------------
@dataclass
class FindingTally:
    """Findings and the distinct spans they name: a pipeline listener (``pipeline.listeners``) or
    fed by hand. ``share`` says how much of the traffic reached the alert path. Findings whose
    evidence names a ``kind`` (exfiltration's six checks) are also counted per ``detector/kind``
    with the agents they name, so a run whose share jumps says which check and how many agents."""

    findings: int = 0
    spans: set[str] = field(default_factory=set)
    by_detector: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    kind_agents: dict[str, set[str]] = field(default_factory=dict)

    def __call__(self, findings: Sequence[Any]) -> None:
        self.findings += len(findings)
        for f in findings:
            self.by_detector[f.detector] += 1
            self.spans.update(f.span_ids)
            kind = f.evidence.get("kind") if isinstance(f.evidence, dict) else None
            if isinstance(kind, str):
                key = f"{f.detector}/{kind}"
                self.by_kind[key] += 1
                self.kind_agents.setdefault(key, set()).add(f.agent_id)

    def reset(self) -> None:
        self.findings = 0
        self.spans.clear()
        self.by_detector.clear()
        self.by_kind.clear()
        self.kind_agents.clear()

    def summary(self, n_spans: int) -> str:
        n = max(1, n_spans)
        top = ", ".join(f"{k} {v:,}" for k, v in self.by_detector.most_common(5))
        kinds = ", ".join(f"{k} {v:,} ({len(self.kind_agents[k])} agents)" for k, v in self.by_kind.most_common(5))
        return (f"findings {self.findings:,} ({100 * self.findings / n:.2f} per 100 spans), spans named by a finding "
                f"{len(self.spans):,} ({100 * len(self.spans) / n:.2f}%){'; ' + top if top else ''}"
                f"{'; by kind: ' + kinds if kinds else ''}")
