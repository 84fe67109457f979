"""Load flat detector config dataclasses from YAML-shaped dicts, with errors that name the key.

Why: every rule detector has a small typed config; the same "unknown key / wrong type" checks
written four times would drift apart, so they live here once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key path and what to do."""


def key_path(prefix: str, key: str | int) -> str:
    """``prefix.key`` or ``prefix[3]``: how errors name a place in the YAML document."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


def expect_mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(f"{path or 'config'}: key {k!r} must be a string")
    return value


def expect_str_list(value: Any, path: str) -> list[str]:
    """A list of strings; a single string is accepted as a one-item list (YAML convenience)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected a list of strings, got {type(value).__name__}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{key_path(path, i)}: expected a string, got {type(item).__name__}")
        out.append(item)
    return out


def coerce(value: Any, default: Any, path: str) -> Any:
    """Check ``value`` against the type of the field's default and return it in that type."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(default, (list, tuple)):
        return tuple(expect_str_list(value, path))
    if isinstance(default, dict):
        mapping = expect_mapping(value, path)
        return {k: (v if isinstance(v, str) else coerce(v, "", key_path(path, k))) for k, v in mapping.items()}
    return value


def load_flat(cls: type[T], data: Any, path: str) -> T:
    """Build the dataclass ``cls`` from a mapping of its field names; unknown keys are errors.

    Only flat fields (bool, int, float, str, tuple of str, dict of str) are supported: that is all
    the rule detectors need, and it keeps their YAML shape obvious.
    """
    mapping = expect_mapping(data, path)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in mapping.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{key_path(path, key)}: unknown key; known keys are: {known}")
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs[key] = coerce(value, default, key_path(path, key))
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as exc:
            raise ConfigError(f"{path}.{exc}" if path else str(exc)) from None
    return obj


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``condition`` holds (used by ``validate()``)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")
