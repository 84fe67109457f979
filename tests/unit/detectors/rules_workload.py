"""A seeded, rule-heavy workload for the rule engine: labels, destinations, instructions, TTL gaps,
late and shuffled batches, listings that change capabilities. Shared by the golden-findings test
and the script that recorded its expectations from the tree-walking engine."""

from __future__ import annotations

import random
from typing import Iterator

from toolwatch.detectors.events import Batch, ToolCall, ToolDefinition, ToolListing

TOOLS = [("mail", "send"), ("gmail", "send_email"), ("web", "fetch"), ("fs", "delete_file"), ("vault", "read_secret"),
         ("files", "read_file"), ("web", "http_post"), ("slack", "post_message"), ("ci", "post_status"), ("db", "query"),
         ("", "upload")]
ARGS_LABELS = ["path", "secret", "api_key", "high_entropy", "email", "url", "base64"]
RESULT_LABELS = ["secret", "instructions", "token", "path", "credential"]
DESTINATIONS = ["a.example", "https://b.example/x", "c.example", "x@d.example", "e.example:8080", "F.example",
                "g.example", "h.example"]

EXTRA_RULES = """
- list: trusted_destinations
  items: [g.example]
  append: true
- rule: big_args
  condition: args.bytes > 300 and tool startswith send or (prev.tool = fetch and session.calls >= 2 and not error exists)
  output: "%rule %prev.server/%prev.tool %session.servers %session.capabilities %prev.capabilities %duration_ms %token %args.bytes"
  priority: notice
- rule: glob_regex
  condition: (tool glob "*_file" and server in (fs, files)) or args regex "sec.et" or args.labels icontains SECRET or destinations endswith example
  priority: low
- correlation: burst_sends
  type: event_count
  rules: [send_out, big_args]
  group-by: [agent_id, tool]
  timespan: 30s
  condition: {gt: 2}
  priority: medium
- correlation: secret_then_fetch_then_send
  type: temporal_ordered
  rules: [read_secret, glob_regex, send_out]
  group-by: [agent_id]
  timespan: 2m
  priority: high
- correlation: many_tools
  type: value_count
  rules: [glob_regex]
  group-by: [session_id]
  timespan: 1m
  condition: {field: tool, gte: 2}
  priority: low
"""

CONFIGS = {
    "roomy": {},
    "tight": {"max_sessions": 7, "max_destinations": 3, "max_groups": 4, "max_events": 5,
              "destination_warmup_calls": 3, "session_ttl_s": 60},
}


def _calls(rnd: random.Random, n: int, t: int) -> tuple[list[ToolCall], int]:
    calls = []
    for i in range(n):
        t += rnd.choice([0, 1, 10, 100, 1000]) * 10_000_000
        if rnd.random() < 0.002:
            t += 2 * 3600 * 10**9  # beyond the session TTL
        server, tool = rnd.choice(TOOLS)
        c = ToolCall(time_ns=t, agent_id=f"a{rnd.randrange(6)}", tool=tool, server=server,
                     session_id=f"s{rnd.randrange(12)}", span_id=rnd.choice(["", f"sp{i}"]), trace_id=f"tr{i % 7}",
                     duration_ns=rnd.randrange(10**8), args_bytes=rnd.randrange(600),
                     args_json=rnd.choice(['{"a": 1}', '{"x": "secret"}', '']),
                     error_type=rnd.choice(["", "", "", "timeout"]))
        if rnd.random() < 0.5:
            c.args_labels = tuple(rnd.sample(ARGS_LABELS, rnd.randrange(1, 3)))
        if rnd.random() < 0.3:
            c.result_labels = tuple(rnd.sample(RESULT_LABELS, rnd.randrange(1, 3)))
            c.result_injection_score = rnd.choice([0.0, 0.3, 0.5, 0.9])
        if rnd.random() < 0.4:
            c.destinations = tuple(rnd.sample(DESTINATIONS, rnd.randrange(1, 4)))
        calls.append(c)
    return calls, t


def batches(seed: int, n: int = 40) -> Iterator[Batch]:
    """``n`` batches of 1 to 200 calls; some shuffled, some late (event time behind the last)."""
    rnd = random.Random(seed)
    t = 10**18
    for _ in range(n):
        calls, t2 = _calls(rnd, rnd.choice([1, 5, 50, 200]), t)
        if rnd.random() < 0.1:
            rnd.shuffle(calls)
        if rnd.random() < 0.1:
            for c in calls:
                c.time_ns -= 5 * 10**9
        else:
            t = t2
        listings = []
        if rnd.random() < 0.05:
            listings = [ToolListing(t, "a0", "db", (ToolDefinition(
                "query", "Sends an email to the server", None, None, {"destructiveHint": rnd.random() < 0.5}),))]
        yield Batch(calls=calls, listings=listings, watermark_ns=rnd.choice([0, t]))
