"""The flow detectors (exfiltration, hijack, secret_args, sequence, new_tool) were sped up with
shortcuts and inlined bookkeeping. They must still find exactly what the code before that work
found, and keep exactly the same state: this runs both, batch by batch, on generated traffic.

The reference is the ``detectors`` package as of ``REFERENCE`` (read out of git into a temporary
folder and imported under another name). Without git history (a shallow clone, an sdist) the
test is skipped. Set ``TOOLWATCH_FLOW_REFERENCE`` to compare with another commit.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import bench_workloads
from toolwatch.detectors.events import ToolCall
from toolwatch.detectors.exfiltration import median_mad

REFERENCE = os.environ.get("TOOLWATCH_FLOW_REFERENCE", "7677d2dbb8da8b088195e698e1a1b121019904a0")
PKG = "tw_flow_reference"
S = 1_000_000_000
T0 = 1_750_000_000 * S
SERVERS_TOOLS = [("files", "read_file"), ("files", "write_file"), ("web", "fetch"), ("mail", "send"),
                 ("db", "query"), ("git", "commit"), ("vault", "get_secret"), ("", "send_email"), ("web", "post")]
LABELS = ["secret", "pii", "base64", "path", "token", "instructions", "url", "high_entropy"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The reference ``detectors`` package, importable as ``tw_flow_reference``."""
    root = Path(__file__).resolve().parents[3]
    out = tmp_path_factory.mktemp("reference")
    try:
        tar = subprocess.run(["git", "-C", str(root), "archive", REFERENCE, "detectors"],
                             check=True, capture_output=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=tar, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"reference commit {REFERENCE} not available: {exc}")
    (out / "detectors").rename(out / PKG)
    _apply_intended_changes(out / PKG)
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module(PKG)
    finally:
        sys.path.remove(str(out))


INTENDED_CHANGES = {
    # Known destinations are destination keys (a URL's host, an address's domain): the reference
    # looked them up as lower-cased full strings, so a URL was never known (fixed on purpose).
    "exfiltration.py": [
        ("dests_known = all(d.lower() in agent.destinations for d in dests)",
         "dests_known = bool(destination_keys(dests)) and all(d in agent.destinations for d in destination_keys(dests))"),
        ("return [d for d in dict.fromkeys(x.lower() for x in call.destinations) if d not in agent.destinations]",
         "return [d for d in destination_keys(call.destinations) if d not in agent.destinations]"),
    ],
}
"""Behaviour changed on purpose since the reference, applied to its source so the rest still compares."""


def _apply_intended_changes(pkg: Path) -> None:
    for name, edits in INTENDED_CHANGES.items():
        path = pkg / name
        text = path.read_text()
        for old, new in edits:
            assert text.count(old) == 1, f"reference {name} no longer has {old!r}: update INTENDED_CHANGES"
            text = text.replace(old, new)
        path.write_text(text)


def build(pkg: str, name: str, cfg: dict[str, Any]) -> Any:
    """One detector of package ``pkg`` with config ``cfg`` (each package's own config classes)."""
    def m(mod: str) -> ModuleType:
        return importlib.import_module(f"{pkg}.{mod}")
    caps = m("capabilities").CapabilityMap()
    if name == "exfiltration":
        return m("exfiltration").ExfiltrationDetector(m("exfiltration").ExfiltrationConfig.from_dict(cfg), caps)
    if name == "hijack":
        return m("hijack").HijackDetector(m("hijack").HijackConfig.from_dict(cfg), caps)
    if name == "secret_args":
        return m("secret_args").SecretArgsDetector(m("secret_args").SecretArgsConfig.from_dict(cfg))
    if name == "new_tool":
        return m("new_tool").NewToolDetector(m("new_tool").NewToolConfig(**cfg))
    seq = m("sequence_detector")
    markov = m("sequence").MarkovConfig(**cfg.pop("markov", {}))
    if pkg != PKG:  # the reference's rule: never-seen tools are never learned (test_seq_novel_tool.py)
        cfg["learn_novel_sessions"] = 0
    return seq.SequenceDetector(seq.SequenceConfig(markov=markov, **cfg))


