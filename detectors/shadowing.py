"""Tool shadowing: one agent sees the same or a confusable tool name on two servers, or a
description that names another server's tool.

Why: when two servers offer ``send_email`` (or ``send_emaіl`` with a Cyrillic ``і``, or
``Send-Email``), the model may call the attacker's copy; and a description on one server that
mentions another server's tool is how a malicious server steers calls it does not own.

Confusable names are compared by a *skeleton*: each character is mapped to an ASCII look-alike
using the Unicode confusables data shipped by the ``confusable_homoglyphs`` package (UTS #39
``confusables.txt``), plus a few ASCII look-alikes (``1``/``I``→``l``, ``0``→``o``, ``rn``→``m``),
then casefolded with ``_``, ``-``, ``.`` and spaces removed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from confusable_homoglyphs.confusables import confusables_data

from .base import PerAgentDetector
from .config_fields import load_flat, require
from .events import Batch, Finding, ToolListing

__all__ = ["ShadowingConfig", "ToolShadowingDetector", "skeleton", "skeletons", "is_distinctive_name"]

_ASCII_LOOKALIKES = {"1": "l", "|": "l", "0": "o", "O": "o"}
_SEPARATORS = re.compile(r"[\s_\-.]+")


@lru_cache(maxsize=4096)
def _ascii_for(ch: str) -> str:
    if ch.isascii():
        return ch
    for glyph in confusables_data.get(ch, ()):
        c = glyph.get("c", "")
        if c and c.isascii():
            return c
    return ch


@lru_cache(maxsize=65536)
def skeleton(name: str, capital_i_as_l: bool = False) -> str:
    """A comparison key under which confusable tool names are equal.

    >>> skeleton("send_email") == skeleton("Send-Emaіl") == skeleton("sendemai1") == skeleton("SEND_EMAIL")
    True
    """
    text = unicodedata.normalize("NFKC", name)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Mn"))
    text = "".join(_ASCII_LOOKALIKES.get(c, c) for c in (_ascii_for(ch) for ch in text))
    if capital_i_as_l:
        text = text.replace("I", "l")
    text = _SEPARATORS.sub("", text.casefold())
    return text.replace("rn", "m").replace("vv", "w")


def skeletons(name: str) -> set[str]:
    """Both readings of a capital ``I`` (case variant of ``i``, or look-alike of ``l``)."""
    return {skeleton(name), skeleton(name, capital_i_as_l=True)}


def is_distinctive_name(name: str, min_length: int) -> bool:
    """Names worth looking for in other descriptions: long enough and not a plain word."""
    return len(name) >= min_length and (bool(re.search(r"[_\-.]", name)) or bool(re.search(r"[a-z][A-Z]", name)))


@dataclass(slots=True)
class ShadowingConfig:
    """YAML key ``shadowing``."""

    report_identical: bool = True
    """Report the exact same name on two servers (medium); confusable variants are always high."""
    ignore_names: tuple[str, ...] = ()
    """Tool names expected on several servers (e.g. ``health``), compared by skeleton."""
    mention_min_length: int = 6
    """Shortest tool name looked for in another server's descriptions."""
    max_servers_per_agent: int = 256

    def validate(self) -> None:
        require(self.mention_min_length >= 3, "mention_min_length", "must be at least 3")
        require(self.max_servers_per_agent >= 2, "max_servers_per_agent", "must be at least 2")

    @classmethod
    def from_dict(cls, data: Any, path: str = "shadowing") -> "ShadowingConfig":
        return load_flat(cls, data, path)


# Per-agent state: {"servers": {server: {tool: description}}, "alerted": [keys]}
State = dict[str, Any]


