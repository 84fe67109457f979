"""Where a session's data came from: fingerprints and sketches tagged with their origin.

A value's *origin* is the server whose result first carried it. Derived data keeps its origin:
when a call's arguments carry tainted values, that call's result values inherit the taint, so a
secret read from server A, summarised by server B and mailed by server C still points at A.
Values the agent itself wrote first (seen in arguments before any result) are *authored*: a
server echoing them back does not become their origin. Everything is bounded and JSON-safe.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .events import ToolCall

__all__ = ["Citations", "Match", "Origin", "SensitiveRead", "SessionFlows", "sketch_similarity"]

MAX_HOPS = 5


@dataclass(slots=True, unsafe_hash=True)
class Origin:
    """The call whose result first carried a value, and the calls it passed through since.

    Shared by every value it carries, so never changed once made (``derived`` makes another).
    Not ``frozen``: a frozen dataclass sets each field through ``object.__setattr__``, and one is
    made per call with results to follow (about three times the cost of this one); hashable as before."""

    server: str
    tool: str
    span_id: str
    time_ns: int
    sensitive: bool
    via: tuple[str, ...] = ()

    def derived(self, call: ToolCall) -> "Origin":
        hops = (self.via + (call.token,))[-MAX_HOPS:]
        return Origin(self.server, self.tool, self.span_id, self.time_ns, self.sensitive, hops)

    def to_list(self) -> list[Any]:
        return [self.server, self.tool, self.span_id, self.time_ns, self.sensitive, list(self.via)]

    @classmethod
    def from_list(cls, v: list[Any]) -> "Origin":
        return cls(str(v[0]), str(v[1]), str(v[2]), int(v[3]), bool(v[4]), tuple(v[5]))

    def describe(self) -> dict[str, Any]:
        return {"server": self.server, "tool": self.tool, "span_id": self.span_id, "via": list(self.via)}


def sketch_similarity(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> float:
    """Fraction of equal slots of two same-length sketches (MinHash estimate of Jaccard)."""
    if not a or len(a) != len(b):
        return 0.0
    return sum(1 for x, y in zip(a, b) if x == y) / len(a)


@dataclass(slots=True, frozen=True)
class Match:
    """A value in a call's arguments that has an origin; ``fingerprint`` is empty for sketches."""

    origin: Origin
    fingerprint: str = ""
    similarity: float = 1.0


def _inheritance(m: Match) -> tuple[bool, int]:
    """Which match a result inherits its origin from: sensitive first, then the oldest."""
    return (not m.origin.sensitive, m.origin.time_ns)


@dataclass(slots=True)
class SensitiveRead:
    time_ns: int
    span_id: str
    token: str
    labels: tuple[str, ...]
    evidence: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """How findings cite this read (see ``cite``); not stored."""

    def cite(self) -> dict[str, Any]:
        """The read as evidence; built once and shared by every finding that cites it (never mutate it)."""
        if self.evidence is None:
            self.evidence = {"tool": self.token, "span_id": self.span_id, "labels": list(self.labels)}
        return self.evidence


@dataclass(slots=True)
class Citations:
    """How a session's sensitive reads are cited as evidence, with what is known about them (not stored)."""

    seen: int
    """``SessionFlows.reads_seen`` when last brought up to date."""
    evidence: list[dict[str, Any]]
    spans: list[str]
    ordered: bool
    """The reads are in time order."""
    unlabelled: bool
    """No read returned a label."""
    clear_of: str | None = None
    """A token that no read has."""

    @classmethod
    def of(cls, reads: list[SensitiveRead], seen: int) -> "Citations":
        return cls(seen, [r.cite() for r in reads], [r.span_id for r in reads],
                   all(a.time_ns <= b.time_ns for a, b in zip(reads, reads[1:])),
                   not any(r.labels for r in reads))