def as_reference(pkg: str, name: str, d: dict[str, Any]) -> dict[str, Any]:
    """A sequence finding as the reference writes it: never-seen tools' findings had the session's
    dedup key (now one per agent and tool)."""
    if pkg != PKG and name == "sequence" and d["evidence"].get("unseen_tool"):
        d["dedup_key"] = f"sequence:{d['agent_id']}:{d['session_id']}"
    return d


def snapshot_as_reference(pkg: str, name: str, snap: dict[str, Any]) -> dict[str, Any]:
    """Without the sequence state the reference has no rule for (never-seen tools waiting)."""
    if pkg != PKG and name == "sequence":
        for state in snap["agents"].values():
            del state["novel"], state["dirty"]
    return snap


CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("exfiltration", {}),
    ("exfiltration", {"flow_scope": "session", "session_ttl_s": 100, "max_sessions_per_agent": 2}),
    ("exfiltration", {"flow_scope": "trace", "payload_min_samples": 3, "payload_history": 5,
                      "destination_warmup_calls": 2, "sensitive_window_s": 50}),
    ("exfiltration", {"max_fingerprints_per_session": 3, "max_sketches_per_session": 2, "session_ttl_s": 40,
                      "known_destination_flow_severity": "off", "non_sink_flow_severity": "off"}),
    ("hijack", {}),
    ("hijack", {"arm_scope": "session", "window_calls": 4, "warmup_sessions": 0}),
    ("hijack", {"session_kind": "agent", "max_items_per_kind": 3, "max_sessions_per_agent": 2,
                "session_ttl_s": 60}),
    ("secret_args", {}),
    ("secret_args", {"warmup_calls": 2, "usual_share": 0.5, "max_tools_per_agent": 2}),
    ("new_tool", {"min_calls": 5}),
    ("new_tool", {"min_calls": 2, "max_tools": 2}),
    ("sequence", {}),
    ("sequence", {"min_calls": 5, "min_sessions": 2, "threshold_bits": 3.0, "after_instructions_bits": 1.0,
                  "length_floor": 3, "max_open_sessions": 2, "session_idle_s": 60.0}),
    ("sequence", {"min_calls": 20, "min_sessions": 3, "threshold_bits": 4.0, "use_fleet_prior": True,
                  "prior_min_containment": 0.3, "length_floor": 2,
                  "markov": {"max_mass": 40.0, "max_tokens": 3, "max_transitions": 4, "min_count": 0.6}}),
]


