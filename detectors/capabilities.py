"""What each server/tool can do, so detectors reason in capabilities instead of tool names.

Four capabilities: ``reads_untrusted`` (web, mail, issues: content an attacker can write),
``reads_sensitive`` (files, secrets, databases), ``sends_out`` (mail, HTTP, messaging, uploads,
payments) and ``destructive``. They come from three layers, later layers winning:

1. name heuristics on the tool and server names (and a few description phrases);
2. MCP tool annotations from ``tools/list`` (``destructiveHint``, ``openWorldHint``,
   ``readOnlyHint``) — these only *add* capabilities: annotations are hints written by the server,
   and a hostile server would declare itself read-only to hide, so ``readOnlyHint`` removes nothing;
3. operator configuration: glob patterns on ``server/tool`` that ``set``, ``add`` or ``remove``
   capabilities, applied in file order (the last word is the operator's).
"""

from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .base import Detector
from .events import Batch, Finding, ToolDefinition, ToolListing

READS_UNTRUSTED = "reads_untrusted"
READS_SENSITIVE = "reads_sensitive"
SENDS_OUT = "sends_out"
DESTRUCTIVE = "destructive"
CAPABILITIES: tuple[str, ...] = (READS_UNTRUSTED, READS_SENSITIVE, SENDS_OUT, DESTRUCTIVE)

__all__ = [
    "CAPABILITIES",
    "DESTRUCTIVE",
    "READS_SENSITIVE",
    "READS_UNTRUSTED",
    "SENDS_OUT",
    "CapabilityConfig",
    "CapabilityMap",
    "CapabilityOverride",
    "annotation_capabilities",
    "heuristic_capabilities",
]

# --- heuristics --------------------------------------------------------------------------------
_SEND_VERBS = frozenset(
    "send post upload publish share notify forward reply tweet transfer pay wire submit push "
    "email mail message sms text dm webhook invoice charge refund payout".split()
)
_FETCH_VERBS = frozenset("fetch browse scrape crawl navigate download".split())
_UNTRUSTED_NOUNS = frozenset(
    "web url urls page pages html http https browser website inbox mail mails email emails "
    "messages issue issues comment comments rss feed news tweets search pr prs pull".split()
)
_SENSITIVE_NOUNS = frozenset(
    "file files fs filesystem secret secrets vault password passwords credential credentials "
    "key keys keychain token tokens env environment database db sql query postgres mysql "
    "sqlite mongo ssh kms customer customers pii record records payroll salary hr".split()
)
_WRITE_VERBS = frozenset("write create update set put edit insert save".split())
_DESTRUCTIVE_VERBS = frozenset(
    "delete remove rm drop truncate destroy kill wipe purge revoke terminate erase overwrite "
    "reset format shred uninstall".split()
)
_SEND_PHRASES = re.compile(
    r"\b(sends?|posts?|uploads?|publish(es)?)\b[^.]{0,40}\b(e-?mail|message|http|webhook|url|"
    r"server|channel|payment|slack|sms)\b|\bhttp (post|request)\b|\btransfers? (money|funds)\b",
    re.IGNORECASE,
)
_DESTRUCTIVE_PHRASES = re.compile(
    r"\b(permanently|irreversibly) (deletes?|removes?|destroys?)\b", re.IGNORECASE
)
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_RUN = re.compile(r"[A-Za-z0-9]+")
_HEX_ID = re.compile(r"(?=[A-Fa-f]*\d)[0-9A-Fa-f]{6,}")
"""A hash or id in a name (``status_0db00000``, ``job_3fa2c1``): six or more hex digits, at least
one a digit. Its letters are not words: ``0db00000`` would otherwise read as the noun ``db``."""


def _words(text: str) -> list[str]:
    """Split ``sendEmail``, ``send_email``, ``send-email`` alike into lower-case words; hex ids
    (``_HEX_ID``) between separators are skipped."""
    return [w.lower() for run in _RUN.findall(text) if not _HEX_ID.fullmatch(run) for w in _WORD.findall(run)]


