"""Batch fast paths (policy's per-triple cache, new_tool's known-tool check, secret_args' batched
counting) must report and remember exactly what deciding call by call does."""

from __future__ import annotations

import json
import random

from toolwatch.detectors.events import Batch, ToolCall, ToolDefinition, ToolListing
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector
from toolwatch.detectors.policy import PolicyDetector
from toolwatch.detectors.policy_config import PolicyConfig
from toolwatch.detectors.secret_args import SecretArgsConfig, SecretArgsDetector

TOOLS = [("files", "read"), ("mail", "send"), ("", "calc"), ("", "a/b"), ("a", "b"), ("fs", "rm")]


def traffic(seed: int, n: int = 3000, secret_share: float = 0.002) -> list[ToolCall]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        server, tool = rnd.choice(TOOLS[: 3 + i * 3 // n])  # tools appear over time
        out.append(ToolCall(time_ns=i * 1000 - rnd.randrange(3000), agent_id=rnd.choice(["x", "y", "support-1"]),
                            server=server, tool=tool, span_id=f"{i:x}", session_id="s",
                            args_json=json.dumps({"q": "x" * rnd.randrange(60), "bcc": 1} if rnd.random() < 0.1 else {}),
                            args_labels=("secret",) if rnd.random() < secret_share else ("path",),
                            destinations=("evil.example",) if rnd.random() < 0.3 else ()))
    return out


def chunks(calls: list[ToolCall], seed: int):
    rnd = random.Random(seed)
    i = 0
    while i < len(calls):
        k = rnd.choice([1, 50, 400])
        yield calls[i:i + k]
        i += k


def run_both(fast, slow, calls, seed, listings_at=()):
    for n, chunk in enumerate(chunks(calls, seed)):
        listings = list(listings_at[n % len(listings_at)]) if listings_at and n % 5 == 4 else []
        got = [f.to_dict() for f in fast.observe(Batch(calls=list(chunk), listings=listings))]
        want = []
        for c in chunk:  # one call per batch: the path without any batch shortcut
            want += [f.to_dict() for f in slow.observe(Batch(calls=[c], listings=listings))]
            listings = []
        assert got == want
        assert json.dumps(fast.snapshot()) == json.dumps(slow.snapshot())


def test_new_tool_batched_matches_one_call_at_a_time() -> None:
    for seed, cfg in ((1, {"min_calls": 20}), (2, {"min_calls": 5, "max_tools": 2})):
        fast, slow = NewToolDetector(NewToolConfig(**cfg)), NewToolDetector(NewToolConfig(**cfg))
        run_both(fast, slow, traffic(seed), seed)
        assert fast.snapshot()["agents"]["x"]["calls"] > 0


def test_new_tool_known_cache_is_dropped_with_the_state() -> None:
    det = NewToolDetector(NewToolConfig(min_calls=1))
    det.observe(Batch(calls=[ToolCall(time_ns=i, agent_id="a", tool="t") for i in range(3)]))
    det.drop_agent("a")
    det.observe(Batch(calls=[ToolCall(time_ns=9, agent_id="a", tool="u")]))
    found = det.observe(Batch(calls=[ToolCall(time_ns=10, agent_id="a", tool="t")]))
    assert [f.tool for f in found] == ["t"]  # forgotten with the agent, so new again


def test_secret_args_batched_matches_one_call_at_a_time() -> None:
    for seed, cfg, share in ((1, {}, 0.002), (2, {"warmup_calls": 3, "max_tools_per_agent": 2}, 0.05)):
        fast, slow = SecretArgsDetector(SecretArgsConfig(**cfg)), SecretArgsDetector(SecretArgsConfig(**cfg))
        calls = sorted(traffic(seed, secret_share=share), key=lambda c: c.time_ns)  # one-call batches see time order
        run_both(fast, slow, calls, seed)



def test_secret_args_batched_with_two_pairs_of_one_token() -> None:
    """("", "a/b") and ("a", "b") are one ``server/tool`` token: a batch with both, in either order
    of their last calls, counts and orders the token as one call at a time does (the fast path)."""
    rnd = random.Random(4)
    pairs = [("", "a/b"), ("a", "b"), ("a/b", "c"), ("a", "b/c"), ("files", "read"), ("", "calc")]
    calls = [ToolCall(time_ns=i, agent_id="x", server=s, tool=t, span_id=f"{i:x}", session_id="s",
                      args_labels=("path",)) for i, (s, t) in enumerate(pairs * 2)]  # every token known
    for i in range(400):
        s, t = rnd.choice(pairs)
        calls.append(ToolCall(time_ns=100 + i, agent_id="x", server=s, tool=t, span_id=f"{i:x}", session_id="s",
                              args_labels=("path",)))
    fast, slow = SecretArgsDetector(), SecretArgsDetector()
    run_both(fast, slow, calls, 4)
    assert fast.snapshot()["agents"]["x"]["tools"][-1][1] > 1  # counted in batches, not only one by one



def test_secret_args_batched_adds_new_tools_of_known_agents() -> None:
    """A batch without secrets that brings an agent's first call of a tool is counted at once (the
    new tool added, then ordered by its last call, as call by call), unless the agent's table would
    have to evict: then, and for a new agent, call by call decides."""
    rnd = random.Random(5)
    for limit in (2_000, 5):
        fast, slow = SecretArgsDetector(SecretArgsConfig(max_tools_per_agent=limit)), SecretArgsDetector(
            SecretArgsConfig(max_tools_per_agent=limit))
        one_by_one = []
        fast.observe_call = lambda c, _f=fast.observe_call: one_by_one.append(c) or _f(c)  # a spy, same work
        calls = [ToolCall(time_ns=i, agent_id=a, server="s", tool=f"t{i % 3}", args_labels=("path",))
                 for i, a in enumerate(["x", "y"] * 3)]
        for i in range(6, 400):
            calls.append(ToolCall(time_ns=i, agent_id=rnd.choice("xy"), server=rnd.choice(["s", "", "s/t"]),
                                  tool=f"t{rnd.randrange(3 + i // 40)}", args_labels=("path",)))
        run_both(fast, slow, calls[:6], 5)
        one_by_one.clear()
        for start in range(6, 400, 50):
            run_both(fast, slow, calls[start:start + 50], start)
        tools = len(fast.snapshot()["agents"]["x"]["tools"])
        if limit == 5:
            assert tools == limit
            assert one_by_one  # evicting batches went call by call
        else:
            assert tools > 20
            assert not one_by_one  # every batch brought new tools, none went call by call


POLICY = {
    "roles": {"support": ["support-*"]},
    "subjects": [{"roles": ["support"], "allow_servers": ["mail", "files"], "deny_tools": ["*/rm"]}],
    "arguments": [{"tools": ["mail/send"], "deny_patterns": ['"bcc"']}],
}


def listing(server: str, name: str, schema: dict | None, destructive: bool) -> ToolListing:
    return ToolListing(time_ns=0, agent_id="x", server=server, tools=(ToolDefinition(
        name=name, input_schema=schema, annotations={"destructiveHint": destructive}),))


def test_policy_cache_matches_one_call_at_a_time_and_follows_listings() -> None:
    phases = [[listing("files", "read", {"type": "object", "properties": {"q": {"maxLength": 10}}}, False)],
              [listing("files", "read", None, True)], [listing("", "calc", None, True)]]
    for policy in (POLICY, {}, {"default": "deny"}):
        fast, slow = PolicyDetector(PolicyConfig.from_dict(policy)), PolicyDetector(PolicyConfig.from_dict(policy))
        run_both(fast, slow, traffic(3), 3, listings_at=phases)


def test_policy_learns_a_destructive_tool_after_calls_were_cached_as_allowed() -> None:
    det = PolicyDetector()
    probe = Batch(calls=[ToolCall(time_ns=1, agent_id="a", server="fs", tool="wipe")])
    assert det.observe(probe) == []
    det.observe(Batch(listings=[listing("fs", "wipe", None, True)]))
    assert [f.evidence["rule"] for f in det.observe(probe)] == ["destructive"]
    det.config = PolicyConfig.from_dict({"destructive": {"use_annotations": False}})
    assert det.observe(probe) == []  # a replaced config is decided afresh
