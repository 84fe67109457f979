"""Policy YAML loader: clear errors naming the key path, and nothing else ever raised."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.detectors.config_fields import ConfigError
from toolwatch.detectors.policy_config import PolicyConfig, PolicyConfigError

EXAMPLE = """
default: allow
roles:
  support: ["support-*"]
subjects:
  - roles: [support]
    allow_servers: [crm]
arguments:
  - tools: ["mail/send_*"]
    max_bytes: 100
destructive:
  allowed_roles: [support]
"""


def test_example_loads():
    cfg = PolicyConfig.from_dict(yaml.safe_load(EXAMPLE), source="policy.yaml")
    assert cfg.roles == {"support": ("support-*",)} and cfg.subjects[0].allow_servers == ("crm",)
    assert cfg.arguments[0].max_bytes == 100 and cfg.destructive.allowed_roles == ("support",)


@pytest.mark.parametrize("data,where", [
    ({"defualt": "allow"}, "policy.yaml: defualt: unknown key"),
    ({"default": "maybe"}, "policy.yaml: default: must be one of allow, deny"),
    ({"roles": {"x": [1]}}, "policy.yaml: roles.x[0]: expected a string"),
    ({"subjects": [{"allow_servers": ["a"]}]}, "policy.yaml: subjects[0]: needs agents or roles"),
    ({"subjects": [{"roles": ["ghost"]}]}, "policy.yaml: subjects[0].roles[0]: unknown role 'ghost'"),
    ({"subjects": [{"agents": ["*"], "allow_tool": ["x"]}]}, "policy.yaml: subjects[0].allow_tool: unknown key"),
    ({"subjects": {"agents": ["*"]}}, "policy.yaml: subjects: expected a list"),
    ({"arguments": [{"deny_patterns": ["(unclosed"]}]},
     "policy.yaml: arguments[0].deny_patterns[0]: invalid regular expression"),
    ({"arguments": [{"max_bytes": -1}]}, "policy.yaml: arguments[0].max_bytes: expected a non-negative integer"),
    ({"arguments": [{"tools": ["*"]}]}, "policy.yaml: arguments[0]: sets no bound"),
    ({"destructive": {"action": "block"}}, "policy.yaml: destructive.action: must be one of deny, hold"),
    ({"destructive": {"use_annotations": "yes"}}, "policy.yaml: destructive.use_annotations: expected true or false"),
    ({"subjects": [{"agents": [""]}]}, "policy.yaml: subjects[0].agents[0]: empty pattern"),
    ([1, 2], "policy.yaml: config: expected a mapping"),
])
def test_errors_name_the_key_path(data, where):
    with pytest.raises(PolicyConfigError) as info:
        PolicyConfig.from_dict(data, source="policy.yaml")
    assert str(info.value).startswith(where), str(info.value)


def test_error_is_a_value_error():
    assert issubclass(PolicyConfigError, ValueError) and issubclass(PolicyConfigError, ConfigError)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12) | st.integers(), c, max_size=4),
    max_leaves=25)

KEYS = ["default", "roles", "subjects", "arguments", "destructive", "schema_validation", "schema_violation"]
SUB_KEYS = ["agents", "roles", "allow_servers", "deny_servers", "allow_tools", "deny_tools", "tools", "max_bytes",
            "deny_patterns", "action", "use_annotations", "allowed_roles"]
near_valid = st.fixed_dictionaries({}, optional={
    k: st.one_of(json_like, st.lists(st.dictionaries(st.sampled_from(SUB_KEYS), json_like, max_size=4), max_size=3),
                 st.dictionaries(st.sampled_from(SUB_KEYS + ["support"]), json_like, max_size=4),
                 st.sampled_from(["allow", "deny", "hold"]))
    for k in KEYS})


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_like, near_valid))
def test_loader_raises_only_clear_config_errors(data):
    try:
        cfg = PolicyConfig.from_dict(data, source="p.yaml")
    except PolicyConfigError as exc:
        assert str(exc).startswith("p.yaml: ")
    else:
        assert cfg.default in ("allow", "deny")
