"""``toolwatch proxy --enforce`` flag checks: misuse is refused with a message naming the flag."""

from __future__ import annotations

import pytest

from toolwatch.instrumentation.proxy.cli import _enforce_problem, parse_args


@pytest.mark.parametrize("argv, problem", [
    (["--fail-closed", "--", "srv"], "--fail-closed and --policy only apply with --enforce"),
    (["--enforce", "--listen", "127.0.0.1:1", "--upstream", "http://h/mcp", "--daemon-url", "x"],
     "--daemon-url must be an http(s) URL"),
    (["--enforce", "--daemon-url", "ftp://x", "--", "srv"], "--daemon-url must be an http(s) URL"),
    (["--enforce", "--hold-timeout", "0", "--", "srv"], "--hold-timeout must be positive"),
    (["--enforce", "--decision-ttl", "-1", "--", "srv"], "--decision-ttl must be zero or more"),
])
def test_misuse_is_named(argv, problem):
    assert problem in (_enforce_problem(parse_args(["--agent-id", "a", *argv])) or "")


def test_defaults_fail_open_with_a_short_cache():
    args = parse_args(["--agent-id", "a", "--enforce", "--decision-ttl", "0", "--", "srv"])
    assert _enforce_problem(args) is None
    assert (args.fail_closed, args.hold_default, args.decision_timeout) == (False, "deny", 0.5)
    assert parse_args(["--agent-id", "a", "--", "srv"]).enforce is False


def test_enforce_is_accepted_in_http_mode():
    args = parse_args(["--agent-id", "a", "--enforce", "--listen", "127.0.0.1:1", "--upstream", "http://h/mcp"])
    assert _enforce_problem(args) is None
