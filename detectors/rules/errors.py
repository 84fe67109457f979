"""The one error type of the rule language: every problem found, each with file, line and item."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Problem:
    """One thing wrong in a rule file, located well enough for an operator to fix it."""

    message: str
    source: str = ""
    line: int = 0
    item: str = ""
    """``rule 'name'``, ``macro 'name'``, … or empty for file-level problems."""

    def __str__(self) -> str:
        where = self.source or ("<rules>" if self.line else "")
        if self.line:
            where = f"{where}:{self.line}"
        text = f"{self.item}: {self.message}" if self.item else self.message
        return f"{where}: {text}" if where else text


class RuleError(ValueError):
    """Raised with *all* problems of a rule file, so one run shows everything to fix."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConditionError(RuleError):
    """A condition that does not parse; ``offset`` is the character position in the condition."""

    def __init__(self, message: str, offset: int) -> None:
        self.offset = offset
        self.detail = message
        super().__init__(f"{message} (at character {offset + 1})")
