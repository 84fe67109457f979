"""``run_rules_test``: the file side of ``toolwatch rules test``."""

from __future__ import annotations

import io
import json
from pathlib import Path

from toolwatch.collector.rules_cli import read_traces, run_rules_test

RULE = """\
- rule: secret_out
  condition: capabilities contains sends_out and args.labels contains secret
  priority: critical
  samples:
    should_fire: [{tool: send_email, server: gmail, args_labels: [secret]}]
    should_not_fire: [{tool: send_email, server: gmail}]
"""


def _run(rules: list[Path], traces: list[Path] = ()) -> tuple[int, str]:
    out = io.StringIO()
    code = run_rules_test(rules, traces, out)
    return code, out.getvalue()


def test_passing_rules_and_trace_hits(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text(RULE)
    traces = tmp_path / "t.jsonl"
    traces.write_text("\n".join([
        "# recorded",
        json.dumps({"time_ns": 1, "agent_id": "a", "tool": "send_email", "server": "gmail", "args_labels": ["secret"]}),
        "",
        json.dumps({"time_ns": 2, "agent_id": "a", "tool": "send_email", "server": "gmail"}),
    ]))
    code, text = _run([rules], [traces])
    assert code == 0
    assert "samples: 2/2 passed" in text
    assert "traces: 2 events, 1 findings" in text and "1  secret_out" in text


def test_failing_sample_exits_1(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text(RULE.replace("should_not_fire: [{tool: send_email, server: gmail}]",
                                  "should_not_fire: [{tool: send_email, server: gmail, args_labels: [secret]}]"))
    code, text = _run([rules])
    assert code == 1 and "FAIL secret_out should_not_fire[0]" in text


def test_broken_rule_file_exits_2_with_every_problem(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text("- rule: a\n  condition: tool =\n  priority: nope\n")
    code, text = _run([rules])
    assert code == 2
    assert f"{rules}:2: rule 'a': condition: unexpected end" in text
    assert f"{rules}:3: rule 'a': unknown priority 'nope'" in text


def test_bad_trace_line_names_file_and_line(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text(RULE)
    traces = tmp_path / "t.jsonl"
    traces.write_text('{"tool": "x"}\n{not json}\n')
    code, text = _run([rules], [traces])
    assert code == 2 and f"{traces}:2: not JSON" in text
    traces.write_text('{"tool": "x", "args_labels": 5}\n')
    code, text = _run([rules], [traces])
    assert code == 2 and f"{traces}:1: event field 'args_labels'" in text


def test_missing_file_exits_2(tmp_path: Path) -> None:
    code, text = _run([tmp_path / "nope.yaml"])
    assert code == 2 and "cannot read" in text


def test_no_rule_files_tests_the_shipped_defaults() -> None:
    code, text = _run([])
    assert code == 0 and "FAIL" not in text and "passed" in text


def test_read_traces_defaults(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text('{"tool": "fetch", "t": 1.5}\n')
    (c,) = read_traces([p])
    assert c.agent_id == "agent-1" and c.time_ns == 1_500_000_000


def test_sibling_samples_file_is_run(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text(RULE)
    (tmp_path / "r.samples.yaml").write_text(
        "secret_out:\n  should_fire:\n    - {tool: http_post, server: web, args_labels: [secret]}\n"
        "  should_not_fire:\n    - {tool: send_email, server: gmail, args_labels: [secret]}\n")
    code, text = _run([rules])
    assert code == 1
    assert "ok   secret_out should_fire[1]" in text and "FAIL secret_out should_not_fire[1]" in text


def test_sibling_samples_for_unknown_rule(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text(RULE)
    sibling = tmp_path / "r.samples.yaml"
    sibling.write_text("secret_outt:\n  should_fire: []\n")
    code, text = _run([rules])
    assert code == 2 and f"{sibling}:1: samples for unknown rule 'secret_outt' (did you mean 'secret_out'?)" in text


def test_trace_findings_are_listed_with_reason_and_spans(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text(RULE)
    traces = tmp_path / "t.jsonl"
    traces.write_text(json.dumps({"time_ns": 5, "agent_id": "a", "session_id": "x", "span_id": "sp9",
                                  "tool": "send_email", "server": "gmail", "args_labels": ["secret"]}) + "\n")
    code, text = _run([rules], [traces])
    assert code == 0
    assert "[critical] secret_out agent=a session=x spans=sp9: secret_out: gmail/send_email by a" in text
