"""Conditions compiled once into closures, specialised per ``server/tool``.

The parser builds a tree (``condition.py``) that is easy to check and report on; evaluating that
tree per call walks nodes and looks fields up by name. Here each rule's tree becomes nested
closures instead, and the fields that depend only on the tool (``tool``, ``server``, ``token``,
``capabilities``) are folded in as constants for each ``server/tool`` seen. A tool no rule can
match then costs one dictionary lookup per call; for the rest, a *guard* names the call's own
lists (labels, fingerprints, destinations) that must be non-empty for any remaining rule to
match (e.g. result labels, or both argument labels and destinations), so a call without them
is skipped without building a context. A rule that needs only lists of the session (e.g. result
labels seen earlier in it) adds a *session guard*: such a call is then visited only when its
session has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Callable, Mapping, Union

from .condition import And, Compare, Const, Node, Not, Or
from .fields import DIRECT, Value
from ..events import tool_token
from .model import Rule

Test = Callable[[object], bool]
Compiled = Union[bool, Test]
"""``True``/``False`` when the condition is decided without looking at the call, else a closure."""

CALL_LISTS: dict[str, str] = {
    "args.labels": "args_labels",
    "result.labels": "result_labels",
    "args.fingerprints": "args_fingerprints",
    "result.fingerprints": "result_fingerprints",
    "destinations": "destinations",
    "destinations.new": "destinations",  # new destinations are some of the call's destinations
}
"""List fields that are empty whenever the call's own attribute is empty (field -> ToolCall attribute)."""

SESSION = "session:"
SESSION_LISTS: dict[str, str] = {
    "prev.result.labels": SESSION + "prev.result_labels",
    "session.result.labels": SESSION + "result_labels",
    "prev.capabilities": SESSION + "prev_capabilities",
    "session.capabilities": SESSION + "capabilities",
    "session.servers": SESSION + "servers",
}
"""List fields that are empty whenever an attribute of the call's session state (``context._Session``,
after ``SESSION``) is empty, or there is no session yet."""

LISTS: dict[str, str] = {**CALL_LISTS, **SESSION_LISTS}


def specialise(node: Node, known: Mapping[str, Value]) -> Compiled:
    """Fold ``known`` field values into ``node``; what is left becomes a closure over a context."""
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Compare):
        if node.field in known:
            return bool(node.test(known[node.field]))
        test = _compare(node)
        return False if test is _never else test
    if isinstance(node, Not):
        inner = specialise(node.item, known)
        if isinstance(inner, bool):
            return not inner
        return lambda ctx: not inner(ctx)
    if isinstance(node, (And, Or)):
        return _junction(node, known)
    return node.eval  # a node type this compiler does not know: evaluate it as the tree would


def _compare(node: Compare) -> Test:
    """One comparison as a closure, with the common list tests done by C set operations."""
    path = DIRECT.get(node.field)
    get = attrgetter(path) if path is not None else node.spec.get
    op, operand, test = node.op, node.operand, node.test
    if isinstance(operand, frozenset) and not operand and op in ("in", "intersects"):
        return _never  # nothing is in an empty list (e.g. trusted_destinations until an operator fills it)
    if node.spec.type == "list" and isinstance(operand, frozenset) and op in ("in", "intersects"):
        disjoint = operand.isdisjoint  # any(v in operand for v in values), at C speed
        return lambda ctx: not disjoint(get(ctx))
    if node.spec.type == "list" and op == "contains":
        return lambda ctx: operand in get(ctx)
    if op == "exists" and path is not None:
        return get  # truthy exactly when the field is non-empty
    return lambda ctx: test(get(ctx))


def _junction(node: And | Or, known: Mapping[str, Value]) -> Compiled:
    decisive = not isinstance(node, And)  # a False decides an And, a True decides an Or
    parts: list[Test] = []
    for item in node.items:
        part = specialise(item, known)
        if part is decisive:
            return decisive
        if part is not (not decisive):
            parts.append(part)  # type: ignore[arg-type]
    if not parts:
        return not decisive
    if len(parts) == 1:
        return parts[0]
    if decisive:  # Or
        if len(parts) == 2:
            a, b = parts
            return lambda ctx: a(ctx) or b(ctx)
        return lambda ctx: any(p(ctx) for p in parts)
    if len(parts) == 2:
        a, b = parts
        return lambda ctx: a(ctx) and b(ctx)
    return lambda ctx: all(p(ctx) for p in parts)


def fields_of(node: Node) -> set[str]:
    """Every field a condition reads."""
    if isinstance(node, Compare):
        return {node.field}
    if isinstance(node, Not):
        return fields_of(node.item)
    if isinstance(node, (And, Or)):
        return set().union(*(fields_of(i) for i in node.items))
    if isinstance(node, Const):
        return set()
    return set(LISTS) | {"?"}  # unknown node type: assume it reads anything (no guard)


