"""Compile Sigma-style ``correlation`` items: type, base rules, group-by, timespan, threshold."""

from __future__ import annotations

import re
from typing import Any, Mapping

from .fields import FIELDS
from .items import Item, Problems, compile_common, did_you_mean
from .model import CORRELATION_TYPES, Correlation

_TIMESPAN = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_NS = {"": 1_000_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}


def parse_timespan(value: Any) -> int:
    """``30s``, ``10m``, ``1h``, ``2d`` or a number of seconds → nanoseconds; ValueError if not."""
    if isinstance(value, bool):
        raise ValueError(f"timespan {value!r} is not a duration such as 30s, 10m, 1h, 2d")
    m = _TIMESPAN.match(str(value))
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"timespan {value!r} is not a positive duration such as 30s, 10m, 1h, 2d")
    return int(m.group(1)) * _UNIT_NS[m.group(2)]


def compile_correlation(item: Item, rule_names: set[str], ctx: Problems) -> Correlation | None:
    common = compile_common(item, ctx)
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
            ctx.add(item, f"rules: unknown rule {r!r}{did_you_mean(r, sorted(rule_names))}", item.line_of("rules"))
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
            ctx.add(item, f"group-by: {g!r} is not a text field{did_you_mean(g, list(FIELDS))}", item.line_of("group-by"))
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
                              f"{did_you_mean(str(value_field), list(FIELDS))}", cline)
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
