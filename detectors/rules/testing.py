"""The pure core of ``toolwatch rules test``: run each rule's samples, then recorded traces."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..capabilities import CapabilityMap
from ..events import Batch, Finding, ToolCall
from .engine import RuleEngine
from .model import RuleSet

__all__ = ["SampleResult", "RulesTestReport", "check_samples", "test_rules"]


@dataclass(slots=True, frozen=True)
class SampleResult:
    rule: str
    expectation: str
    """``should_fire`` or ``should_not_fire``."""
    index: int
    passed: bool
    fired: int

    def __str__(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        return f"{verdict} {self.rule} {self.expectation}[{self.index}] (fired {self.fired}x)"


@dataclass(slots=True)
class RulesTestReport:
    samples: list[SampleResult] = field(default_factory=list)
    hits: Counter = field(default_factory=Counter)
    """Findings per rule/correlation name over the traces."""
    findings: list[Finding] = field(default_factory=list)
    events: int = 0
    names: set[str] = field(default_factory=set)
    """Every rule and correlation in the tested set."""

    @property
    def ok(self) -> bool:
        return all(s.passed for s in self.samples)

    @property
    def rules_without_samples(self) -> list[str]:
        return sorted(self.names - {s.rule for s in self.samples})

    def lines(self, show_findings: int = 0) -> list[str]:
        """The report as text; ``show_findings`` > 0 also lists that many findings from the traces."""
        out = [str(s) for s in self.samples]
        for name in self.rules_without_samples:
            out.append(f"warn {name}: no samples")
        out.append(f"samples: {sum(s.passed for s in self.samples)}/{len(self.samples)} passed")
        if self.events:
            out.append(f"traces: {self.events} events, {len(self.findings)} findings")
            for name, n in sorted(self.hits.items(), key=lambda kv: (-kv[1], kv[0])):
                out.append(f"  {n:6d}  {name}")
            for f in self.findings[:show_findings]:
                out.append(f"  [{f.severity}] {f.evidence.get('rule')} agent={f.agent_id} session={f.session_id} "
                           f"spans={','.join(f.span_ids) or '-'}: {f.reason}")
        return out


def _only(ruleset: RuleSet, name: str) -> RuleSet:
    """A rule set reduced to one rule (plus what a correlation needs), for its samples."""
    corr = ruleset.correlation(name)
    if corr is None:
        return RuleSet(tuple(r for r in ruleset.rules if r.name == name), (), ruleset.lists)
    return RuleSet(tuple(r for r in ruleset.rules if r.name in corr.rules), (corr,), ruleset.lists)


def _fired_for(findings: Iterable[Finding], name: str) -> int:
    return sum(1 for f in findings if f.evidence.get("rule") == name)


def check_samples(
    ruleset: RuleSet, capabilities: Callable[[], CapabilityMap] = CapabilityMap
) -> list[SampleResult]:
    """Run each rule's and correlation's samples through a fresh engine each.

    A base rule with ``generate: false`` still counts as fired when it matches: its samples say
    whether the condition matches.
    """
    results: list[SampleResult] = []
    items = [(r.name, r.samples, r.enabled) for r in ruleset.rules]
    items += [(c.name, c.samples, c.enabled) for c in ruleset.correlations]
    for name, samples, enabled in items:
        if not enabled:
            continue
        for expectation, seqs in (("should_fire", samples.should_fire), ("should_not_fire", samples.should_not_fire)):
            for i, seq in enumerate(seqs):
                engine = RuleEngine(_only(ruleset, name), capabilities())
                single = ruleset.rule(name) is not None
                fired = 0
                for call in sorted(seq, key=lambda c: c.time_ns):
                    if single:
                        fired += name in engine.matching_rules(call)
                    found = engine.observe_call(call)
                    if not single:
                        fired += _fired_for(found, name)
                passed = fired > 0 if expectation == "should_fire" else fired == 0
                results.append(SampleResult(name, expectation, i, passed, fired))
    return results


def test_rules(
    ruleset: RuleSet,
    events: Iterable[ToolCall],
    capabilities: Callable[[], CapabilityMap] = CapabilityMap,
    batch_size: int = 500,
) -> RulesTestReport:
    """Check every sample, then run the whole rule set over recorded events in time order."""
    report = RulesTestReport(samples=check_samples(ruleset, capabilities), names=set(ruleset.names()))
    engine = RuleEngine(ruleset, capabilities())
    calls = sorted(events, key=lambda c: c.time_ns)
    report.events = len(calls)
    for start in range(0, len(calls), batch_size):
        chunk = calls[start:start + batch_size]
        found = engine.observe(Batch(calls=chunk, watermark_ns=chunk[-1].time_ns))
        report.findings.extend(found)
        report.hits.update(str(f.evidence.get("rule", "?")) for f in found)
    return report


test_rules.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name
