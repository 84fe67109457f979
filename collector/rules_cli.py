"""``toolwatch rules test FILE… [--traces FILE…]``: check rule files against samples and traces.

The I/O side only: reads files, prints the report. Loading, sample checking and evaluation are
the pure functions of ``toolwatch.detectors.rules``.
"""

from __future__ import annotations

import json
import sys
from importlib.resources import files
from pathlib import Path
from typing import Iterable, TextIO

from ..detectors.events import ToolCall
from ..detectors.rules import RuleError, call_from_dict, load_rule_files, load_samples, test_rules

DEFAULT_RULES = "default_rules.yaml"

__all__ = ["DEFAULT_RULES", "default_rules_text", "read_traces", "run_rules_test", "samples_path"]


def default_rules_text() -> str:
    """The rule file shipped in the package (``toolwatch/detectors/rules/default_rules.yaml``)."""
    return files("toolwatch.detectors.rules").joinpath(DEFAULT_RULES).read_text(encoding="utf-8")


def samples_path(rule_path: str | Path) -> Path:
    """Sibling samples file of a rule file: ``rules/x.yaml`` → ``rules/x.samples.yaml``."""
    p = Path(rule_path)
    return p.with_name(f"{p.stem}.samples{p.suffix or '.yaml'}")


def read_traces(paths: Iterable[str | Path]) -> list[ToolCall]:
    """JSON lines of ToolCall dicts; blank lines and ``#`` comments are skipped.

    Raises RuleError naming ``file:line`` for the first line that is not a valid call.
    """
    calls: list[ToolCall] = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as e:
                    raise RuleError(f"{path}:{n}: not JSON ({e.msg}); each line must be one ToolCall object") from None
                calls.append(call_from_dict(data, f"{path}:{n}"))
    return calls


def run_rules_test(
    rule_paths: Iterable[str | Path],
    trace_paths: Iterable[str | Path] = (),
    out: TextIO | None = None,
    show_findings: int = 20,
) -> int:
    """Exit code: 0 all samples pass, 1 a sample failed, 2 a rule or trace file is broken.

    With no rule paths, the shipped default rules are tested. A rule file's sibling
    ``NAME.samples.yaml`` adds samples. The first ``show_findings`` trace findings are listed.
    """
    out = out or sys.stdout
    rule_paths = list(rule_paths)
    try:
        sources = [(Path(p).read_text(encoding="utf-8"), str(p)) for p in rule_paths]
        if not sources:
            sources = [(default_rules_text(), DEFAULT_RULES)]
        ruleset = load_rule_files(sources)
        for path in rule_paths:
            sibling = samples_path(path)
            if sibling.exists():
                ruleset = load_samples(sibling.read_text(encoding="utf-8"), str(sibling), ruleset)
        events = read_traces(trace_paths)
    except RuleError as e:
        print(f"rules test: {len(e.problems)} problem(s):", file=out)
        for problem in e.problems:
            print(f"  {problem}", file=out)
        return 2
    except OSError as e:
        print(f"rules test: cannot read {e.filename}: {e.strerror}", file=out)
        return 2
    report = test_rules(ruleset, events)
    for line in report.lines(show_findings):
        print(line, file=out)
    return 0 if report.ok else 1