@dataclass(slots=True)
class SessionFlows:
    """Per-session taint. Caps: ``max_fingerprints`` values and ``max_sketches`` sketches (LRU)."""

    last_ns: int = 0
    taint: OrderedDict[str, Origin] = field(default_factory=OrderedDict)
    authored: OrderedDict[str, None] = field(default_factory=OrderedDict)
    sketches: list[tuple[tuple[int, ...], Origin]] = field(default_factory=list)
    authored_sketches: list[tuple[int, ...]] = field(default_factory=list)
    sensitive: list[SensitiveRead] = field(default_factory=list)
    reads_seen: int = field(default=0, compare=False, repr=False)
    """Reads ever added with ``add_read`` in this process (not stored)."""
    citations: "Citations | None" = field(default=None, compare=False, repr=False)
    """What ``sensitive`` cites, kept in step by ``cited`` (not stored)."""

    def add_read(self, read: SensitiveRead, keep: int) -> None:
        """Remember a sensitive read; only the newest ``keep`` are kept."""
        reads = self.sensitive
        reads.append(read)
        if len(reads) > keep:
            del reads[:-keep]
        self.reads_seen += 1

    def cited(self) -> "Citations":
        """``citations`` brought up to date with the reads added since, in O(new reads)."""
        reads = self.sensitive
        c = self.citations
        new = -1 if c is None else self.reads_seen - c.seen
        if (c is None or new < 0 or new > len(reads) or len(c.evidence) + new < len(reads)
                or (reads and (reads[-1].evidence is None) != (new > 0))
                or (reads and not new and c.evidence[-1] is not reads[-1].evidence)):
            c = self.citations = Citations.of(reads, self.reads_seen)
            return c
        if new:
            # One pass over the new reads (this runs at every send after reads): the lists are
            # Citations' own (findings copy them), so they are updated in place.
            n = len(reads)
            evidence, spans = c.evidence, c.spans
            drop = len(evidence) + new - n
            if drop:
                del evidence[:drop]
                del spans[:drop]
            ordered = c.ordered
            prev = reads[n - new - 1].time_ns if n > new else reads[n - new].time_ns
            labelled = hit = False
            clear_of = c.clear_of
            for i in range(n - new, n):
                r = reads[i]
                e = r.evidence
                if e is None:  # SensitiveRead.cite inlined
                    e = r.evidence = {"tool": r.token, "span_id": r.span_id, "labels": list(r.labels)}
                evidence.append(e)
                spans.append(r.span_id)
                if ordered:
                    if r.time_ns < prev:
                        ordered = False
                    prev = r.time_ns
                if r.labels:
                    labelled = True
                if r.token == clear_of:
                    hit = True
            if c.ordered:
                c.ordered = ordered
            else:
                c.ordered = all(a.time_ns <= b.time_ns for a, b in zip(reads, reads[1:]))
            if c.unlabelled:
                c.unlabelled = not labelled
            else:
                c.unlabelled = not any(r.labels for r in reads)
            if clear_of is not None and hit:
                c.clear_of = None
            c.seen = self.reads_seen
        return c

    def matches(self, call: ToolCall, similarity: float) -> list[Match]:
        """Values in ``call``'s arguments that came out of some earlier result."""
        found = [Match(o, fp) for fp in dict.fromkeys(call.args_fingerprints) if (o := self.taint.get(fp))]
        if call.args_sketch:
            best: dict[str, Match] = {}
            for sketch, origin in self.sketches:
                sim = sketch_similarity(sketch, call.args_sketch)
                if sim >= similarity and (origin.span_id not in best or best[origin.span_id].similarity < sim):
                    best[origin.span_id] = Match(origin, "", round(sim, 3))
            found.extend(best.values())
        return found

    def learn(
        self,
        call: ToolCall,
        matches: list[Match],
        sensitive: bool,
        similarity: float,
        max_fingerprints: int,
        max_sketches: int,
    ) -> None:
        """Record the call's results with their origin (inherited from its arguments, or itself).

        The origin is made only for a call with results to record: most calls with values carry
        them in their arguments alone, and a frozen dataclass costs a microsecond to make."""
        t = call.time_ns
        if t > self.last_ns:
            self.last_ns = t
        taint, authored = self.taint, self.authored
        for fp in call.args_fingerprints:
            if fp not in taint and fp not in authored:
                authored[fp] = None
        inherited = sorted(matches, key=_inheritance) if matches else ()
        results, result_sketch = call.result_fingerprints, call.result_sketch
        if results or result_sketch:
            if inherited:
                origin = inherited[0].origin.derived(call)
            else:
                origin = Origin(call.server, call.tool, call.span_id, t, sensitive)
            for fp in results:
                if fp in authored or fp in taint:
                    continue
                taint[fp] = origin
        if call.args_sketch and not any(m.fingerprint == "" for m in inherited):
            self.authored_sketches = (self.authored_sketches + [tuple(call.args_sketch)])[-max_sketches:]
        if result_sketch and not any(
            sketch_similarity(a, result_sketch) >= similarity for a in self.authored_sketches
        ):
            self.sketches = (self.sketches + [(tuple(result_sketch), origin)])[-max_sketches:]
        while len(taint) > max_fingerprints:
            taint.popitem(last=False)
        while len(authored) > max_fingerprints:
            authored.popitem(last=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "last_ns": self.last_ns,
            "taint": [[fp, o.to_list()] for fp, o in self.taint.items()],
            "authored": list(self.authored),
            "sketches": [[list(s), o.to_list()] for s, o in self.sketches],
            "authored_sketches": [list(s) for s in self.authored_sketches],
            "sensitive": [[r.time_ns, r.span_id, r.token, list(r.labels)] for r in self.sensitive],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SessionFlows":
        return cls(
            last_ns=int(d.get("last_ns", 0)),
            taint=OrderedDict((fp, Origin.from_list(o)) for fp, o in d.get("taint", [])),
            authored=OrderedDict.fromkeys(d.get("authored", [])),
            sketches=[(tuple(s), Origin.from_list(o)) for s, o in d.get("sketches", [])],
            authored_sketches=[tuple(s) for s in d.get("authored_sketches", [])],
            sensitive=[SensitiveRead(int(t), str(s), str(k), tuple(lb)) for t, s, k, lb in d.get("sensitive", [])],
        )