@dataclass(slots=True, eq=False)
class ToolPlan:
    """What the rules need for one ``server/tool``: its capabilities and the rules still possible."""

    server: str
    capabilities: frozenset[str]
    sorted_capabilities: tuple[str, ...]
    rules: tuple[tuple[Rule, Test], ...]
    """Rules that may match a call of this tool, in rule order, each with its remaining test."""
    guard: Callable[[object], object] | None
    """Called with the call when ``rules`` is not empty: a falsy answer means no rule can match
    (unless ``session_guard`` says the session may let one). None when every call of this tool
    must be evaluated."""
    session_guard: Callable[[object], object] | None = None
    """Called with the call's session state when ``guard`` answered falsy: rules that need only
    lists of the session (e.g. result labels seen earlier) may match when it answers truthy; None
    when no rule needs those alone (and a call that ``guard`` rejects is skipped)."""

    def candidate(self, call: object, session: object = None) -> bool:
        """Whether a call (with its session state before the call, None if it has none) may match."""
        return bool(self.rules) and (
            self.guard is None or bool(self.guard(call))
            or (self.session_guard is not None and session is not None and bool(self.session_guard(session))))


def plan_tool(rules: tuple[Rule, ...], server: str, tool: str, capabilities: frozenset[str]) -> ToolPlan:
    """Specialise every rule for ``server/tool`` and work out the guard of what remains."""
    caps = tuple(sorted(capabilities))
    known: dict[str, Value] = {
        "tool": tool,
        "server": server,
        "token": tool_token(server, tool),
        "capabilities": caps,
    }
    kept: list[tuple[Rule, Test]] = []
    needs: list[tuple[str, ...]] | None = []
    for rule in rules:
        test = specialise(rule.condition, known)
        if test is False:
            continue
        if test is True:
            test = _always
        kept.append((rule, test))  # type: ignore[arg-type]
        for need in _alternatives(rule.condition, known):
            if need is None:
                needs = None  # this rule may match a call whose lists are all empty
                break
            if needs is not None and need not in needs:
                needs.append(need)
    guard = session_guard = None
    if kept and needs is not None:
        call_needs, session_needs = _split(needs)
        guard = _guard(call_needs) if call_needs else _never
        session_guard = _guard(session_needs) if session_needs else None
    return ToolPlan(server, capabilities, caps, tuple(kept), guard, session_guard)


def _split(needs: list[tuple[str, ...]]) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """Needs on the call's own lists, and needs on its session's lists alone. A need on both (all of
    some call and session lists) keeps only its call part: weaker, so a call it rejects still cannot
    match; the parts of an ``any`` need go one to each side (either met is the need met)."""
    on_call: list[tuple[str, ...]] = []
    on_session: list[tuple[str, ...]] = []
    for kind, *attrs in needs:
        call = tuple(a for a in attrs if not a.startswith(SESSION))
        session = tuple(a[len(SESSION):] for a in attrs if a.startswith(SESSION))
        if call and (kind, *call) not in on_call:
            on_call.append((kind, *call))
        if session and (kind == "any" or not call) and (kind, *session) not in on_session:
            on_session.append((kind, *session))
    return on_call, on_session


def _alternatives(node: Node, known: Mapping[str, Value]) -> list[tuple[str, ...] | None]:
    """The needs of each way the condition can match (each branch of a top-level ``or``)."""
    if specialise(node, known) is False:
        return []  # this branch cannot match this tool
    if isinstance(node, Or):
        return [need for item in node.items for need in _alternatives(item, known)]
    return [_needs(node, known)]


def _needs(node: Node, known: Mapping[str, Value]) -> tuple[str, ...] | None:
    """Call (and session) attributes a match needs: all must be non-empty (or, if none is needed on
    its own, at least one of the lists the condition reads); None when a match needs no list at all."""
    attrs = sorted({LISTS[f] for f in fields_of(node) if f in LISTS})
    if specialise(node, dict(known, **{f: () for f in LISTS})) is not False:
        return None
    required = tuple(a for a in attrs if specialise(node, dict(known, **_emptied(a))) is False)
    return ("all",) + required if required else ("any",) + tuple(attrs)


def _emptied(attr: str) -> dict[str, Value]:
    return {f: () for f, a in LISTS.items() if a == attr}


def _guard(needs: list[tuple[str, ...]]) -> Callable[[object], object]:
    """``needs`` as one test of a call: some need met, a need being all (or ``any``) of its lists."""
    tests: list[Callable[[object], object]] = []
    for need in needs:
        if need[0] == "any":
            get_any = attrgetter(*need[1:])
            tests.append(get_any if len(need) == 2 else (lambda call, g=get_any: any(g(call))))
        elif len(need) == 2:
            tests.append(attrgetter(need[1]))
        elif len(need) == 3:
            a, b = attrgetter(need[1]), attrgetter(need[2])
            tests.append(lambda call, a=a, b=b: a(call) and b(call))
        else:
            get_all = attrgetter(*need[1:])
            tests.append(lambda call, g=get_all: all(g(call)))
    if len(tests) == 1:
        return tests[0]
    shapes = sorted(needs, key=len)
    if len(shapes) == 2 and len(shapes[0]) == 2 and len(shapes[1]) == 3 and shapes[1][0] == "all":
        # The common shape (e.g. result labels, or argument labels and destinations) in one frame.
        r, a, b = attrgetter(shapes[0][1]), attrgetter(shapes[1][1]), attrgetter(shapes[1][2])
        return lambda call: r(call) or (a(call) and b(call))
    if len(tests) == 2:
        x, y = tests
        return lambda call: x(call) or y(call)
    return lambda call: any(t(call) for t in tests)


def _always(ctx: object) -> bool:
    return True


def _never(ctx: object) -> bool:
    return False