class ToolShadowingDetector(PerAgentDetector[State]):
    """Compares every listing with the other servers the same agent has listed."""

    name = "shadowing"

    def __init__(self, config: ShadowingConfig | None = None) -> None:
        super().__init__()
        self.config = config or ShadowingConfig()
        self.config.validate()
        self._ignored = {k for n in self.config.ignore_names for k in skeletons(n)}

    def new_state(self) -> State:
        return {"servers": {}, "alerted": [], "first": {}}

    def state_to_dict(self, state: State) -> dict[str, Any]:
        return {"servers": {s: dict(t) for s, t in state["servers"].items()}, "alerted": list(state["alerted"]),
                "first": dict(state.get("first", {}))}

    def state_from_dict(self, data: dict[str, Any]) -> State:
        return {"servers": {s: dict(t) for s, t in data.get("servers", {}).items()},
                "alerted": list(data.get("alerted", [])), "first": dict(data.get("first", {}))}

    def observe(self, batch: Batch) -> list[Finding]:
        findings: list[Finding] = []
        for listing in sorted(batch.listings, key=lambda x: x.time_ns):
            findings.extend(self._observe_listing(listing))
        return findings

    def _observe_listing(self, listing: ToolListing) -> list[Finding]:
        st = self.state_for(listing.agent_id)
        servers: dict[str, dict[str, str]] = st["servers"]
        servers[listing.server] = {t.name: t.description for t in listing.tools}
        first: dict[str, str] = st.setdefault("first", {})
        first.setdefault(listing.server, listing.session_id)
        if len(servers) > self.config.max_servers_per_agent:
            dropped = next(k for k in servers if k != listing.server)
            servers.pop(dropped)
            first.pop(dropped, None)
        alerted: list[str] = st["alerted"]
        findings: list[Finding] = []
        mine = servers[listing.server]
        for other, tools in sorted(servers.items()):
            if other == listing.server:
                continue
            by_skeleton: dict[str, list[str]] = {}
            for name in tools:
                for k in skeletons(name):
                    by_skeleton.setdefault(k, []).append(name)
            for name in sorted(mine):
                keys = skeletons(name)
                if keys & self._ignored:
                    continue
                key = min(keys)
                for theirs in sorted({t for k in keys for t in by_skeleton.get(k, ())}):
                    identical = theirs == name
                    if identical and not self.config.report_identical:
                        continue
                    pair = sorted([f"{listing.server}/{name}", f"{other}/{theirs}"])
                    # Two servers the agent was set up with together (first listed in one session)
                    # that both offer ``search`` are a deployment choice, a low signal; a server
                    # that turns up later offering an established server's tool name is the attack.
                    together = bool(listing.session_id) and first.get(other) == first.get(listing.server)
                    findings += self._once(alerted, f"name:{pair[0]}|{pair[1]}", listing, name,
                        ("low" if together else "medium") if identical else "high",
                        (f"tool {name!r} is exposed by both {listing.server!r} and {other!r}" if identical else
                         f"tool {name!r} on {listing.server!r} is confusable with {theirs!r} on {other!r}"),
                        {"kind": "identical" if identical else "confusable", "tools": pair, "skeleton": key,
                         "listed_together": together,
                         "codepoints": [f"U+{ord(c):04X}" for c in name if not c.isascii()]})
            # Descriptions naming another server's tool, in both directions.
            for (src, descs), (dst, names) in (((listing.server, mine), (other, tools)),
                                               ((other, tools), (listing.server, mine))):
                for tool, desc in sorted(descs.items()):
                    for target in sorted(names):
                        if target in descs or not is_distinctive_name(target, self.config.mention_min_length):
                            continue
                        if re.search(rf"(?<![\w-]){re.escape(target)}(?![\w-])", desc or ""):
                            findings += self._once(alerted, f"mention:{src}/{tool}->{dst}/{target}", listing, tool,
                                "medium", f"description of {src}/{tool} mentions {dst!r}'s tool {target!r}",
                                {"kind": "cross_server_mention", "describing": f"{src}/{tool}",
                                 "mentioned": f"{dst}/{target}"}, server=src)
        return findings

    def _once(self, alerted: list[str], key: str, listing: ToolListing, tool: str, severity: str, reason: str,
              evidence: dict[str, Any], server: str = "") -> list[Finding]:
        if key in alerted:
            return []
        alerted.append(key)
        del alerted[:-4096]
        return [Finding(detector=self.name, severity=severity, agent_id=listing.agent_id, reason=reason,
                        time_ns=listing.time_ns, session_id=listing.session_id, server=server or listing.server,
                        tool=tool, span_ids=(listing.span_id,) if listing.span_id else (),
                        trace_ids=(listing.trace_id,) if listing.trace_id else (), evidence=evidence,
                        dedup_key=f"shadowing:{listing.agent_id}:{key}")]
