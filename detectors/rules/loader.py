"""Read rule files into a validated ``RuleSet``, reporting every problem with file, item and line.

Pure: takes text, returns a ``RuleSet`` or raises ``RuleError``. The collector reads the files,
calls ``load_rule_files`` on each change and keeps the last good set when this raises.
YAML is composed into nodes first, so every key keeps the line it was written on.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import yaml

from .condition import ConditionError, Node, Not, Or, And, make_compare, parse_condition
from .errors import Problem, RuleError
from .fields import FIELDS
from .model import (
    CORRELATION_TYPES,
    PRIORITIES,
    TEMPLATE_EXTRAS,
    Correlation,
    Rule,
    RuleSet,
    Template,
)
from .samples import Samples, samples_from_dict

__all__ = ["load_rules", "load_rule_files", "load_samples", "parse_timespan"]

_META = {"id", "status", "falsepositives", "references", "author"}
ITEM_KEYS: dict[str, frozenset[str]] = {
    "list": frozenset({"list", "items", "append"}),
    "macro": frozenset({"macro", "condition"}),
    "rule": frozenset(
        {"rule", "desc", "condition", "output", "priority", "tags", "exceptions", "enabled", "generate", "samples"}
        | _META
    ),
    "correlation": frozenset(
        {"correlation", "desc", "type", "rules", "group-by", "timespan", "condition", "output", "priority", "tags",
         "enabled", "samples"}
        | _META
    ),
}
_OVERRIDE_KEYS = frozenset({"enabled"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_TIMESPAN = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_NS = {"": 1_000_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}


@dataclass(slots=True)
class _Item:
    kind: str
    name: str
    data: dict[str, Any]
    lines: dict[str, tuple[int, bool]]
    line: int
    source: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}"

    def line_of(self, key: str) -> int:
        return self.lines.get(key, (self.line, False))[0]


@dataclass(slots=True)
class _Ctx:
    problems: list[Problem] = field(default_factory=list)

    def add(self, item: _Item | None, message: str, line: int = 0, source: str = "") -> None:
        if item is None:
            self.problems.append(Problem(message, source, line))
        else:
            self.problems.append(Problem(message, item.source, line or item.line, item.label))


def parse_timespan(value: Any) -> int:
    """``30s``, ``10m``, ``1h``, ``2d`` or a number of seconds → nanoseconds; ValueError if not."""
    if isinstance(value, bool):
        raise ValueError(f"timespan {value!r} is not a duration such as 30s, 10m, 1h, 2d")
    m = _TIMESPAN.match(str(value))
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"timespan {value!r} is not a positive duration such as 30s, 10m, 1h, 2d")
    return int(m.group(1)) * _UNIT_NS[m.group(2)]


# --- reading YAML with lines -------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that reads a bare ``=`` as text (YAML 1.1 tags it ``value``), as Falco's comps use it."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def _read_items(text: str, source: str, ctx: _Ctx) -> list[_Item]:
    if not isinstance(text, str):
        ctx.add(None, "rule file content must be text", source=source)
        return []
    items: list[_Item] = []
    try:
        loader = _Loader(text)
    except yaml.YAMLError as e:  # the reader rejects control characters up front
        ctx.add(None, f"invalid YAML: {e}", source=source)
        return []
    try:
        root = loader.get_single_node()
        if root is None:
            return []
        if not isinstance(root, yaml.SequenceNode):
            ctx.add(None, "a rule file is a YAML list of items (- list:, - macro:, - rule:, - correlation:)",
                    root.start_mark.line + 1, source)
            return []
        for node in root.value:
            item = _read_item(loader, node, source, ctx)
            if item is not None:
                items.append(item)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        ctx.add(None, f"invalid YAML: {e.problem or e.context}", (mark.line + 1) if mark else 0, source)
    except yaml.YAMLError as e:
        ctx.add(None, f"invalid YAML: {e}", source=source)
    except RecursionError:
        ctx.add(None, "invalid YAML: nested too deeply", source=source)
    finally:
        loader.dispose()
    return items


def _read_item(loader: _Loader, node: yaml.Node, source: str, ctx: _Ctx) -> _Item | None:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        ctx.add(None, "each item must be a mapping starting with list:, macro:, rule: or correlation:", line, source)
        return None
    data: dict[str, Any] = {}
    lines: dict[str, tuple[int, bool]] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        kline = key_node.start_mark.line + 1
        if not isinstance(key, str):
            ctx.add(None, f"item keys must be text, not {key!r}", kline, source)
            continue
        if key in data:
            ctx.add(None, f"duplicate key {key!r}", kline, source)
            continue
        data[key] = loader.construct_object(value_node, deep=True)
        block = isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">")
        lines[key] = (value_node.start_mark.line + 1, block)
    kinds = [k for k in ITEM_KEYS if k in data]
    if len(kinds) != 1:
        what = "none" if not kinds else " and ".join(kinds)
        hint = _did_you_mean(next(iter(data), ""), list(ITEM_KEYS))
        ctx.add(None, f"an item must have exactly one of list, macro, rule, correlation (found {what}){hint}",
                line, source)
        return None
    kind = kinds[0]
    name = data[kind]
    if not isinstance(name, str) or not _NAME.match(name):
        ctx.add(None, f"{kind} name {name!r} must be a word of letters, digits, _ . - (no spaces)", line, source)
        return None
    item = _Item(kind, name, data, lines, line, source)
    for key in data:
        if key not in ITEM_KEYS[kind]:
            hint = _did_you_mean(key, sorted(ITEM_KEYS[kind]))
            ctx.add(item, f"unknown key {key!r}{hint}", item.line_of(key))
    return item


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
    ctx = _Ctx()
    sources: list[str] = []
    items: list[_Item] = []
    for text, source in files:
        sources.append(source)
        items.extend(_read_items(text, source, ctx))

    lists: dict[str, tuple[str, ...]] = {}
    macro_items: dict[str, _Item] = {}
    rule_items: dict[str, _Item] = {}
    corr_items: dict[str, _Item] = {}
    enabled_overrides: dict[str, tuple[_Item, bool]] = {}
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
        c for c in (_compile_correlation(i, rule_names, ctx) for i in corr_items.values()) if c is not None
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


def _add_list(item: _Item, lists: dict[str, tuple[str, ...]], ctx: _Ctx) -> None:
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

    def __init__(self, items: dict[str, _Item], lists: dict[str, tuple[str, ...]], ctx: _Ctx) -> None:
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


def _condition_problem(ctx: _Ctx, item: _Item, text: str, e: ConditionError) -> None:
    """Report a condition error at its own line (block scalars start one line below the key)."""
    line, block = item.lines.get("condition", (item.line, False))
    offset = min(max(e.offset, 0), len(text))
    line += (1 if block else 0) + text[:offset].count("\n")
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    ctx.add(item, f"condition: {e.detail} (column {column})", line)


def _common(item: _Item, ctx: _Ctx) -> dict[str, Any] | None:
    """Keys rules and correlations share: priority, desc, tags, enabled, output, samples, meta."""
    d = item.data
    ok = True
    priority = d.get("priority")
    severity = PRIORITIES.get(str(priority).lower()) if isinstance(priority, str) else None
    if severity is None:
        ok = False
        msg = "missing priority" if priority is None else f"unknown priority {priority!r}"
        ctx.add(item, f"{msg}; use one of {', '.join(PRIORITIES)}", item.line_of("priority"))
    tags = d.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        ok = False
        ctx.add(item, "tags must be a list of text (e.g. [owasp.asi02, atlas.AML.T0051])", item.line_of("tags"))
    desc = d.get("desc", "")
    if not isinstance(desc, str):
        ok = False
        ctx.add(item, "desc must be text", item.line_of("desc"))
    flags: dict[str, bool] = {}
    for key in ("enabled", "generate"):
        value = d.get(key, True)
        if not isinstance(value, bool):
            ok = False
            ctx.add(item, f"{key} must be true or false", item.line_of(key))
        flags[key] = bool(value)
    default_out = "%rule: %server/%tool by %agent_id" if item.kind == "rule" else "%rule: %count for %group"
    output = d.get("output", default_out)
    template = None
    if not isinstance(output, str):
        ok = False
        ctx.add(item, "output must be text", item.line_of("output"))
    else:
        template = Template(output.strip())
        for name in template.placeholders():
            if name not in FIELDS and name not in TEMPLATE_EXTRAS:
                ok = False
                ctx.add(item, f"output names unknown field %{name}{_did_you_mean(name, list(FIELDS))}",
                        item.line_of("output"))
    samples = Samples()
    if "samples" in d:
        try:
            samples = samples_from_dict(d["samples"], "samples")
        except RuleError as e:
            ok = False
            for p in e.problems:
                ctx.add(item, p.message, item.line_of("samples"))
    if not ok:
        return None
    return {
        "severity": severity,
        "desc": desc.strip(),
        "tags": tuple(tags),
        "enabled": flags["enabled"],
        "output": template,
        "samples": samples,
        "meta": {k: d[k] for k in _META if k in d},
        "source": item.source,
        "line": item.line,
    }


def _compile_rule(item: _Item, lists: dict[str, tuple[str, ...]], macros: _MacroCompiler, ctx: _Ctx) -> Rule | None:
    common = _common(item, ctx)
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
    item: _Item, lists: dict[str, tuple[str, ...]], macros: _MacroCompiler, ctx: _Ctx
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


def _compile_correlation(item: _Item, rule_names: set[str], ctx: _Ctx) -> Correlation | None:
    common = _common(item, ctx)
    d = item.data
    ok = common is not None
    ctype = d.get("type")
    if ctype not in CORRELATION_TYPES:
        ctx.add(item, f"type must be one of {', '.join(CORRELATION_TYPES)}, not {ctype!r}", item.line_of("type"))
        ok = False
    rules = d.get("rules")
    if isinstance(rules, str):
        rules = [rules]
    if not isinstance(rules, list) or not rules or not all(isinstance(r, str) for r in rules):
        ctx.add(item, "rules must be a non-empty list of rule names", item.line_of("rules"))
        ok, rules = False, []
    for r in rules:
        if r not in rule_names:
            ctx.add(item, f"rules: unknown rule {r!r}{_did_you_mean(r, sorted(rule_names))}", item.line_of("rules"))
            ok = False
    if ctype == "temporal_ordered" and len(rules) < 2:
        ctx.add(item, "temporal_ordered needs at least two rules, in the order they must happen", item.line_of("rules"))
        ok = False
    group_by = d.get("group-by", ["agent_id"])
    if isinstance(group_by, str):
        group_by = [group_by]
    if not isinstance(group_by, list) or not all(isinstance(g, str) for g in group_by):
        ctx.add(item, "group-by must be a list of field names", item.line_of("group-by"))
        ok, group_by = False, []
    for g in group_by:
        if g not in FIELDS or FIELDS[g].type != "str":
            ctx.add(item, f"group-by: {g!r} is not a text field{_did_you_mean(g, list(FIELDS))}", item.line_of("group-by"))
            ok = False
    timespan_ns = 0
    try:
        timespan_ns = parse_timespan(d.get("timespan"))
    except ValueError as e:
        ctx.add(item, str(e) if "timespan" in d else "missing timespan (e.g. 10m)", item.line_of("timespan"))
        ok = False
    threshold, strict, value_field = 1, False, ""
    cond = d.get("condition", {})
    cline = item.line_of("condition")
    if ctype in ("event_count", "value_count"):
        if not isinstance(cond, Mapping):
            ctx.add(item, "condition must be a mapping such as {gte: 3}", cline)
            ok = False
            cond = {}
        ops = [k for k in cond if k in ("gte", "gt")]
        extra = sorted(str(k) for k in cond if k not in ("gte", "gt", "field"))
        if len(ops) != 1 or extra:
            ctx.add(item, "condition needs exactly one of gte or gt (counts that fall are not supported)"
                    + (f"; unknown key {', '.join(extra)}" if extra else ""), cline)
            ok = False
        else:
            n = cond[ops[0]]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                ctx.add(item, f"condition.{ops[0]} must be a whole number of at least 1", cline)
                ok = False
            else:
                threshold, strict = n, ops[0] == "gt"
        if ctype == "value_count":
            value_field = cond.get("field", "")
            if value_field not in FIELDS:
                ctx.add(item, f"value_count needs condition.field naming a field, not {value_field!r}"
                              f"{_did_you_mean(str(value_field), list(FIELDS))}", cline)
                ok = False
        elif "field" in cond:
            ctx.add(item, "condition.field only applies to value_count", cline)
            ok = False
    elif cond not in ({}, None):
        ctx.add(item, "temporal_ordered takes no condition: it fires when the rules match in order", cline)
        ok = False
    if not ok or common is None:
        return None
    return Correlation(
        name=item.name,
        type=ctype,
        rules=tuple(rules),
        group_by=tuple(group_by),
        timespan_ns=timespan_ns,
        threshold=threshold,
        strict=strict,
        value_field=value_field,
        **common,
    )


def load_samples(text: str, source: str, ruleset: RuleSet) -> RuleSet:
    """Attach samples from a sibling file (``rules.samples.yaml``) to the rules of ``ruleset``.

    The file maps rule or correlation names to ``{should_fire: [...], should_not_fire: [...]}``;
    its samples are added to any inline ones. Raises RuleError naming the file, rule and line.
    """
    ctx = _Ctx()
    try:
        loader = _Loader(text)
    except yaml.YAMLError as e:
        raise RuleError(Problem(f"invalid YAML: {e}", source)) from None
    try:
        root = loader.get_single_node()
        entries: list[tuple[str, int, Any]] = []
        if root is not None and not isinstance(root, yaml.MappingNode):
            ctx.add(None, "a samples file maps rule names to {should_fire, should_not_fire}",
                    root.start_mark.line + 1, source)
        elif root is not None:
            for key_node, value_node in root.value:
                name = loader.construct_object(key_node, deep=True)
                entries.append((str(name), key_node.start_mark.line + 1, loader.construct_object(value_node, deep=True)))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise RuleError(Problem(f"invalid YAML: {e.problem or e.context}", source, (mark.line + 1) if mark else 0)) from None
    except (yaml.YAMLError, RecursionError) as e:
        raise RuleError(Problem(f"invalid YAML: {e}", source)) from None
    finally:
        loader.dispose()
    rules = {r.name: r for r in ruleset.rules}
    corrs = {c.name: c for c in ruleset.correlations}
    for name, line, data in entries:
        target = rules.get(name) or corrs.get(name)
        if target is None:
            ctx.add(None, f"samples for unknown rule {name!r}{_did_you_mean(name, ruleset.names())}", line, source)
            continue
        try:
            extra = samples_from_dict(data, "samples")
        except RuleError as e:
            for p in e.problems:
                ctx.problems.append(Problem(p.message, source, line, f"rule {name!r}"))
            continue
        merged = Samples(target.samples.should_fire + extra.should_fire,
                         target.samples.should_not_fire + extra.should_not_fire)
        if name in rules:
            rules[name] = replace(rules[name], samples=merged)
        else:
            corrs[name] = replace(corrs[name], samples=merged)
    if ctx.problems:
        raise RuleError(ctx.problems)
    return replace(ruleset, rules=tuple(rules.values()), correlations=tuple(corrs.values()))