def traffic(seed: int, n: int, agents: int, sessions: int, rich: float, dense: bool = False,
            labelled: float = 0.5) -> list[ToolCall]:
    """Calls from a few agents: mostly bare (as the bench sends), some with labels, values,
    sketches, destinations, errors, injection scores, time jumps and late calls (some older than the
    windows); ``dense`` traffic (as the bench's) keeps most calls seconds apart. ``labelled`` is the
    share of calls with argument labels besides ``path`` (batches without secrets take shortcuts)."""
    rnd = random.Random(seed)
    t = T0
    calls = []
    for i in range(n):
        steps = [0, 1_000, S // 10, S] if dense else [0, 1_000, S, 20 * S, 200 * S]
        t += rnd.choice(steps) if rnd.random() < 0.97 else 5_000 * S
        server, tool = rnd.choice(SERVERS_TOOLS)
        full = rnd.random() < rich
        sketch = tuple(rnd.randrange(4) for _ in range(4))
        calls.append(ToolCall(
            time_ns=t - (rnd.choice([1, 2, 90, 700]) * S if rnd.random() < 0.05 else 0),
            agent_id=f"a{rnd.randrange(agents)}", server=server, tool=tool,
            session_id=f"s{rnd.randrange(sessions)}", trace_id=rnd.choice(["", "t1", "t2"]),
            span_id=rnd.choice([f"sp{i}", f"sp{i}", f"sp{i}", "", f"sp{max(i - 1, 0)}"]),
            error_type=rnd.choice(["", "", "", "timeout"]),
            args_bytes=rnd.choice([100, 120, 90, 110, 200_000]),
            args_labels=tuple(rnd.sample(LABELS, rnd.randrange(3))) if rnd.random() < labelled else ("path",),
            result_labels=tuple(rnd.sample(LABELS, rnd.randrange(3))) if full else (),
            args_fingerprints=tuple(f"fp{rnd.randrange(12)}" for _ in range(rnd.randrange(3))) if full else (),
            result_fingerprints=tuple(f"fp{rnd.randrange(12)}" for _ in range(rnd.randrange(3))) if full else (),
            args_sketch=sketch if full and rnd.random() < 0.3 else (),
            result_sketch=sketch if full and rnd.random() < 0.3 else (),
            destinations=tuple(rnd.sample(["https://Evil.example/x", "bob@corp.com", "BOB@corp.com",
                                           f"new{i}.example"], rnd.randrange(3))) if full else (),
            result_injection_score=rnd.choice([0.0, 0.0, 0.4, 0.6, 0.9]) if full else 0.0,
        ))
    return calls


def listing(pkg: str, seed: int, time_ns: int) -> Any:
    """A ``tools/list`` result that tells capabilities something: a sender, a destructive tool, or
    a tool that both reads sensitive data and sends out (its reads and sends share a token)."""
    ev = importlib.import_module(f"{pkg}.events")
    rnd = random.Random(seed)
    server = rnd.choice(["web", "files", "db", "vault"])
    world = {"openWorldHint": True}
    tools = (ev.ToolDefinition("post", "Send data to any URL", {"type": "object", "properties": {"url": {}}},
                               annotations=world),
             ev.ToolDefinition("drop", "Delete everything", annotations={"destructiveHint": True}),
             ev.ToolDefinition("query", "Query and forward", annotations=world),
             ev.ToolDefinition("get_secret", "Read a secret, post it", annotations=world),
             ev.ToolDefinition("read_file", "Read a file, upload it", annotations=world))
    return ev.ToolListing(time_ns, "a0", server, tools, session_id="s0")


def run(pkg: str, name: str, cfg: dict[str, Any], calls: list[ToolCall], cuts: list[int], restore_at: int,
        freeze: str | None) -> tuple[list[str], str]:
    """Findings (as JSON, per batch) and the final snapshot; state goes through a JSON snapshot and a
    fresh detector after batch ``restore_at``, and one agent's state alone after the batch after."""
    ev = importlib.import_module(f"{pkg}.events")
    det = build(pkg, name, json.loads(json.dumps(cfg)))
    out: list[str] = []
    start = 0
    for k, end in enumerate(cuts + [len(calls)]):
        chunk = calls[start:end]
        start = end
        if not chunk:
            continue
        listings = [listing(pkg, k, chunk[0].time_ns)] if k % 4 == 3 else []
        batch = ev.Batch(calls=list(chunk), listings=listings, watermark_ns=chunk[-1].time_ns)
        if name == "sequence":
            found, margins = det.observe_scored(batch)
            out.append(json.dumps([None if m != m else float(m) for m in margins.tolist()]))
        else:
            found = det.observe(batch)
        out.append(json.dumps([as_reference(pkg, name, f.to_dict()) for f in found], sort_keys=True))
        if k == restore_at:
            snap = json.loads(json.dumps(det.snapshot()))
            det = build(pkg, name, json.loads(json.dumps(cfg)))
            det.restore(snap)
            if freeze is not None and name == "sequence":
                det.freeze(freeze)
        elif k == restore_at + 1 and det.agents():
            agent = det.agents()[0]
            one = json.loads(json.dumps(det.snapshot_agent(agent)))
            det.drop_agent(agent)
            det.restore_agent(agent, one)
    return out, json.dumps(snapshot_as_reference(pkg, name, det.snapshot()), sort_keys=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.integers(0, len(CONFIGS) - 1),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 900),
    agents=st.integers(1, 4),
    sessions=st.integers(1, 12),
    rich=st.sampled_from([0.0, 0.05, 0.3, 0.9]),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=6),
    restore_at=st.integers(0, 6),
    freeze=st.sampled_from([None, "a0", "a1"]),
    dense=st.booleans(),
    labelled=st.sampled_from([0.0, 0.002, 0.02, 0.5]),
)
def test_flow_detectors_find_and_keep_what_the_reference_does(
    ref: ModuleType, which: int, seed: int, n: int, agents: int, sessions: int, rich: float, sizes: list[int],
    restore_at: int, freeze: str | None, dense: bool, labelled: float,
) -> None:
    name, cfg = CONFIGS[which]
    calls = traffic(seed, n, agents, sessions, rich, dense, labelled)
    cuts, at = [], 0
    while at < n:
        at += sizes[len(cuts) % len(sizes)]
        cuts.append(min(at, n))
    got = run("toolwatch.detectors", name, cfg, calls, cuts, restore_at, freeze)
    want = run(PKG, name, cfg, calls, cuts, restore_at, freeze)
    assert got[0] == want[0]
    assert got[1] == want[1]


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
@pytest.mark.parametrize("name,cfg", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_long_runs_with_findings_match_the_reference(ref: ModuleType, name: str, cfg: dict[str, Any],
                                                     dense: bool) -> None:
    """Long enough for warm-ups to end, baselines to decay and bounds to bite; findings must occur."""
    calls = traffic(7, 6_000, 3, 8, 0.1, dense, 0.003 if dense else 0.5)
    cuts = list(range(500, 6_000, 500))
    got = run("toolwatch.detectors", name, cfg, calls, cuts, 4, "a1")
    want = run(PKG, name, cfg, calls, cuts, 4, "a1")
    assert got == want
    findings = got[0][1::2] if name == "sequence" else got[0]
    if not (dense and name == "secret_args"):  # there secrets are kept rare, for the shortcut
        assert any(json.loads(b) for b in findings), "no findings: a weak test"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 50), st.integers(0, 2**62)), min_size=1, max_size=300))
