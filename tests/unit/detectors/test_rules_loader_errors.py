"""Loader: every problem reported at once, each naming the file, the item and the line."""

from __future__ import annotations

import textwrap

import pytest

from toolwatch.detectors.rules import RuleError, load_rule_files, load_rules


def problems(text: str) -> list[str]:
    with pytest.raises(RuleError) as info:
        load_rules(textwrap.dedent(text), "my.yaml")
    return [str(p) for p in info.value.problems]


GOOD_RULE = """\
- rule: ok
  desc: fine
  condition: tool = send_email
  priority: warning
"""


def test_valid_file_loads() -> None:
    rs = load_rules(GOOD_RULE, "my.yaml")
    assert [r.name for r in rs.rules] == ["ok"]
    assert rs.rules[0].severity == "medium" and rs.rules[0].line == 1


def test_bad_yaml_names_the_line() -> None:
    (msg,) = problems("""\
        - rule: a
          condition: tool = x
          priority: [unclosed
        """)
    assert msg.startswith("my.yaml:") and "invalid YAML" in msg
    assert int(msg.split(":")[1]) >= 3


def test_not_a_list() -> None:
    (msg,) = problems("rule: a\n")
    assert "my.yaml:1: a rule file is a YAML list" in msg


def test_unknown_key_suggests_the_right_one() -> None:
    msgs = problems("""\
        - rule: leak
          condtion: tool = x
          priority: warning
        """)
    assert msgs == [
        "my.yaml:1: rule 'leak': missing condition (text)",
        "my.yaml:2: rule 'leak': unknown key 'condtion' (did you mean 'condition'?)",
    ]


def test_bad_condition_syntax_names_rule_and_line_inside_block() -> None:
    msgs = problems("""\
        - rule: first
          condition: tool = x
          priority: info
        - rule: broken
          priority: info
          condition: |
            tool = send_email
            and (server = gmail
        """)
    assert msgs == ["my.yaml:8: rule 'broken': condition: unexpected end of condition, expected ')' (column 20)"]


def test_unknown_macro_list_and_field() -> None:
    msgs = problems("""\
        - rule: a
          condition: outbund and tool = x
          priority: info
        - rule: b
          condition: tool in trusted_tools
          priority: info
        - rule: c
          condition: args.label contains secret
          priority: info
        """)
    assert msgs[0] == "my.yaml:2: rule 'a': condition: unknown macro or field 'outbund' (column 1)"
    assert msgs[1] == "my.yaml:5: rule 'b': condition: unknown list 'trusted_tools' (column 9)"
    assert "my.yaml:8: rule 'c': condition: unknown field 'args.label' (did you mean 'args.labels'?)" in msgs[2]


def test_wrong_operator_for_field_type() -> None:
    (msg,) = problems("""\
        - rule: a
          condition: args.labels = secret
          priority: info
        """)
    assert "operator '=' does not apply to list field 'args.labels'" in msg and "use contains" in msg


def test_bad_regex_and_non_number() -> None:
    msgs = problems("""\
        - rule: a
          condition: tool regex "(unclosed"
          priority: info
        - rule: b
          condition: args.bytes > lots
          priority: info
        """)
    assert "bad regex" in msgs[0] and "rule 'a'" in msgs[0]
    assert "expected a number" in msgs[1] and "rule 'b'" in msgs[1]


def test_macro_cycle_and_broken_macro_are_reported_once_at_the_macro() -> None:
    msgs = problems("""\
        - macro: m1
          condition: m2 and tool = x
        - macro: m2
          condition: m1
        - macro: bad
          condition: tool ==
        - rule: uses_bad
          condition: bad
          priority: info
        """)
    assert any(m.startswith("my.yaml:4: macro 'm2'") and "cycle: m1 -> m2 -> m1" in m for m in msgs)
    assert any(m.startswith("my.yaml:6: macro 'bad': condition: unexpected end") for m in msgs)
    assert any("rule 'uses_bad'" in m and "macro 'bad' has errors (reported at line 5)" in m for m in msgs)


