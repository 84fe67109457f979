"""Samples kept beside a rule file (``NAME.samples.yaml``), attached to a loaded ``RuleSet``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml

from .errors import Problem, RuleError
from .items import Problems, RuleYamlLoader, did_you_mean
from .model import RuleSet
from .samples import Samples, samples_from_dict

__all__ = ["load_samples"]


def load_samples(text: str, source: str, ruleset: RuleSet) -> RuleSet:
    """Attach samples from a sibling file (``rules.samples.yaml``) to the rules of ``ruleset``.

    The file maps rule or correlation names to ``{should_fire: [...], should_not_fire: [...]}``;
    its samples are added to any inline ones. Raises RuleError naming the file, rule and line.
    """
    ctx = Problems()
    try:
        loader = RuleYamlLoader(text)
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
            ctx.add(None, f"samples for unknown rule {name!r}{did_you_mean(name, ruleset.names())}", line, source)
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
