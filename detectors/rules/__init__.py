"""The declarative rule language: Falco-style rules and macros, Sigma-style correlations."""

from .condition import parse_condition
from .engine import RuleEngine, RuleEngineConfig
from .errors import Problem, RuleError
from .fields import FIELDS
from .loader import load_rule_files, load_rules
from .samples_file import load_samples
from .model import Correlation, Rule, RuleSet
from .samples import call_from_dict
from .testing import RulesTestReport, SampleResult, check_samples, test_rules

__all__ = [
    "FIELDS",
    "Correlation",
    "Problem",
    "Rule",
    "RuleEngine",
    "RuleEngineConfig",
    "RuleError",
    "RuleSet",
    "RulesTestReport",
    "SampleResult",
    "call_from_dict",
    "check_samples",
    "load_rule_files",
    "load_rules",
    "load_samples",
    "parse_condition",
    "test_rules",
]
