"""Validation of a webhook's routing, rate-limit and retry settings (the keys beyond url/format).

Kept apart from ``config.py`` so the shared config module only grows by one call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .config import WebhookConfig


def _string_list(value: Any, key: str) -> list[str]:
    from .config import ConfigError

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: must be a list of non-empty strings, got {value!r}")
    return list(value)


def validate_webhook_extras(hook: "WebhookConfig", key: str) -> None:
    """Raise ConfigError naming ``{key}.<field>`` for any bad route/rate/retry setting."""
    from .config import ConfigError

    hook.detectors = _string_list(hook.detectors, f"{key}.detectors")
    hook.agents = _string_list(hook.agents, f"{key}.agents")
    from .sinks.formats import GROUP_KEYS

    hook.group_by = _string_list(hook.group_by, f"{key}.group_by")
    bad = [g for g in hook.group_by if g not in GROUP_KEYS]
    if bad:
        raise ConfigError(f"{key}.group_by: {', '.join(map(repr, bad))} not groupable; use any of {', '.join(GROUP_KEYS)}")
    if hook.rate_limit_per_min < 0:
        raise ConfigError(f"{key}.rate_limit_per_min: must be 0 (unlimited) or positive, got {hook.rate_limit_per_min}")
    if hook.rate_limit_burst < 1:
        raise ConfigError(f"{key}.rate_limit_burst: must be at least 1, got {hook.rate_limit_burst}")
    if hook.backoff_base_s <= 0:
        raise ConfigError(f"{key}.backoff_base_s: must be positive, got {hook.backoff_base_s}")
    if hook.backoff_cap_s < hook.backoff_base_s:
        raise ConfigError(
            f"{key}.backoff_cap_s: must be greater or equal to backoff_base_s ({hook.backoff_base_s}), got {hook.backoff_cap_s}"
        )
    if hook.max_age_s <= 0:
        raise ConfigError(f"{key}.max_age_s: must be positive (seconds before an undelivered message is dead), got {hook.max_age_s}")
