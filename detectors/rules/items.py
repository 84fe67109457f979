"""Rule files as YAML items that remember their lines, and the keys rules and correlations share.

YAML is composed into nodes first, so every key keeps the line it was written on; problems are
collected (never raised one by one) so a single load reports everything wrong in a file.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import Problem, RuleError
from .fields import FIELDS
from .model import PRIORITIES, TEMPLATE_EXTRAS, Template
from .samples import Samples, samples_from_dict

META_KEYS = {"id", "status", "falsepositives", "references", "author"}
ITEM_KEYS: dict[str, frozenset[str]] = {
    "list": frozenset({"list", "items", "append"}),
    "macro": frozenset({"macro", "condition"}),
    "rule": frozenset(
        {"rule", "desc", "condition", "output", "priority", "tags", "exceptions", "enabled", "generate", "samples"}
        | META_KEYS
    ),
    "correlation": frozenset(
        {"correlation", "desc", "type", "rules", "group-by", "timespan", "condition", "output", "priority", "tags",
         "enabled", "samples"}
        | META_KEYS
    ),
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(slots=True)
class Item:
    """One ``- list|macro|rule|correlation:`` entry with the line of each of its keys."""

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
class Problems:
    """Collects problems with their location instead of raising at the first one."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, item: Item | None, message: str, line: int = 0, source: str = "") -> None:
        if item is None:
            self.problems.append(Problem(message, source, line))
        else:
            self.problems.append(Problem(message, item.source, line or item.line, item.label))


# --- reading YAML with lines -------------------------------------------------------------------
class RuleYamlLoader(yaml.SafeLoader):
    """SafeLoader that reads a bare ``=`` as text (YAML 1.1 tags it ``value``), as Falco's comps use it."""


RuleYamlLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def read_items(text: str, source: str, ctx: Problems) -> list[Item]:
    if not isinstance(text, str):
        ctx.add(None, "rule file content must be text", source=source)
        return []
    items: list[Item] = []
    try:
        loader = RuleYamlLoader(text)
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


def _read_item(loader: RuleYamlLoader, node: yaml.Node, source: str, ctx: Problems) -> Item | None:
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
        hint = did_you_mean(next(iter(data), ""), list(ITEM_KEYS))
        ctx.add(None, f"an item must have exactly one of list, macro, rule, correlation (found {what}){hint}",
                line, source)
        return None
    kind = kinds[0]
    name = data[kind]
    if not isinstance(name, str) or not _NAME.match(name):
        ctx.add(None, f"{kind} name {name!r} must be a word of letters, digits, _ . - (no spaces)", line, source)
        return None
    item = Item(kind, name, data, lines, line, source)
    for key in data:
        if key not in ITEM_KEYS[kind]:
            hint = did_you_mean(key, sorted(ITEM_KEYS[kind]))
            ctx.add(item, f"unknown key {key!r}{hint}", item.line_of(key))
    return item


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def compile_common(item: Item, ctx: Problems) -> dict[str, Any] | None:
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
                ctx.add(item, f"output names unknown field %{name}{did_you_mean(name, list(FIELDS))}",
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
        "meta": {k: d[k] for k in META_KEYS if k in d},
        "source": item.source,
        "line": item.line,
    }
