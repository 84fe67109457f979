"""Read rule files into a validated ``RuleSet``, reporting every problem with file, item and line.

Pure: takes text, returns a ``RuleSet`` or raises ``RuleError``. The collector reads the files,
calls ``load_rule_files`` on each change and keeps the last good set when this raises.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping

from .condition import And, ConditionError, Node, Not, Or, make_compare, parse_condition
from .correlation_items import compile_correlation, parse_timespan
from .errors import RuleError
from .fields import FIELDS
from .items import Item, Problems, compile_common, read_items
from .model import Rule, RuleSet

__all__ = ["load_rules", "load_rule_files", "parse_timespan"]

_OVERRIDE_KEYS = frozenset({"enabled"})


# --- compiling -----------------------------------------------------------------------------------
def load_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Load one rule file; raises ``RuleError`` listing every problem found."""
    return load_rule_files([(text, source)])


def load_rule_files(files: Iterable[tuple[str, str]]) -> RuleSet:
    """Load several ``(text, source)`` files in order; later items override earlier ones.

    Overrides, as in Falco: a later ``list`` with ``append: true`` extends the list; a later
    macro, rule or correlation with the same name replaces it; a rule or correlation item that
    has only ``enabled`` switches an existing one on or off without repeating it.
    """
    ctx = Problems()
    sources: list[str] = []
    items: list[Item] = []
    for text, source in files:
        sources.append(source)
        items.extend(read_items(text, source, ctx))

    lists: dict[str, tuple[str, ...]] = {}
    macro_items: dict[str, Item] = {}
    rule_items: dict[str, Item] = {}
    corr_items: dict[str, Item] = {}
    enabled_overrides: dict[str, tuple[Item, bool]] = {}
    for item in items:
        if item.kind == "list":
            _add_list(item, lists, ctx)
        elif item.kind == "macro":
            macro_items[item.name] = item
        else:
            table = rule_items if item.kind == "rule" else corr_items
            if set(item.data) - {item.kind} <= _OVERRIDE_KEYS and "enabled" in item.data:
                if item.name not in table:
                    ctx.add(item, f"only 'enabled' is given but no earlier {item.kind} has this name "
                                  "(an override needs the original; a new one needs a condition)")
                elif not isinstance(item.data["enabled"], bool):
                    ctx.add(item, "enabled must be true or false", item.line_of("enabled"))
                else:
                    enabled_overrides[item.name] = (item, item.data["enabled"])
                continue
            table[item.name] = item
            enabled_overrides.pop(item.name, None)

    macros = _MacroCompiler(macro_items, lists, ctx)
    macros.compile_all()
    rules = [r for r in (_compile_rule(i, lists, macros, ctx) for i in rule_items.values()) if r is not None]
    rule_names = {r.name for r in rules} | set(rule_items)
    correlations = [
        c for c in (compile_correlation(i, rule_names, ctx) for i in corr_items.values()) if c is not None
    ]
    for name in sorted(set(rule_items) & set(corr_items)):
        ctx.add(corr_items[name], f"the name is already used by a rule (line {rule_items[name].line})")
    rules = [replace(r, enabled=enabled_overrides[r.name][1]) if r.name in enabled_overrides else r for r in rules]
    correlations = [
        replace(c, enabled=enabled_overrides[c.name][1]) if c.name in enabled_overrides else c for c in correlations
    ]
    if ctx.problems:
        order = {s: i for i, s in enumerate(sources)}
        ctx.problems.sort(key=lambda p: (order.get(p.source, 0), p.line))
        raise RuleError(ctx.problems)
    return RuleSet(tuple(rules), tuple(correlations), lists, tuple(macro_items), tuple(sources))


def _add_list(item: Item, lists: dict[str, tuple[str, ...]], ctx: Problems) -> None:
    raw = item.data.get("items")
    if not isinstance(raw, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in raw):
        ctx.add(item, "items must be a list of text or numbers", item.line_of("items"))
        return
    values: list[str] = []
    for v in raw:
        # A list item naming another list expands to its items (Falco).
        values.extend(lists.get(v, (str(v),)) if isinstance(v, str) else (str(v),))
    append = item.data.get("append", False)
    if not isinstance(append, bool):
        ctx.add(item, "append must be true or false", item.line_of("append"))
        return
    if append:
        if item.name not in lists:
            ctx.add(item, "append: true but no earlier list has this name")
            return
        lists[item.name] = lists[item.name] + tuple(values)
    else:
        lists[item.name] = tuple(values)


