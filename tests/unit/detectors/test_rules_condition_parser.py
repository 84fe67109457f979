"""Condition language: operator semantics, precedence, and property tests of the parser."""

from __future__ import annotations

from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolwatch.detectors.events import ToolCall
from toolwatch.detectors.rules import RuleError, call_from_dict, load_rules, parse_condition
from toolwatch.detectors.rules.fields import EvalContext


def ev(text: str, call: ToolCall, caps: frozenset[str] = frozenset(), **ctx) -> bool:
    lists = {"mail_tools": ("send_email", "reply_email"), "sizes": ("10", "20")}
    return parse_condition(text, lists).eval(EvalContext(call=call, capabilities=caps, **ctx))


CALL = ToolCall(
    time_ns=1, agent_id="a1", tool="send_email", server="gmail", args_bytes=2048, error_type="",
    args_labels=("email", "secret"), result_labels=(), destinations=("evil.example", "mail.example"),
    args_json='{"to": "<email>"}',
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tool = send_email", True),
        ("tool == 'send_email'", True),
        ('tool != "send_email"', False),
        ("tool in mail_tools", True),
        ("tool in (read_file, mail_tools)", True),
        ("tool in ()", False),
        ("tool startswith send", True),
        ("tool endswith _email", True),
        ('tool glob "send_*"', True),
        ('tool regex "^send_(e|sms)"', True),
        ("tool contains mail", True),
        ("tool icontains MAIL", True),
        ("args.labels contains secret", True),
        ("args.labels contains card", False),
        ("args.labels in (card, secret)", True),
        ("args.labels intersects (card, ssn)", False),
        ("args.labels exists", True),
        ("result.labels exists", False),
        ('destinations glob "*.example"', True),
        ("destinations endswith evil.example", True),
        ("args.bytes > 1024", True),
        ("args.bytes <= 1024", False),
        ("args.bytes = 2048", True),
        ("args.bytes in (2048, 4096)", True),
        ("error exists", False),
        ("error = ''", True),
        ("capabilities contains sends_out", True),
        ('args icontains "<EMAIL>"', True),
        ("true and not false", True),
        ("not tool = send_email or server = gmail", True),
        ("not (tool = send_email or server = gmail)", False),
        ("tool = x or tool = send_email and server = gmail", True),  # and binds tighter than or
        ("(tool = x or tool = send_email) and server = slack", False),
    ],
)
def test_operator_semantics(text: str, expected: bool) -> None:
    assert ev(text, CALL, frozenset({"sends_out"})) is expected


def test_session_context_fields() -> None:
    ctx = {"prev_result_labels": ("instructions",), "session_calls": 3, "new_destinations": ("evil.example",)}
    assert ev("prev.result.labels contains instructions and session.calls >= 3", CALL, **ctx)
    assert ev("destinations.new contains evil.example", CALL, **ctx)
    assert not ev("prev.tool exists", CALL, **ctx)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty condition"),
        ("tool =", "unexpected end of condition"),
        ("tool = x and", "unexpected end of condition"),
        ("(tool = x", "expected ')'"),
        ("tool = x)", "unexpected ')'"),
        ("tool ~ x", "unexpected character '~'"),
        ("tool > 3", "operator '>' does not apply to str field 'tool'"),
        ("args.bytes contains 3", "operator 'contains' does not apply to num field"),
        ("args.bytes in (a, b)", "must hold numbers"),
        ("tool", "field 'tool' needs an operator"),
        ("and tool = x", "unexpected keyword 'and'"),
        ("tool = 'unterminated", "unexpected character"),
        ("tol = x", "unknown field 'tol' (did you mean 'tool'?)"),
        ("tool in nolist", "unknown list 'nolist'"),
        ("not " * 100 + "true", "nested deeper than 64"),
    ],
)
def test_syntax_errors_are_rule_errors_with_a_position(text: str, fragment: str) -> None:
    with pytest.raises(RuleError, match=None) as info:
        parse_condition(text, {})
    assert fragment in str(info.value)
    assert hasattr(info.value, "offset")


# --- property tests ----------------------------------------------------------------------------
VOCAB = ["tool", "server", "args.labels", "args.bytes", "destinations", "and", "or", "not", "(", ")", ",",
         "=", "!=", "<", ">=", "in", "contains", "glob", "regex", "exists", "intersects", "true", "false",
         "'x'", '"[a-"', "3", "-1.5", "send_email", "secret", "m1", "lst", "capabilities"]


@given(st.text(max_size=80))
@settings(max_examples=150, deadline=None)
def test_parser_never_raises_anything_but_rule_error_on_any_text(text: str) -> None:
    try:
        parse_condition(text, {"lst": ("a",)})
    except RuleError:
        pass


