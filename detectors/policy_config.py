"""The policy file: who may call which servers and tools, with which arguments.

Why a separate module: loading and validating operator YAML is its own job (errors must name
the key path and say what to do); evaluating calls lives in ``policy.py``.

Shape (a mapping, usually the ``policy:`` key of the config file)::

    default: allow                 # allow | deny when no allow list applies to the agent
    roles:                         # role -> agent-id glob patterns
      support: ["support-*"]
      admin: ["ops-admin"]
    subjects:                      # who the lists apply to: agent globs and/or roles
      - agents: ["support-*"]
        roles: [support]
        allow_servers: [crm, mail]
        deny_servers: []
        allow_tools: ["crm/*", "mail/send_email"]   # server/tool globs; a bare name = any server
        deny_tools: ["*/delete_*"]
    arguments:                     # bounds on (redacted) arguments
      - tools: ["mail/send_*"]
        agents: []                 # optional: agent globs
        roles: []                  # optional
        max_bytes: 20000
        deny_patterns: ['"bcc"\\s*:']
        action: deny               # deny | hold
    destructive:
      tools: ["fs/delete_*"]      # configured destructive tools
      use_annotations: true       # also tools whose MCP annotations say destructiveHint: true
      allowed_roles: [admin]
      action: hold                 # deny | hold for everyone else
    schema_validation: true        # validate arguments against the tool's listed inputSchema
    schema_violation: hold         # deny | hold
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config_fields import ConfigError, expect_mapping, expect_str_list, key_path

__all__ = ["ArgumentRule", "DestructiveRule", "PolicyConfig", "PolicyConfigError", "Subject"]

ACTIONS = ("deny", "hold")


class PolicyConfigError(ConfigError):
    """The policy file is wrong; the message starts with ``source: key.path:``."""


@dataclass(slots=True, frozen=True)
class Subject:
    agents: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    allow_servers: tuple[str, ...] = ()
    deny_servers: tuple[str, ...] = ()
    allow_tools: tuple[str, ...] = ()
    deny_tools: tuple[str, ...] = ()
    path: str = ""


@dataclass(slots=True, frozen=True)
class ArgumentRule:
    tools: tuple[str, ...] = ("*",)
    agents: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    max_bytes: int = 0
    deny_patterns: tuple[re.Pattern[str], ...] = ()
    action: str = "deny"
    path: str = ""


@dataclass(slots=True, frozen=True)
class DestructiveRule:
    tools: tuple[str, ...] = ()
    use_annotations: bool = True
    allowed_roles: tuple[str, ...] = ()
    action: str = "hold"
    path: str = "destructive"


@dataclass(slots=True)
class PolicyConfig:
    """A validated policy; build it with ``from_dict``."""

    default: str = "allow"
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    subjects: tuple[Subject, ...] = ()
    arguments: tuple[ArgumentRule, ...] = ()
    destructive: DestructiveRule = field(default_factory=DestructiveRule)
    schema_validation: bool = True
    schema_violation: str = "hold"
    source: str = "policy.yaml"

    def validate(self) -> None:
        if self.default not in ("allow", "deny"):
            raise PolicyConfigError(f"{self.source}: default: must be allow or deny, got {self.default!r}")
        if self.schema_violation not in ACTIONS:
            raise PolicyConfigError(f"{self.source}: schema_violation: must be deny or hold")

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy.yaml") -> "PolicyConfig":
        """Parse and validate; every error is a ``PolicyConfigError`` naming ``source`` and the key path."""
        try:
            return _parse(data, source)
        except PolicyConfigError:
            raise
        except ConfigError as exc:
            raise PolicyConfigError(f"{source}: {exc}") from None


_TOP = {"default", "roles", "subjects", "arguments", "destructive", "schema_validation", "schema_violation"}


def _check_keys(mapping: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{key_path(path, key)}: unknown key; known keys are: {', '.join(sorted(allowed))}")


def _choice(value: Any, choices: tuple[str, ...], path: str) -> str:
    if value not in choices:
        raise ConfigError(f"{path}: must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    return value


def _globs(value: Any, path: str) -> tuple[str, ...]:
    items = expect_str_list(value, path)
    for i, item in enumerate(items):
        if not item.strip():
            raise ConfigError(f"{key_path(path, i)}: empty pattern; remove it or write '*'")
    return tuple(items)


def _roles_ref(value: Any, path: str, roles: Mapping[str, Any]) -> tuple[str, ...]:
    names = _globs(value, path)
    for i, name in enumerate(names):
        if name not in roles:
            raise ConfigError(f"{key_path(path, i)}: unknown role {name!r}; define it under roles")
    return names


def _patterns(value: Any, path: str) -> tuple[re.Pattern[str], ...]:
    out = []
    for i, text in enumerate(expect_str_list(value, path)):
        try:
            out.append(re.compile(text))
        except (re.error, ValueError, OverflowError, RecursionError) as exc:
            raise ConfigError(f"{key_path(path, i)}: invalid regular expression ({exc}); fix or quote it") from None
    return tuple(out)


def _parse(data: Any, source: str) -> PolicyConfig:
    top = expect_mapping(data, "")
    _check_keys(top, _TOP, "")
    roles_map = expect_mapping(top.get("roles"), "roles")
    roles = {name: _globs(globs, key_path("roles", name)) for name, globs in roles_map.items()}

    subjects = []
    subject_items = top.get("subjects") or []
    if not isinstance(subject_items, list):
        raise ConfigError("subjects: expected a list of subjects")
    subject_keys = {"agents", "roles", "allow_servers", "deny_servers", "allow_tools", "deny_tools"}
    for i, item in enumerate(subject_items):
        p = key_path("subjects", i)
        m = expect_mapping(item, p)
        _check_keys(m, subject_keys, p)
        if not m.get("agents") and not m.get("roles"):
            raise ConfigError(f"{p}: needs agents or roles to say whom it applies to (use agents: ['*'] for all)")
        subjects.append(Subject(
            agents=_globs(m.get("agents"), key_path(p, "agents")),
            roles=_roles_ref(m.get("roles"), key_path(p, "roles"), roles),
            **{k: _globs(m.get(k), key_path(p, k)) for k in ("allow_servers", "deny_servers", "allow_tools",
                                                               "deny_tools")},
            path=p))

    arguments = []
    arg_items = top.get("arguments") or []
    if not isinstance(arg_items, list):
        raise ConfigError("arguments: expected a list of argument rules")
    for i, item in enumerate(arg_items):
        p = key_path("arguments", i)
        m = expect_mapping(item, p)
        _check_keys(m, {"tools", "agents", "roles", "max_bytes", "deny_patterns", "action"}, p)
        max_bytes = m.get("max_bytes", 0)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ConfigError(f"{key_path(p, 'max_bytes')}: expected a non-negative integer (0 = no limit)")
        rule = ArgumentRule(
            tools=_globs(m.get("tools", ["*"]), key_path(p, "tools")) or ("*",),
            agents=_globs(m.get("agents"), key_path(p, "agents")),
            roles=_roles_ref(m.get("roles"), key_path(p, "roles"), roles),
            max_bytes=max_bytes,
            deny_patterns=_patterns(m.get("deny_patterns"), key_path(p, "deny_patterns")),
            action=_choice(m.get("action", "deny"), ACTIONS, key_path(p, "action")),
            path=p)
        if not rule.max_bytes and not rule.deny_patterns:
            raise ConfigError(f"{p}: sets no bound; give max_bytes or deny_patterns")
        arguments.append(rule)

    d = expect_mapping(top.get("destructive"), "destructive")
    _check_keys(d, {"tools", "use_annotations", "allowed_roles", "action"}, "destructive")
    destructive = DestructiveRule(
        tools=_globs(d.get("tools"), "destructive.tools"),
        use_annotations=_bool(d.get("use_annotations", True), "destructive.use_annotations"),
        allowed_roles=_roles_ref(d.get("allowed_roles"), "destructive.allowed_roles", roles),
        action=_choice(d.get("action", "hold"), ACTIONS, "destructive.action"))

    config = PolicyConfig(
        default=_choice(top.get("default", "allow"), ("allow", "deny"), "default"),
        roles=roles, subjects=tuple(subjects), arguments=tuple(arguments), destructive=destructive,
        schema_validation=_bool(top.get("schema_validation", True), "schema_validation"),
        schema_violation=_choice(top.get("schema_violation", "hold"), ACTIONS, "schema_violation"),
        source=source)
    config.validate()
    return config