def test_missing_and_unknown_priority_and_bad_types() -> None:
    msgs = problems("""\
        - rule: a
          condition: tool = x
        - rule: b
          condition: tool = x
          priority: loud
          tags: owasp
          enabled: "yes"
        """)
    assert any("rule 'a': missing priority" in m for m in msgs)
    assert any("my.yaml:5: rule 'b': unknown priority 'loud'" in m for m in msgs)
    assert any("my.yaml:6: rule 'b': tags must be a list" in m for m in msgs)
    assert any("my.yaml:7: rule 'b': enabled must be true or false" in m for m in msgs)


def test_output_with_unknown_placeholder() -> None:
    (msg,) = problems("""\
        - rule: a
          condition: tool = x
          priority: info
          output: "sent by %agent to %destinations."
        """)
    assert "my.yaml:4: rule 'a': output names unknown field %agent" in msg


def test_bad_samples_name_the_event_field() -> None:
    (msg,) = problems("""\
        - rule: a
          condition: tool = x
          priority: info
          samples:
            should_fire:
              - {tool: x, args_lables: [secret]}
        """)
    assert "my.yaml:5: rule 'a'" in msg and "unknown event field args_lables" in msg


def test_correlation_errors() -> None:
    msgs = problems("""\
        - rule: base
          condition: tool = x
          priority: info
        - correlation: c1
          type: event_count
          rules: [bsae]
          group-by: [agent]
          timespan: soon
          condition: {lte: 3}
          priority: warning
        - correlation: c2
          type: temporal_ordered
          rules: [base]
          timespan: 5m
          priority: warning
        - correlation: c3
          type: value_count
          rules: [base]
          timespan: 5m
          condition: {gte: 2}
          priority: warning
        """)
    assert any("my.yaml:6: correlation 'c1': rules: unknown rule 'bsae' (did you mean 'base'?)" in m for m in msgs)
    assert any("my.yaml:7: correlation 'c1': group-by: 'agent' is not a text field" in m for m in msgs)
    assert any("my.yaml:8: correlation 'c1': timespan 'soon'" in m for m in msgs)
    assert any("my.yaml:9: correlation 'c1': condition needs exactly one of gte or gt" in m for m in msgs)
    assert any("correlation 'c2': temporal_ordered needs at least two rules" in m for m in msgs)
    assert any("correlation 'c3': value_count needs condition.field" in m for m in msgs)


def test_item_shape_errors() -> None:
    msgs = problems("""\
        - rules: a
          condition: x
        - rule: has space
          condition: tool = x
          priority: info
        - just text
        - rule: dup
          condition: tool = x
          condition: tool = y
          priority: info
        """)
    assert any("my.yaml:1: an item must have exactly one of list, macro, rule, correlation" in m
               and "did you mean 'rule'?" in m for m in msgs)
    assert any("my.yaml:3:" in m and "must be a word" in m for m in msgs)
    assert any("my.yaml:6: each item must be a mapping" in m for m in msgs)
    assert any("my.yaml:9: duplicate key 'condition'" in m for m in msgs)


def test_later_files_override_append_and_disable() -> None:
    base = """\
- list: trusted
  items: [a.example]
- macro: trusted_dest
  condition: destinations in trusted
- rule: r1
  condition: destinations exists and not trusted_dest
  priority: warning
- rule: r2
  condition: tool = x
  priority: info
"""
    local = """\
- list: trusted
  items: [b.example]
  append: true
- rule: r2
  enabled: false
"""
    rs = load_rule_files([(base, "base.yaml"), (local, "local.yaml")])
    assert rs.lists["trusted"] == ("a.example", "b.example")
    assert rs.rule("r2").enabled is False
    with pytest.raises(RuleError, match=r"local\.yaml:1: rule 'nope': only 'enabled' is given"):
        load_rule_files([(base, "base.yaml"), ("- rule: nope\n  enabled: false\n", "local.yaml")])
    with pytest.raises(RuleError, match=r"x\.yaml:1: list 'nolist': append: true but no earlier list"):
        load_rule_files([("- list: nolist\n  items: [a]\n  append: true\n", "x.yaml")])


def test_empty_file_is_an_empty_ruleset() -> None:
    assert load_rules("", "empty.yaml").rules == ()
    assert load_rules("# only comments\n", "empty.yaml").rules == ()
