"""What a loaded rule file is: plain, immutable dataclasses the engine evaluates."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from .condition import Node
from .fields import FIELDS, EvalContext, render_value
from .samples import Samples

CorrelationType = Literal["event_count", "value_count", "temporal_ordered"]
CORRELATION_TYPES: tuple[str, ...] = ("event_count", "value_count", "temporal_ordered")

PRIORITIES: dict[str, str] = {
    # Falco priorities → toolwatch severities; toolwatch's own names map to themselves.
    "emergency": "critical",
    "alert": "critical",
    "critical": "critical",
    "error": "high",
    "high": "high",
    "warning": "medium",
    "medium": "medium",
    "notice": "low",
    "low": "low",
    "informational": "info",
    "info": "info",
    "debug": "info",
}

PLACEHOLDER = re.compile(r"%([A-Za-z_][A-Za-z0-9_.]*)")
TEMPLATE_EXTRAS = ("rule", "priority", "count", "values", "group")
"""Names an output template may use besides the fields."""


@dataclass(slots=True, frozen=True)
class Template:
    """An output template: ``%field`` placeholders, checked against the field table at load."""

    text: str

    def placeholders(self) -> list[str]:
        return [_strip(m.group(1)) for m in PLACEHOLDER.finditer(self.text)]

    def render(self, ctx: EvalContext, extras: dict[str, str]) -> str:
        def sub(m: re.Match[str]) -> str:
            raw = m.group(1)
            name = _strip(raw)
            tail = raw[len(name):]
            if name in extras:
                return extras[name] + tail
            spec = FIELDS.get(name)
            return (render_value(spec.get(ctx)) if spec else m.group(0)) + tail

        return PLACEHOLDER.sub(sub, self.text)


def _strip(name: str) -> str:
    """``%agent_id.`` at the end of a sentence names ``agent_id``."""
    return name.rstrip(".")


@dataclass(slots=True, frozen=True)
class Rule:
    """A single-call rule (Falco style)."""

    name: str
    condition: Node
    condition_text: str
    severity: str
    output: Template
    desc: str = ""
    tags: tuple[str, ...] = ()
    enabled: bool = True
    generate: bool = True
    """False for building blocks that only feed correlations."""
    source: str = ""
    line: int = 0
    samples: Samples = field(default_factory=Samples)
    meta: dict[str, object] = field(default_factory=dict)

    def matches(self, ctx: EvalContext) -> bool:
        return self.condition.eval(ctx)


@dataclass(slots=True, frozen=True)
class Correlation:
    """A windowed or sequence rule over base rules (Sigma correlation style)."""

    name: str
    type: CorrelationType
    rules: tuple[str, ...]
    group_by: tuple[str, ...]
    timespan_ns: int
    severity: str
    output: Template
    threshold: int = 1
    strict: bool = False
    """True for ``gt`` (count must exceed ``threshold``), False for ``gte``."""
    value_field: str = ""
    desc: str = ""
    tags: tuple[str, ...] = ()
    enabled: bool = True
    source: str = ""
    line: int = 0
    samples: Samples = field(default_factory=Samples)
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def min_count(self) -> int:
        return self.threshold + 1 if self.strict else self.threshold

    def signature(self) -> tuple[object, ...]:
        """What the window state depends on; a reload that changes it starts the windows afresh."""
        return (self.type, self.rules, self.group_by, self.timespan_ns, self.min_count, self.value_field)


@dataclass(slots=True, frozen=True)
class RuleSet:
    """A validated rule file (or several, later ones overriding earlier)."""

    rules: tuple[Rule, ...] = ()
    correlations: tuple[Correlation, ...] = ()
    lists: dict[str, tuple[str, ...]] = field(default_factory=dict)
    macros: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def correlation(self, name: str) -> Correlation | None:
        return next((c for c in self.correlations if c.name == name), None)

    def names(self) -> list[str]:
        return [r.name for r in self.rules] + [c.name for c in self.correlations]
