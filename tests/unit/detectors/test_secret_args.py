"""secret_args: a secret in the arguments of a tool that, for this agent, never carried one."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.detectors.config_fields import ConfigError
from toolwatch.detectors.events import Batch, Finding, ToolCall
from toolwatch.detectors.secret_args import SecretArgsConfig, SecretArgsDetector

_spans = itertools.count(1)


def call(tool: str = "search", t: int = 0, labels: tuple[str, ...] = (), **kw: Any) -> ToolCall:
    kw.setdefault("agent_id", "a1")
    kw.setdefault("session_id", "s1")
    return ToolCall(time_ns=t, agent_id=kw.pop("agent_id"), server="kb", tool=tool, args_labels=labels,
                    span_id=f"sa{next(_spans)}", **kw)


def feed(det: SecretArgsDetector, *calls: ToolCall) -> list[Finding]:
    return det.observe(Batch(calls=list(calls)))


def warmed(n: int = 10, tool: str = "search", **conf: Any) -> SecretArgsDetector:
    det = SecretArgsDetector(SecretArgsConfig(**conf))
    feed(det, *[call(tool, i, labels=("path",)) for i in range(n)])
    return det


def test_secret_in_a_tool_that_never_had_one_is_medium_after_warm_up() -> None:
    det = warmed(10)
    [f] = feed(det, call("search", 100, labels=("secret",)))
    assert f.severity == "medium" and f.evidence["labels"] == ["secret"]
    assert f.evidence["baseline_calls"] == 10 and f.evidence["baseline_secret_calls"] == 0
    assert "never" in f.reason and "kb/search" in f.reason


def test_with_a_destination_it_is_high() -> None:
    [f] = feed(warmed(10), call("search", 100, labels=("api_key",), destinations=("x.example",)))
    assert f.severity == "high"


def test_near_misses_warm_up_other_labels_other_agent() -> None:
    assert feed(warmed(9), call("search", 100, labels=("secret",))) == []  # one call short of warm-up
    assert feed(warmed(10), call("search", 100, labels=("email", "path"))) == []  # not a secret label
    assert feed(warmed(10), call("search", 100, labels=("secret",), agent_id="a2")) == []  # a2 has no history
    assert feed(warmed(10), call("other_tool", 100, labels=("secret",))) == []  # other tool: no history


def test_a_tool_that_takes_secrets_does_not_alert() -> None:
    det = SecretArgsDetector()
    found = feed(det, *[call("login", i, labels=("password",)) for i in range(30)])
    assert found == []  # usual from the first call: never flagged while warming up, then usual


def test_secret_calls_are_learned_so_a_tool_becoming_secret_bearing_stops_alerting() -> None:
    det = warmed(20, usual_share=0.1)
    flagged = [bool(feed(det, call("search", 100 + i, labels=("secret",)))) for i in range(5)]
    # 20 plain calls: alerts while secret calls are < 10% of earlier calls (0, 1, 2 of 20, 21, 22)
    assert flagged == [True, True, True, False, False]


def test_state_round_trips_through_json() -> None:
    det = warmed(10)
    data = json.loads(json.dumps(det.snapshot()))
    fresh = SecretArgsDetector()
    fresh.restore(data)
    assert [f.severity for f in feed(fresh, call("search", 100, labels=("secret",)))] == ["medium"]


def test_tools_per_agent_are_bounded() -> None:
    det = SecretArgsDetector(SecretArgsConfig(max_tools_per_agent=3))
    feed(det, *[call(f"t{i}", i) for i in range(10)])
    assert len(det.state_for("a1").tools) == 3


@pytest.mark.parametrize("conf, key", [
    ({"warmup_calls": 0}, "warmup_calls"), ({"usual_share": 0.0}, "usual_share"),
    ({"severity": "loud"}, "severity"), ({"secret_labels": ()}, "secret_labels"),
])
def test_config_errors_name_the_key(conf: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SecretArgsConfig(**conf).validate()


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="secret_args"):
        SecretArgsConfig.from_dict({"warmup": 3})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.booleans()), min_size=0, max_size=60))
def test_flags_only_when_rare_for_that_tool(seq: list[tuple[str, bool]]) -> None:
    """Property: a finding exactly when the label is a secret, the tool is warmed up, and earlier
    secret calls to it are below the usual share; counts match a plain recount."""
    det = SecretArgsDetector(SecretArgsConfig(warmup_calls=3, usual_share=0.25))
    seen: dict[str, list[int]] = {}
    for i, (tool, secret) in enumerate(seq):
        n, s = seen.setdefault(tool, [0, 0])
        expect = secret and n >= 3 and s < 0.25 * n
        got = feed(det, call(tool, i, labels=("token",) if secret else ()))
        assert bool(got) == expect
        seen[tool] = [n + 1, s + secret]
