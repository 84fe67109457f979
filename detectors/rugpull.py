"""Rug-pull detection: pin every tool definition per server identity, stage changes for approval.

Why: a server that was benign when the operator first looked can swap a tool's description,
schema or annotations later (a "rug pull"). Pinning only the description, or keying pins by tool
name, misses schema changes and renames; keeping pins only in memory forgets them on restart. So
the whole canonical definition (``ToolDefinition.sha256()``) of every tool is pinned per server
identity in the snapshot (the collector persists it), and every change is held *pending* until
an operator approves or rejects it.

Server identity = the server's name plus its address. The address comes from configuration
(``server_addresses``) when given; otherwise the first address observed on its calls is recorded
and a different address later is reported as an identity change. Pins are keyed by
``name@address`` when an address is configured, else by name.

Trust on first use (TOFU): the first listing seen for an identity becomes its pin (reported as an
``info`` finding). With ``trust_on_first_use: false`` a new server's tools are held pending instead.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .base import Detector
from .config_fields import load_flat, require
from .events import Batch, Finding, ToolCall, ToolDefinition, ToolListing, canonical_sha256

__all__ = ["RugPullConfig", "RugPullDetector", "definition_diff"]

MAX_ALERTED = 50_000
"""Bound on remembered dedup keys (oldest forgotten first)."""

KIND_SEVERITY: dict[str, str] = {
    "changed": "high",
    "renamed": "high",
    "added": "medium",
    "removed": "low",
    "instructions": "high",
    "version": "medium",
    "new_server": "medium",
}


@dataclass(slots=True)
class RugPullConfig:
    """YAML key ``rugpull``."""

    trust_on_first_use: bool = True
    """Pin the first listing seen for a server; false = hold a new server pending approval."""
    report_first_use: bool = True
    """Emit an ``info`` finding when a server is pinned on first use."""
    server_addresses: dict[str, str] = field(default_factory=dict)
    """Configured address per server name; part of the server's identity."""
    max_diff_lines: int = 200
    pending_call_severity: str = "low"

    def validate(self) -> None:
        require(self.max_diff_lines >= 5, "max_diff_lines", "must be at least 5 so a diff stays readable")
        require(
            self.pending_call_severity in ("info", "low", "medium", "high"),
            "pending_call_severity",
            "must be one of info, low, medium, high",
        )

    @classmethod
    def from_dict(cls, data: Any, path: str = "rugpull") -> "RugPullConfig":
        return load_flat(cls, data, path)


def definition_diff(old: dict[str, Any] | None, new: dict[str, Any] | None, label: str, max_lines: int = 200) -> str:
    """A unified diff of two canonical definitions as sorted, indented JSON (readable in alerts)."""

    def lines(value: dict[str, Any] | None) -> list[str]:
        if value is None:
            return []
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str).splitlines()

    out = list(difflib.unified_diff(lines(old), lines(new), f"pinned/{label}", f"observed/{label}", lineterm=""))
    if len(out) > max_lines:
        out = out[:max_lines] + [f"... ({len(out) - max_lines} more diff lines)"]
    return "\n".join(out)


def _body_sha(canonical: dict[str, Any]) -> str:
    """Hash of a definition without its name: equal bodies under different names = a rename."""
    return canonical_sha256({k: v for k, v in canonical.items() if k != "name"})


