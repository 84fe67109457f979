"""A/B: the exfiltration detector against main's (``tests/helpers/exfiltration_main.py``), same traffic.

Findings (every field, in order) and saved states (byte for byte) must be identical, across
restores (also under another ``payload_history``, shorter and longer than the saved history)
and agents moved mid-stream. What changed is how the payload history is kept (a bounded deque).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.helpers import exfiltration_main
from tests.helpers.bench_workloads import fleet_calls
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.exfiltration import ExfiltrationConfig, ExfiltrationDetector

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
TOOLS = [("mail", "send_email"), ("http", "post"), ("files", "read_file"), ("db", "query"), ("vault", "get_secret"),
         ("web", "fetch")]


def _pair(**cfg: Any) -> tuple[ExfiltrationDetector, Any]:
    return (ExfiltrationDetector(ExfiltrationConfig(**cfg)),
            exfiltration_main.ExfiltrationDetector(exfiltration_main.ExfiltrationConfig(**cfg)))


def _dump(det: Any) -> str:
    return json.dumps(det.snapshot())


def traffic(seed: int, n: int = 6000, agents: int = 12) -> list[ToolCall]:
    """Sends with sizes around a per-agent level and rare huge ones, values flowing between servers."""
    rnd = random.Random(seed)
    out, t = [], T0
    level = {f"a{i}": rnd.choice([200, 2_000, 20_000]) for i in range(agents)}
    for i in range(n):
        t += rnd.randrange(0, 300_000_000)
        agent = f"a{rnd.randrange(agents)}"
        server, tool = rnd.choice(TOOLS)
        size = int(rnd.expovariate(1 / level[agent])) + (rnd.choice([500_000, 5_000_000]) if rnd.random() < 0.01 else 0)
        fp = f"v{rnd.randrange(40)}"
        out.append(ToolCall(
            time_ns=t - (rnd.randrange(0, 2 * S) if rnd.random() < 0.1 else 0), agent_id=agent, server=server,
            tool=tool, session_id=f"s{rnd.randrange(5)}", span_id=f"{i:x}", trace_id=f"t{i // 7}", args_bytes=size,
            result_bytes=rnd.randrange(0, 5000),
            args_labels=("secret",) if rnd.random() < 0.02 else (),
            result_labels=rnd.choice([(), (), (), ("pii",), ("credential",)]),
            args_fingerprints=(fp,) if rnd.random() < 0.2 else (),
            result_fingerprints=(f"v{rnd.randrange(40)}",) if rnd.random() < 0.2 else (),
            destinations=(rnd.choice(["a@x.com", "https://evil.example/x", "b@y.org"]),) if rnd.random() < 0.3 else ()))
    return out


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("cfg", [{}, {"payload_history": 30, "payload_min_samples": 5, "payload_min_bytes": 1000}])
def test_findings_and_states_match_main(seed: int, cfg: dict[str, Any]) -> None:
    rnd = random.Random(seed)
    new, old = _pair(**cfg)
    calls = traffic(seed)
    i = payload_findings = 0
    while i < len(calls):
        chunk = calls[i:i + rnd.choice([1, 20, 300])]
        i += len(chunk)
        b = Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns)
        got = [f.to_dict() for f in new.observe(b)]
        assert got == [f.to_dict() for f in old.observe(b)]
        payload_findings += sum(f["evidence"]["kind"] == "large_outbound_payload" for f in got)
        roll = rnd.random()
        if roll < 0.03:  # a restart, maybe under another payload_history (the saved one may be longer)
            state = json.loads(_dump(old))
            other = dict(cfg, payload_history=rnd.choice([20, 40, 256, 600]), payload_min_samples=5)
            new, old = _pair(**other)
            new.restore(json.loads(json.dumps(state)))
            old.restore(state)
            assert _dump(new) == _dump(old)
        elif roll < 0.1:
            agent = f"a{rnd.randrange(12)}"
            saved = old.snapshot_agent(agent)
            assert new.snapshot_agent(agent) == saved
            if saved is not None:
                new.restore_agent(agent, json.loads(json.dumps(saved)))
                old.restore_agent(agent, json.loads(json.dumps(saved)))
        elif roll < 0.15:
            assert _dump(new) == _dump(old)
    assert _dump(new) == _dump(old)
    assert payload_findings > 0, "no large payloads found: a weak test"


def test_a_history_saved_longer_than_payload_history_is_kept_until_the_next_send() -> None:
    """Saved under payload_history 256, restored under 20: the state is the saved one (whole) until
    an agent's next send trims its history, and what is judged on the way is the same as main's."""
    calls = traffic(5, 3000)
    first, old_cfg = _pair()
    first_old = old_cfg
    for i in range(0, 2000, 100):
        b = Batch(calls=calls[i:i + 100], watermark_ns=calls[i + 99].time_ns)
        assert [f.to_dict() for f in first.observe(b)] == [f.to_dict() for f in first_old.observe(b)]
    state = json.loads(_dump(first_old))
    assert max(len(a["payloads"]) for a in state["agents"].values()) > 20
    new, old = _pair(payload_history=20, payload_min_samples=5, payload_min_bytes=1000)
    new.restore(json.loads(json.dumps(state)))
    old.restore(state)
    assert _dump(new) == _dump(old)
    for i in range(2000, 3000, 5):  # small batches: some agents send, others not yet
        b = Batch(calls=calls[i:i + 5], watermark_ns=calls[i + 4].time_ns)
        assert [f.to_dict() for f in new.observe(b)] == [f.to_dict() for f in old.observe(b)]
        assert _dump(new) == _dump(old)


def test_fleet_traffic_matches_main() -> None:
    """bench/workloads.py's fleet (200 agents with routines, 1% anomalies) in the bench's batches of 500."""
    calls = fleet_calls(30_000, seed=3, anomaly_rate=0.01, start_ns=T0, rate=2_000.0)
    new, old = _pair()
    found = 0
    for i in range(0, len(calls), 500):
        chunk = calls[i:i + 500]
        b = Batch(calls=chunk, watermark_ns=chunk[-1].time_ns)
        got = [f.to_dict() for f in new.observe(b)]
        assert got == [f.to_dict() for f in old.observe(b)]
        found += len(got)
    assert _dump(new) == _dump(old)
    assert found > 0, "no findings: a weak test"


def test_a_tool_learnt_to_send_between_batches_is_judged_as_a_sender() -> None:
    """What a tool means is kept across batches: a listing (or a restored capability map) that makes
    it a sender, or no longer one, counts from the next call on, as main's per-batch look-up did."""
    from toolwatch.detectors.capabilities import CapabilityMap
    from toolwatch.detectors.events import ToolDefinition, ToolListing

    def listing(t: int, hint: bool) -> ToolListing:
        return ToolListing(time_ns=T0 + t * S, agent_id="a", server="crm",
                           tools=(ToolDefinition("lookup", "Look a contact up.", annotations={"openWorldHint": hint}),))

    caps_new, caps_old = CapabilityMap(), CapabilityMap()
    new = ExfiltrationDetector(capabilities=caps_new)
    old = exfiltration_main.ExfiltrationDetector(capabilities=caps_old)

    def call(t: int) -> ToolCall:
        return ToolCall(time_ns=T0 + t * S, agent_id="a", server="crm", tool="lookup", span_id=f"x{t}",
                        args_labels=("secret",), args_bytes=100)

    kinds = []
    for t, listings in [(1, []), (2, [listing(2, True)]), (3, []), (4, [listing(4, False)]), (5, []),
                        (6, "restore"), (7, [])]:
        if listings == "restore":  # back to the map as it was after the first listing
            saved = {"definitions": [["crm/lookup", "Look a contact up.", {"openWorldHint": True}]]}
            caps_new.restore(saved)
            caps_old.restore(saved)
            listings = []
        b = Batch(calls=[call(t)], listings=list(listings), watermark_ns=T0 + t * S)
        got = [f.to_dict() for f in new.observe(b)]
        assert got == [f.to_dict() for f in old.observe(b)]
        kinds.append([f["evidence"]["kind"] for f in got])
    assert kinds == [[], ["secret_in_outbound_args"], ["secret_in_outbound_args"], [], [],
                     ["secret_in_outbound_args"], ["secret_in_outbound_args"]]
