"""Which detectors the daemon runs and how each is built from ``detectors.<name>`` config.

Order is the order detectors see each batch. The flow detectors share one capability map.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from toolwatch.detectors.base import Detector
from toolwatch.detectors.capabilities import CapabilityConfig, CapabilityLearner, CapabilityMap
from toolwatch.detectors.config_fields import ConfigError as DetectorConfigError
from toolwatch.detectors.config_fields import coerce, expect_mapping, key_path, load_flat
from toolwatch.detectors.exfiltration import ExfiltrationConfig, ExfiltrationDetector
from toolwatch.detectors.hijack import HijackConfig, HijackDetector
from toolwatch.detectors.iforest_detector import ForestConfig, IsolationForestDetector
from toolwatch.detectors.sequence_detector import SequenceConfig, SequenceDetector
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector
from toolwatch.detectors.poisoning import PoisoningConfig, ToolPoisoningDetector
from toolwatch.detectors.policy import PolicyDetector
from toolwatch.detectors.policy_config import PolicyConfig
from toolwatch.detectors.rugpull import RugPullConfig, RugPullDetector
from toolwatch.detectors.secret_args import SecretArgsConfig, SecretArgsDetector
from toolwatch.detectors.rules import RuleEngine, RuleEngineConfig, RuleError, load_rule_files
from toolwatch.detectors.shadowing import ShadowingConfig, ToolShadowingDetector
from toolwatch.detectors.volume import VolumeConfig, VolumeSpikeDetector

from .config import Config, ConfigError
from .rules_cli import DEFAULT_RULES, default_rules_text


@dataclass
class Shared:
    capabilities: CapabilityMap


def rule_files(conf: RuleEngineConfig) -> list[tuple[str, str]]:
    """The shipped rules first, then the operator's files in order (later ones may override)."""
    files = [(default_rules_text(), DEFAULT_RULES)]
    for path in conf.files:
        try:
            files.append((Path(path).read_text(encoding="utf-8"), path))
        except OSError as exc:
            raise RuleError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return files


def load_nested(cls: type, data: Any, path: str) -> Any:
    """A (possibly frozen) config dataclass whose fields may themselves be config dataclasses."""
    mapping = expect_mapping(data, path)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in mapping.items():
        if key not in fields:
            raise DetectorConfigError(f"{key_path(path, key)}: unknown key; known keys are: {', '.join(sorted(fields))}")
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            kwargs[key] = load_nested(type(default), value, key_path(path, key))
        else:
            kwargs[key] = coerce(value, default, key_path(path, key))
    obj = cls(**kwargs)
    if path.count(".") <= 1:  # nested parts are validated by their parent
        obj.validate()
    return obj


def _iforest(raw: dict[str, Any], path: str, shared: Shared) -> Detector:
    raw.setdefault("auto_retrain", False)  # the daemon retrains off the hot path (retrain.py)
    return IsolationForestDetector(load_nested(ForestConfig, raw, path))


def _new_tool(raw: dict[str, Any], path: str, shared: Shared) -> Detector:
    conf = load_flat(NewToolConfig, raw, path)
    conf.validate()
    return NewToolDetector(conf)


def _rules(raw: dict[str, Any], path: str, shared: Shared) -> Detector:
    raw.setdefault("destination_warmup_calls", 50)  # a new agent's first destinations are not news
    conf = RuleEngineConfig.from_dict(raw)
    try:
        ruleset = load_rule_files(rule_files(conf))
    except RuleError as exc:
        raise ConfigError(f"{path}.files: {exc}") from None
    return RuleEngine(ruleset, shared.capabilities, conf)


Factory = Callable[[dict[str, Any], str, Shared], Detector]

FACTORIES: dict[str, Factory] = {
    "new_tool": _new_tool,
    "rugpull": lambda raw, path, sh: RugPullDetector(RugPullConfig.from_dict(raw, path)),
    "poisoning": lambda raw, path, sh: ToolPoisoningDetector(PoisoningConfig.from_dict(raw, path)),
    "shadowing": lambda raw, path, sh: ToolShadowingDetector(ShadowingConfig.from_dict(raw, path)),
    "volume": lambda raw, path, sh: VolumeSpikeDetector(VolumeConfig.from_dict(raw, path)),
    "policy": lambda raw, path, sh: PolicyDetector(PolicyConfig.from_dict(raw, source=path)),
    "exfiltration": lambda raw, path, sh: ExfiltrationDetector(ExfiltrationConfig.from_dict(raw), sh.capabilities),
    "hijack": lambda raw, path, sh: HijackDetector(HijackConfig.from_dict(raw), sh.capabilities),
    "secret_args": lambda raw, path, sh: SecretArgsDetector(SecretArgsConfig.from_dict(raw, path)),
    "rules": _rules,
    "sequence": lambda raw, path, sh: SequenceDetector(load_nested(SequenceConfig, raw, path)),
    "iforest": _iforest,
}
SETTINGS_ONLY = ("capabilities",)
"""Sections under ``detectors:`` that configure shared state rather than a detector."""


def build_detectors(cfg: Config) -> list[Detector]:
    """Every built-in detector, configured from ``cfg.detectors``; ``enabled: false`` turns one off."""
    known = list(FACTORIES) + list(SETTINGS_ONLY)
    unknown = sorted(set(cfg.detectors) - set(known))
    if unknown:
        raise ConfigError(f"detectors: unknown section(s) {', '.join(unknown)}; known: {', '.join(known)}")
    try:
        caps = CapabilityMap(CapabilityConfig.from_dict(cfg.detectors.get("capabilities")))
    except ValueError as exc:
        raise ConfigError(f"detectors.{exc}") from None
    shared = Shared(caps)
    out: list[Detector] = [CapabilityLearner(caps)]
    for name, make in FACTORIES.items():
        raw = dict(cfg.detectors.get(name) or {})
        enabled = raw.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"detectors.{name}.enabled: must be true or false, got {enabled!r}")
        if not enabled:
            continue
        try:
            out.append(make(raw, f"detectors.{name}", shared))
        except ConfigError:
            raise
        except (DetectorConfigError, ValueError) as exc:
            msg = str(exc)
            raise ConfigError(msg if msg.startswith("detectors.") else f"detectors.{msg}") from None
    return out