def _pending_id(identity: str, kind: str, tool: str, new_sha: str) -> str:
    return hashlib.sha256(f"{identity}\0{kind}\0{tool}\0{new_sha}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


class RugPullDetector(Detector):
    """Pins tool definitions per server identity; changes become pending items and findings."""

    name = "rugpull"

    def __init__(self, config: RugPullConfig | None = None) -> None:
        self.config = config or RugPullConfig()
        self.config.validate()
        # identity -> {"server", "address", "tools": {name: canonical}, "shas": {name: sha},
        #              "version", "instructions", "first_seen_ns", "addresses": [..]}
        self._servers: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self._rejected: dict[str, dict[str, Any]] = {}
        self._alerted: dict[str, None] = {}  # ordered set of dedup keys already reported
        self._pin_shas: dict[int, tuple[dict[str, Any], str]] = {}  # derived cache, holds the pin it hashed

    # ----------------------------------------------------------------- identity
    def identity(self, server: str) -> str:
        """The pin key for a server name: ``name@configured-address`` or the name alone."""
        addr = self.config.server_addresses.get(server, "")
        return f"{server}@{addr}" if addr else server

    # ----------------------------------------------------------------- observe
    def observe(self, batch: Batch) -> list[Finding]:
        findings: list[Finding] = []
        for listing in sorted(batch.listings, key=lambda x: x.time_ns):
            findings.extend(self._observe_listing(listing))
        if not self._servers:
            return findings  # nothing pinned yet: no call can be checked against anything
        for call in batch.calls:
            if call.server:
                findings.extend(self._observe_call(call))
        return findings

    def _observe_listing(self, listing: ToolListing) -> list[Finding]:
        ident = self.identity(listing.server)
        observed = {t.name: t.canonical() for t in listing.tools}
        pinned = self._servers.get(ident)
        if pinned is None:
            return self._first_use(ident, listing, observed)
        findings: list[Finding] = []
        old_tools: dict[str, dict[str, Any]] = pinned["tools"]
        removed = [n for n in old_tools if n not in observed]
        added = [n for n in observed if n not in old_tools]
        # Renames: a removed and an added tool with identical bodies.
        old_bodies = {_body_sha(old_tools[n]): n for n in removed}
        for new_name in list(added):
            old_name = old_bodies.pop(_body_sha(observed[new_name]), None)
            if old_name is None:
                continue
            added.remove(new_name)
            removed.remove(old_name)
            findings += self._stage(listing, ident, "renamed", new_name, old_tools[old_name], observed[new_name],
                                    f"tool {old_name!r} was renamed to {new_name!r}", old_name=old_name)
        for n in sorted(observed):
            if n in old_tools and canonical_sha256(observed[n]) != canonical_sha256(old_tools[n]):
                findings += self._stage(listing, ident, "changed", n, old_tools[n], observed[n],
                                        f"definition of tool {n!r} changed after it was pinned")
        for n in sorted(added):
            findings += self._stage(listing, ident, "added", n, None, observed[n], f"tool {n!r} was added")
        for n in sorted(removed):
            findings += self._stage(listing, ident, "removed", n, old_tools[n], None, f"tool {n!r} was removed")
        if listing.server_version and not pinned["version"]:
            pinned["version"] = listing.server_version  # first time a version is reported: pin it
        if listing.instructions_sha256 and not pinned["instructions"]:
            pinned["instructions"] = listing.instructions_sha256
        if listing.server_version and listing.server_version != pinned["version"]:
            findings += self._stage(listing, ident, "version", "", {"version": pinned["version"]},
                                    {"version": listing.server_version},
                                    f"server version changed from {pinned['version']!r} to {listing.server_version!r}")
        if listing.instructions_sha256 and listing.instructions_sha256 != pinned["instructions"]:
            findings += self._stage(listing, ident, "instructions", "", {"instructions_sha256": pinned["instructions"]},
                                    {"instructions_sha256": listing.instructions_sha256},
                                    "server instructions changed after they were pinned")
        return findings

    def _first_use(self, ident: str, listing: ToolListing, observed: dict[str, dict[str, Any]]) -> list[Finding]:
        record = {
            "server": listing.server,
            "address": self.config.server_addresses.get(listing.server, ""),
            "tools": {},
            "version": listing.server_version,
            "instructions": listing.instructions_sha256,
            "first_seen_ns": listing.time_ns,
            "addresses": [],
        }
        self._servers[ident] = record
        if not self.config.trust_on_first_use:
            findings: list[Finding] = []
            for n in sorted(observed):
                findings += self._stage(listing, ident, "new_server", n, None, observed[n],
                                        f"new server {listing.server!r}: tool {n!r} awaits approval (no trust on first use)")
            return findings
        record["tools"] = dict(observed)
        if not self.config.report_first_use:
            return []
        return [self._finding(listing, "info", f"server {listing.server!r} pinned on first use with {len(observed)} tools",
                              evidence={"identity": ident, "tools": {n: canonical_sha256(d) for n, d in observed.items()},
                                        "server_version": listing.server_version,
                                        "instructions_sha256": listing.instructions_sha256},
                              dedup=f"rugpull:tofu:{ident}")]

    def _stage(self, listing: ToolListing, ident: str, kind: str, tool: str, old: dict[str, Any] | None,
               new: dict[str, Any] | None, reason: str, old_name: str = "") -> list[Finding]:
        old_sha = canonical_sha256(old) if old is not None else ""
        new_sha = canonical_sha256(new) if new is not None else ""
        pid = _pending_id(ident, kind, tool, new_sha)
        if pid in self._rejected:
            key = f"rugpull:rejected:{pid}:{listing.agent_id}"
            if key in self._alerted:
                return []
            self._mark(key)
            return [self._finding(listing, "high", f"{reason}; this change was rejected by an operator but is still served",
                                  tool=tool, evidence={"pending_id": pid, "kind": kind, "old_sha256": old_sha,
                                                       "new_sha256": new_sha}, dedup=f"rugpull:rejected:{pid}")]
        if pid in self._pending:
            # Already staged and reported; another agent now being served the same unapproved
            # change is exposed too, so it is reported once per agent (same dedup key: one alert).
            item = self._pending[pid]
            key = f"rugpull:exposed:{pid}:{listing.agent_id}"
            if listing.agent_id == item["agent_id"] or key in self._alerted:
                return []
            self._mark(key)
            return [self._finding(listing, KIND_SEVERITY[kind], f"{reason}; pending approval since it was first "
                                  f"served to agent {item['agent_id']!r}, now served to this agent too", tool=tool,
                                  evidence={"pending_id": pid, "kind": kind, "identity": ident, "old_sha256": old_sha,
                                            "new_sha256": new_sha, "first_agent_id": item["agent_id"],
                                            "after_list_changed": listing.after_list_changed},
                                  dedup=f"rugpull:{pid}")]
        # A newer change to the same tool supersedes an older pending one.
        for other_id, item in list(self._pending.items()):
            if item["identity"] == ident and item["tool"] == tool and item["kind"] == kind:
                del self._pending[other_id]
        diff = definition_diff(old, new, tool or listing.server, self.config.max_diff_lines)
        if listing.after_list_changed:
            reason += " (served after a notifications/tools/list_changed)"
        self._pending[pid] = {
            "id": pid, "identity": ident, "server": listing.server, "tool": tool, "kind": kind,
            "old_name": old_name, "old_sha256": old_sha, "new_sha256": new_sha, "diff": diff,
            "first_seen_ns": listing.time_ns, "agent_id": listing.agent_id, "session_id": listing.session_id,
            "after_list_changed": listing.after_list_changed, "new": new, "reason": reason,
        }
        return [self._finding(listing, KIND_SEVERITY[kind], reason, tool=tool,
                              evidence={"pending_id": pid, "kind": kind, "identity": ident, "old_sha256": old_sha,
                                        "new_sha256": new_sha, "diff": diff, "old_name": old_name,
                                        "after_list_changed": listing.after_list_changed},
                              dedup=f"rugpull:{pid}")]

    def _observe_call(self, call: ToolCall) -> list[Finding]:
        if not call.server:
            return []
        ident = self.identity(call.server)
        record = self._servers.get(ident)
        if record is None:
            return []
        findings: list[Finding] = []
        addr = call.server_address
        if addr:
            expected = record["address"] or (record["addresses"][0] if record["addresses"] else "")
            if addr not in record["addresses"]:
                record["addresses"].append(addr)
                del record["addresses"][:-16]  # bounded
            if expected and addr != expected:
                key = f"rugpull:address:{ident}:{addr}"
                if key not in self._alerted:
                    self._mark(key)
                    findings.append(self._call_finding(call, "high",
                        f"server {call.server!r} answered from {addr!r}, not its pinned address {expected!r}",
                        {"identity": ident, "expected_address": expected, "observed_address": addr}, key))
        for item in self._pending.values():
            if item["identity"] != ident or item["tool"] != call.tool:
                continue
            key = f"rugpull:pending-call:{item['id']}:{call.agent_id}"
            if key not in self._alerted:
                self._mark(key)
                findings.append(self._call_finding(call, self.config.pending_call_severity,
                    f"call to tool {call.tool!r} whose {item['kind']} definition is pending approval",
                    {"pending_id": item["id"], "kind": item["kind"], "new_sha256": item["new_sha256"],
                     "call_definition_sha256": call.definition_sha256}, f"rugpull:pending-call:{item['id']}"))
            return findings
        pinned = record["tools"].get(call.tool)
        if call.definition_sha256 and pinned is not None and call.definition_sha256 != self._pinned_sha(pinned):
            key = f"rugpull:unpinned-call:{ident}:{call.tool}:{call.definition_sha256}"
            if key not in self._alerted:
                self._mark(key)
                findings.append(self._call_finding(call, "medium",
                    f"call to tool {call.tool!r} used a definition that differs from the pinned one",
                    {"identity": ident, "pinned_sha256": canonical_sha256(pinned),
                     "call_definition_sha256": call.definition_sha256}, key))
        return findings

    def _pinned_sha(self, pinned: dict[str, Any]) -> str:
        """``canonical_sha256`` of a pinned definition, once per pin object (pins are replaced, never edited)."""
        hit = self._pin_shas.get(id(pinned))
        if hit is not None and hit[0] is pinned:
            return hit[1]
        if len(self._pin_shas) >= 10_000:
            self._pin_shas.clear()
        sha = canonical_sha256(pinned)
        self._pin_shas[id(pinned)] = (pinned, sha)
        return sha

    def _mark(self, key: str) -> None:
        self._alerted[key] = None
        if len(self._alerted) > MAX_ALERTED:
            del self._alerted[next(iter(self._alerted))]

    # ----------------------------------------------------------------- approval API
    def pending(self) -> list[dict[str, Any]]:
        """Changes awaiting an operator: id, server, tool, kind, old/new sha, diff, first seen."""
        keys = ("id", "server", "identity", "tool", "kind", "old_name", "old_sha256", "new_sha256", "diff",
                "first_seen_ns", "agent_id", "session_id", "after_list_changed", "reason")
        return [{k: item[k] for k in keys} for item in sorted(self._pending.values(), key=lambda i: i["first_seen_ns"])]

    def approve(self, pending_id: str) -> dict[str, Any]:
        """Make a pending change the new pin; returns the new pin. KeyError names unknown ids."""
        item = self._take(pending_id)
        record = self._servers[item["identity"]]
        kind, tool = item["kind"], item["tool"]
        if kind in ("changed", "added", "new_server", "renamed"):
            if kind == "renamed":
                record["tools"].pop(item["old_name"], None)
            record["tools"][tool] = item["new"]
        elif kind == "removed":
            record["tools"].pop(tool, None)
        elif kind == "version":
            record["version"] = item["new"]["version"]
        elif kind == "instructions":
            record["instructions"] = item["new"]["instructions_sha256"]
        return {"id": pending_id, "identity": item["identity"], "server": item["server"], "tool": tool,
                "kind": kind, "sha256": item["new_sha256"]}

    def reject(self, pending_id: str) -> None:
        """Keep the old pin; the rejected change is reported (once per agent) if served again."""
        item = self._take(pending_id)
        self._rejected[pending_id] = {k: item[k] for k in ("identity", "tool", "kind", "new_sha256")}

    def _take(self, pending_id: str) -> dict[str, Any]:
        try:
            item = self._pending.pop(pending_id)
        except KeyError:
            raise KeyError(f"no pending change with id {pending_id!r}; list them with pending()") from None
        self._alerted = {k: None for k in self._alerted if pending_id not in k}
        return item

    def pins(self) -> dict[str, dict[str, str]]:
        """Pinned definition hashes per server identity, for the API and the store."""
        return {ident: {n: canonical_sha256(d) for n, d in rec["tools"].items()} for ident, rec in self._servers.items()}

    # ----------------------------------------------------------------- state
    def snapshot(self) -> dict[str, Any]:
        return json.loads(json.dumps({
            "servers": self._servers, "pending": self._pending, "rejected": self._rejected,
            "alerted": list(self._alerted)}, default=str))

    def restore(self, state: dict[str, Any]) -> None:
        self._servers = dict(state.get("servers", {}))
        self._pending = dict(state.get("pending", {}))
        self._rejected = dict(state.get("rejected", {}))
        self._alerted = dict.fromkeys(state.get("alerted", []))

    # ----------------------------------------------------------------- helpers
    def _finding(self, listing: ToolListing, severity: str, reason: str, *, evidence: dict[str, Any], dedup: str,
                 tool: str = "") -> Finding:
        return Finding(detector=self.name, severity=severity, agent_id=listing.agent_id, reason=reason,
                       time_ns=listing.time_ns, session_id=listing.session_id, server=listing.server, tool=tool,
                       span_ids=(listing.span_id,) if listing.span_id else (),
                       trace_ids=(listing.trace_id,) if listing.trace_id else (), evidence=evidence, dedup_key=dedup)

    def _call_finding(self, call: ToolCall, severity: str, reason: str, evidence: dict[str, Any], dedup: str) -> Finding:
        return Finding(detector=self.name, severity=severity, agent_id=call.agent_id, reason=reason,
                       time_ns=call.time_ns, session_id=call.session_id, server=call.server, tool=call.tool,
                       span_ids=(call.span_id,) if call.span_id else (),
                       trace_ids=(call.trace_id,) if call.trace_id else (), evidence=evidence, dedup_key=dedup)


def tool_definition_from_dict(data: dict[str, Any]) -> ToolDefinition:
    """Inverse of ``ToolDefinition.canonical()`` (for tests and the API)."""
    return ToolDefinition(name=data["name"], description=data.get("description", ""), input_schema=data.get("inputSchema"),
                          output_schema=data.get("outputSchema"), annotations=data.get("annotations"),
                          title=data.get("title", ""))