@given(st.lists(st.sampled_from(VOCAB), max_size=14).map(" ".join))
@settings(max_examples=150, deadline=None)
def test_parser_never_raises_anything_but_rule_error_on_token_soup(text: str) -> None:
    try:
        parse_condition(text, {"lst": ("a",)}, lambda name, pos: parse_condition("true") if name == "m1" else None)
    except RuleError:
        pass


Atom = tuple[str, Callable[[ToolCall], bool]]
ATOMS: list[Atom] = [
    ("tool = send_email", lambda c: c.tool == "send_email"),
    ("server != gmail", lambda c: c.server != "gmail"),
    ("args.labels contains secret", lambda c: "secret" in c.args_labels),
    ("args.bytes > 100", lambda c: c.args_bytes > 100),
    ("destinations intersects (a.example, b.example)", lambda c: bool({"a.example", "b.example"} & set(c.destinations))),
    ("tool startswith read", lambda c: c.tool.startswith("read")),
    ('tool glob "*_email"', lambda c: c.tool.endswith("_email")),
    ("result.labels exists", lambda c: bool(c.result_labels)),
    ("true", lambda c: True),
]


def _combine(children: st.SearchStrategy) -> st.SearchStrategy:
    def neg(a):
        return (f"not ({a[0]})", lambda c, f=a[1]: not f(c))

    def both(a, b):
        return (f"({a[0]}) and ({b[0]})", lambda c, f=a[1], g=b[1]: f(c) and g(c))

    def either(a, b):
        return (f"({a[0]}) or ({b[0]})", lambda c, f=a[1], g=b[1]: f(c) or g(c))

    return st.one_of(children.map(neg), st.builds(both, children, children), st.builds(either, children, children))


EXPRS = st.recursive(st.sampled_from(ATOMS), _combine, max_leaves=8)
CALLS = st.builds(
    lambda tool, server, labels, size, dests, rlabels: ToolCall(
        time_ns=1, agent_id="a", tool=tool, server=server, args_labels=tuple(labels), args_bytes=size,
        destinations=tuple(dests), result_labels=tuple(rlabels)),
    st.sampled_from(["send_email", "read_file", "fetch", "reply_email"]),
    st.sampled_from(["gmail", "fs", ""]),
    st.lists(st.sampled_from(["secret", "email", "url"]), max_size=3),
    st.integers(0, 500),
    st.lists(st.sampled_from(["a.example", "b.example", "c.example"]), max_size=2),
    st.lists(st.sampled_from(["instructions", "url"]), max_size=2),
)


@given(EXPRS, CALLS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_parsed_expressions_agree_with_a_reference_evaluator(expr: Atom, call: ToolCall) -> None:
    text, reference = expr
    assert parse_condition(text).eval(EvalContext(call=call)) == reference(call)


@given(st.dictionaries(st.sampled_from(["tool", "t", "args_labels", "args_bytes", "time_ns", "server", "bogus",
                                        "result_sketch", "result_injection_score"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                                 st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=3)),
                       max_size=6))
@settings(max_examples=150, deadline=None)
def test_event_reader_never_raises_anything_but_rule_error(data: dict) -> None:
    try:
        call = call_from_dict(data, "trace.jsonl:1")
    except RuleError as e:
        assert str(e).startswith("trace.jsonl:1: ")
    else:
        assert isinstance(call.tool, str)


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_loader_never_raises_anything_but_rule_error_on_any_text(text: str) -> None:
    try:
        load_rules(text, "fuzz.yaml")
    except RuleError:
        pass


@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
                    lambda ch: st.one_of(st.lists(ch, max_size=3),
                                         st.dictionaries(st.sampled_from(["rule", "macro", "list", "condition",
                                                                          "priority", "items", "samples", "tags",
                                                                          "correlation", "type", "rules",
                                                                          "exceptions", "timespan"]), ch,
                                                         max_size=4)),
                    max_leaves=12))
@settings(max_examples=150, deadline=None)
def test_loader_never_raises_anything_but_rule_error_on_any_yaml_shape(doc) -> None:
    import yaml

    try:
        load_rules(yaml.safe_dump([doc] if not isinstance(doc, list) else doc), "fuzz.yaml")
    except RuleError:
        pass


@given(st.text(max_size=60))
@settings(max_examples=150, deadline=None)
def test_any_regex_text_is_compiled_or_a_rule_error(pattern: str) -> None:
    quoted = '"' + pattern.replace("\\", "\\\\").replace('"', '\\"') + '"'
    try:
        node = parse_condition(f"tool regex {quoted}")
    except RuleError:
        return
    node.eval(EvalContext(call=CALL))


@pytest.mark.parametrize("depth", [450, 499, 2000])
def test_pathological_regexes_are_rule_errors_not_crashes(depth: int) -> None:
    try:
        parse_condition('tool regex "' + "(" * depth + ")" * depth + '"')
    except RuleError as e:
        assert "regex" in str(e)
