"""The dashboards' specs, read from dashboards/generate.py itself, and PromQL helpers for tests."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "dashboards" / "generate.py"

# Grafana's built-in range variables, with the values a 1 s scrape interval gives them.
GRAFANA_INTERVALS = {"$__rate_interval": "5s", "$__interval": "2s", "$__range": "5m"}

_METRIC = re.compile(r"\b((?:toolwatch|process)_[a-zA-Z0-9_]*)")


def load_generator() -> ModuleType:
    """Import dashboards/generate.py (a script, not a package module) once."""
    name = "toolwatch_dashboards_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana's interval variables and ``$name`` / ``${name}`` template variables."""
    for key, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(key, value)
    for name, value in variables.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    if "$" in expr:
        raise ValueError(f"unsubstituted variable left in {expr!r}")
    return expr


def metric_names(expr: str) -> set[str]:
    """toolwatch_* and process_* metric names a PromQL expression reads (not label values: those are quoted)."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(_METRIC.findall(unquoted))