def heuristic_capabilities(server: str, tool: str, description: str = "") -> frozenset[str]:
    """Best guess from names: verbs come from the tool name, nouns from tool and server names."""
    verbs = set(_words(tool))
    nouns = verbs | set(_words(server))
    caps: set[str] = set()
    sending = bool(verbs & _SEND_VERBS)
    writing = bool(verbs & _WRITE_VERBS)
    destroying = bool(verbs & _DESTRUCTIVE_VERBS)
    if sending or _SEND_PHRASES.search(description):
        caps.add(SENDS_OUT)
    if destroying or _DESTRUCTIVE_PHRASES.search(description):
        caps.add(DESTRUCTIVE)
    if verbs & _FETCH_VERBS or (nouns & _UNTRUSTED_NOUNS and not (sending or writing or destroying)):
        caps.add(READS_UNTRUSTED)
    if nouns & _SENSITIVE_NOUNS and not (sending or writing or destroying):
        caps.add(READS_SENSITIVE)
    return frozenset(caps)


def annotation_capabilities(annotations: Any) -> frozenset[str]:
    """Capabilities that explicit MCP annotations add; absent hints add nothing."""
    if not isinstance(annotations, Mapping):
        return frozenset()
    caps: set[str] = set()
    if annotations.get("destructiveHint") is True:
        caps.add(DESTRUCTIVE)
    if annotations.get("openWorldHint") is True:
        caps.add(READS_UNTRUSTED)
        if annotations.get("readOnlyHint") is not True:
            caps.add(SENDS_OUT)
    return frozenset(caps)


# --- configuration -----------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class CapabilityOverride:
    """One operator entry: ``match`` is a glob on ``server/tool`` (``gmail/*``, ``*/send_*``)."""

    match: str
    set: frozenset[str] | None = None
    add: frozenset[str] = frozenset()
    remove: frozenset[str] = frozenset()

    def apply(self, caps: frozenset[str]) -> frozenset[str]:
        base = self.set if self.set is not None else caps
        return (base | self.add) - self.remove