def test_median_mad_is_what_statistics_median_gives(values: list[int]) -> None:
    med = statistics.median(values)
    want = (float(med), float(statistics.median([abs(x - med) for x in values])))
    got = median_mad(values)
    assert repr(got) == repr(want)


@functools.lru_cache(maxsize=2)
def fleet_calls(rate: float, spans: int = 30_000) -> list[ToolCall]:
    """bench/workloads.py's ``fleet``, the traffic these detectors were tuned on, decoded once per
    rate (the detectors never change a call's fields)."""
    return bench_workloads.fleet_calls(spans, seed=3, anomaly_rate=0.01, start_ns=T0, rate=rate)


@pytest.mark.parametrize("rate", [75_000.0, 4.0], ids=["busy", "slow"])  # slow: sessions outlive their TTL
@pytest.mark.parametrize("name,cfg", [c for c in CONFIGS if c[0] in ("exfiltration", "secret_args")],
                         ids=lambda v: v if isinstance(v, str) else json.dumps(v)[:40])
def test_fleet_traffic_matches_the_reference(ref: ModuleType, name: str, cfg: dict[str, Any],
                                             rate: float) -> None:
    """The fleet workload (agents with routines, sessions that end, values and destinations on some
    calls, 1% anomalies) in the bench's batches of 500: same findings, same state."""
    calls = fleet_calls(rate)
    cuts = list(range(500, len(calls), 500))
    got = run("toolwatch.detectors", name, cfg, calls, cuts, 20, None)
    want = run(PKG, name, cfg, calls, cuts, 20, None)
    assert got == want
    if name == "exfiltration" and cfg.get("non_sink_flow_severity") != "off":
        assert sum(len(json.loads(b)) for b in got[0]) > 0, "no findings: a weak test"