class _MacroCompiler:
    """Compiles macros on first use so they may appear in any order; reports cycles."""

    def __init__(self, items: dict[str, Item], lists: dict[str, tuple[str, ...]], ctx: Problems) -> None:
        self.items = items
        self.lists = lists
        self.ctx = ctx
        self.compiled: dict[str, Node] = {}
        self.broken: set[str] = set()
        self.visiting: list[str] = []

    def compile_all(self) -> None:
        for name in self.items:
            try:
                self.resolve(name, 0)
            except ConditionError:
                pass  # already reported against the macro itself

    def resolve(self, name: str, pos: int) -> Node | None:
        if name in self.compiled:
            return self.compiled[name]
        item = self.items.get(name)
        if item is None:
            return None
        if name in self.broken:
            raise ConditionError(f"macro {name!r} has errors (reported at line {item.line})", pos)
        if name in self.visiting:
            cycle = " -> ".join(self.visiting[self.visiting.index(name):] + [name])
            raise ConditionError(f"macros refer to each other in a cycle: {cycle}", pos)
        text = item.data.get("condition")
        self.visiting.append(name)
        try:
            if not isinstance(text, str):
                self.broken.add(name)
                self.ctx.add(item, "a macro needs a condition (text)", item.line_of("condition"))
                raise ConditionError(f"macro {name!r} has no condition", pos)
            try:
                node = parse_condition(text, self.lists, self.resolve)
            except ConditionError as e:
                self.broken.add(name)
                _condition_problem(self.ctx, item, text, e)
                raise ConditionError(f"macro {name!r} has errors (reported at line {item.line})", pos) from None
        finally:
            self.visiting.pop()
        self.compiled[name] = node
        return node


def _condition_problem(ctx: Problems, item: Item, text: str, e: ConditionError) -> None:
    """Report a condition error at its own line (block scalars start one line below the key)."""
    line, block = item.lines.get("condition", (item.line, False))
    offset = min(max(e.offset, 0), len(text))
    line += (1 if block else 0) + text[:offset].count("\n")
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    ctx.add(item, f"condition: {e.detail} (column {column})", line)




def _compile_rule(item: Item, lists: dict[str, tuple[str, ...]], macros: _MacroCompiler, ctx: Problems) -> Rule | None:
    common = compile_common(item, ctx)
    text = item.data.get("condition")
    node: Node | None = None
    if not isinstance(text, str):
        ctx.add(item, "missing condition (text)", item.line_of("condition"))
    else:
        try:
            node = parse_condition(text, lists, macros.resolve)
        except ConditionError as e:
            _condition_problem(ctx, item, text, e)
    exceptions = _compile_exceptions(item, lists, macros, ctx)
    generate = item.data.get("generate", True)
    if node is None or common is None or exceptions is None:
        return None
    if exceptions:
        node = And((node, Not(Or(tuple(exceptions)))))
    return Rule(name=item.name, condition=node, condition_text=text, generate=bool(generate), **common)


def _compile_exceptions(
    item: Item, lists: dict[str, tuple[str, ...]], macros: _MacroCompiler, ctx: Problems
) -> list[Node] | None:
    """Falco exceptions: ``{name, fields, comps, values}`` rows, or ``{name, condition}``."""
    raw = item.data.get("exceptions", [])
    line = item.line_of("exceptions")
    if not isinstance(raw, list):
        ctx.add(item, "exceptions must be a list", line)
        return None
    out: list[Node] = []
    ok = True
    for i, exc in enumerate(raw):
        where = f"exceptions[{i}]"
        if not isinstance(exc, Mapping) or not isinstance(exc.get("name"), str):
            ctx.add(item, f"{where} must be a mapping with a name", line)
            ok = False
            continue
        where = f"exception {exc['name']!r}"
        extra = sorted(set(exc) - {"name", "fields", "comps", "values", "condition"})
        if extra:
            ctx.add(item, f"{where}: unknown key {', '.join(map(str, extra))}; use fields/comps/values or condition", line)
            ok = False
            continue
        try:
            if "condition" in exc:
                if not isinstance(exc["condition"], str):
                    raise ConditionError("condition must be text", 0)
                out.append(parse_condition(exc["condition"], lists, macros.resolve))
            else:
                out.extend(_exception_rows(exc, lists))
        except ConditionError as e:
            ctx.add(item, f"{where}: {e.detail}", line)
            ok = False
    return out if ok else None


def _exception_rows(exc: Mapping[str, Any], lists: dict[str, tuple[str, ...]]) -> list[Node]:
    fields = exc.get("fields")
    if isinstance(fields, str):
        fields = [fields]
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        raise ConditionError("fields must be a non-empty list of field names", 0)
    comps = exc.get("comps")
    if comps is None:
        comps = ["contains" if FIELDS.get(f) and FIELDS[f].type == "list" else "=" for f in fields]
    elif isinstance(comps, str):
        comps = [comps]
    if not isinstance(comps, list) or len(comps) != len(fields):
        raise ConditionError(f"comps must list one operator per field ({len(fields)})", 0)
    values = exc.get("values", [])
    if not isinstance(values, list):
        raise ConditionError("values must be a list of rows", 0)
    rows: list[Node] = []
    for row in values:
        if len(fields) == 1 and not isinstance(row, list):
            row = [row]
        if not isinstance(row, list) or len(row) != len(fields):
            raise ConditionError(f"each values row must have {len(fields)} item(s), one per field: {row!r}", 0)
        parts = tuple(make_compare(f, str(c), v, lists) for f, c, v in zip(fields, comps, row))
        rows.append(parts[0] if len(parts) == 1 else And(parts))
    return rows