@dataclass(slots=True)
class CapabilityConfig:
    """The ``capabilities:`` section of the config."""

    heuristics: bool = True
    annotations: bool = True
    tools: list[CapabilityOverride] = field(default_factory=list)
    max_tools: int = 10_000
    """Bound on remembered tool definitions (LRU)."""

    def validate(self) -> None:
        if self.max_tools < 1:
            raise ValueError("capabilities.max_tools must be at least 1")
        for i, o in enumerate(self.tools):
            key = f"capabilities.tools[{i}]"
            if not o.match:
                raise ValueError(f"{key}.match must be a non-empty glob such as 'gmail/*'")
            for part, caps in (("set", o.set or frozenset()), ("add", o.add), ("remove", o.remove)):
                bad = sorted(set(caps) - set(CAPABILITIES))
                if bad:
                    raise ValueError(
                        f"{key}.{part}: unknown capability {', '.join(bad)}; "
                        f"use one of {', '.join(CAPABILITIES)}"
                    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "CapabilityConfig":
        """Build from the YAML-shaped dict; raises ValueError naming the key that is wrong."""
        data = dict(data or {})
        known = {"heuristics", "annotations", "tools", "max_tools"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"capabilities: unknown key {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        tools_raw = data.get("tools") or []
        if not isinstance(tools_raw, list):
            raise ValueError("capabilities.tools must be a list of {match, set|add|remove}")
        tools = []
        for i, entry in enumerate(tools_raw):
            key = f"capabilities.tools[{i}]"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{key} must be a mapping with 'match' and 'set', 'add' or 'remove'")
            extra = sorted(set(entry) - {"match", "set", "add", "remove"})
            if extra:
                raise ValueError(f"{key}: unknown key {', '.join(extra)}; use match, set, add, remove")
            tools.append(
                CapabilityOverride(
                    match=str(entry.get("match", "")),
                    set=_capset(entry["set"], f"{key}.set") if "set" in entry else None,
                    add=_capset(entry.get("add", []), f"{key}.add"),
                    remove=_capset(entry.get("remove", []), f"{key}.remove"),
                )
            )
        cfg = cls(
            heuristics=bool(data.get("heuristics", True)),
            annotations=bool(data.get("annotations", True)),
            tools=tools,
            max_tools=int(data.get("max_tools", 10_000)),
        )
        cfg.validate()
        return cfg


def _capset(value: Any, key: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key} must be a list of capabilities")
    return frozenset(str(v) for v in value)


# --- the shared map ----------------------------------------------------------------------------
class CapabilityMap:
    """Capabilities per ``server/tool``, shared by the detectors and the rule engine.

    ``learn(listings)`` is idempotent, so every detector that holds the map may feed it the
    batch's listings; answers are cached and the cache is dropped when a definition changes.
    """

    def __init__(self, config: CapabilityConfig | None = None) -> None:
        self.config = config or CapabilityConfig()
        self.config.validate()
        self._definitions: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self._cache: dict[str, frozenset[str]] = {}
        self.version = 0
        """Changes whenever an answer of ``of`` may change (a definition learnt or dropped, a
        restore): what a holder derived from ``of`` stays true while it stands."""

    def learn(self, listings: Iterable[ToolListing]) -> None:
        """Remember descriptions and annotations from ``tools/list`` results."""
        for listing in listings:
            for d in listing.tools:
                self.learn_definition(listing.server, d)

    def learn_definition(self, server: str, definition: ToolDefinition) -> None:
        key = _token(server, definition.name)
        value = (definition.description or "", definition.annotations)
        if self._definitions.get(key) == value:
            self._definitions.move_to_end(key)
            return
        self._definitions[key] = value
        self._definitions.move_to_end(key)
        self._cache.pop(key, None)
        self.version += 1
        while len(self._definitions) > self.config.max_tools:
            old, _ = self._definitions.popitem(last=False)
            self._cache.pop(old, None)

    def of(self, server: str, tool: str) -> frozenset[str]:
        """Capabilities of one tool; unknown tools get heuristics and configuration only."""
        key = _token(server, tool)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        description, annotations = self._definitions.get(key, ("", None))
        caps: frozenset[str] = frozenset()
        if self.config.heuristics:
            caps = heuristic_capabilities(server, tool, description)
        if self.config.annotations:
            caps = caps | annotation_capabilities(annotations)
        for override in self.config.tools:
            if fnmatch.fnmatchcase(key, override.match):
                caps = override.apply(caps)
        if len(self._cache) >= self.config.max_tools:
            self._cache.clear()
        self._cache[key] = caps
        return caps

    def has(self, server: str, tool: str, capability: str) -> bool:
        return capability in self.of(server, tool)

    def snapshot(self) -> dict[str, Any]:
        """Learned definitions as plain data (the configuration is not state)."""
        return {"definitions": [[k, d, a] for k, (d, a) in self._definitions.items()]}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._definitions = OrderedDict((str(k), (str(d), a)) for k, d, a in state.get("definitions", []))
        self._cache.clear()
        self.version += 1


def _token(server: str, tool: str) -> str:
    return f"{server}/{tool}"


class CapabilityLearner(Detector):
    """Carries a shared ``CapabilityMap`` through the pipeline so its learned state is persisted.

    The map is shared by the flow detectors (each also feeds it listings; learning is idempotent);
    this adapter gives it a name, a snapshot and a restore like every other detector.
    """

    name = "capabilities"

    def __init__(self, capabilities: CapabilityMap) -> None:
        self.capabilities = capabilities

    def observe(self, batch: Batch) -> list[Finding]:
        self.capabilities.learn(batch.listings)
        return []

    def snapshot(self) -> dict[str, Any]:
        return self.capabilities.snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        self.capabilities.restore(state)
