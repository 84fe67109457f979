"""A small, safe condition language (no ``eval``): Falco-style boolean expressions over fields.

Grammar (keywords are case-sensitive, lower case)::

    expr    := and ('or' and)*
    and     := unary ('and' unary)*
    unary   := 'not' unary | atom
    atom    := '(' expr ')' | 'true' | 'false' | MACRO | FIELD OP value | FIELD 'exists'
    OP      := = | == | != | < | <= | > | >= | in | intersects | contains | icontains
             | startswith | endswith | glob | regex
    value   := STRING | NUMBER | WORD | '(' item (',' item)* ')' | LIST   (lists for in/intersects)

Fields are typed (see ``fields.FIELDS``), so a wrong operator, an unknown field, list or macro,
or a bad regex is reported when the rule is loaded, never while events flow.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Callable, Mapping, Protocol, Union

from .errors import ConditionError
from .fields import FIELDS, EvalContext, Field

KEYWORDS = frozenset(
    "and or not in intersects contains icontains startswith endswith glob regex exists true false".split()
)
WORD_OPS = frozenset("in intersects contains icontains startswith endswith glob regex".split())
SYMBOL_OPS = {"=": "=", "==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
OPS_BY_TYPE: dict[str, frozenset[str]] = {
    "str": frozenset({"=", "!=", "in", "contains", "icontains", "startswith", "endswith", "glob", "regex", "exists"}),
    "num": frozenset({"=", "!=", "<", "<=", ">", ">=", "in"}),
    "list": frozenset({"in", "intersects", "contains", "icontains", "startswith", "endswith", "glob", "regex", "exists"}),
}
MAX_DEPTH = 64
"""Nesting bound, so a hostile or broken file cannot exhaust the stack."""

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      |(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      |(?P<num>-?\d+(?:\.\d+)?(?![A-Za-z_]))
      |(?P<op><=|>=|!=|==|=|<|>)
      |(?P<punct>[(),])
      |(?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)""",
    re.VERBOSE,
)


@dataclass(slots=True, frozen=True)
class Token:
    kind: str
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ConditionError(f"unexpected character {text[pos]!r}", pos)
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    return tokens


def _unquote(token: Token) -> str:
    body = token.text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


# --- AST ---------------------------------------------------------------------------------------
class Node(Protocol):
    def eval(self, ctx: EvalContext) -> bool: ...


@dataclass(slots=True, frozen=True)
class Const:
    value: bool

    def eval(self, ctx: EvalContext) -> bool:
        return self.value


@dataclass(slots=True, frozen=True)
class Not:
    item: Node

    def eval(self, ctx: EvalContext) -> bool:
        return not self.item.eval(ctx)


@dataclass(slots=True, frozen=True)
class And:
    items: tuple[Node, ...]

    def eval(self, ctx: EvalContext) -> bool:
        return all(i.eval(ctx) for i in self.items)


@dataclass(slots=True, frozen=True)
class Or:
    items: tuple[Node, ...]

    def eval(self, ctx: EvalContext) -> bool:
        return any(i.eval(ctx) for i in self.items)


Operand = Union[str, float, frozenset, "re.Pattern[str]", None]


@dataclass(slots=True, frozen=True)
class Compare:
    field: str
    op: str
    operand: Operand
    spec: Field
    test: Callable[[object], bool] = dataclass_field(init=False, repr=False, compare=False)
    """The comparison specialised once for this field type, operator and operand."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", _predicate(self.spec.type, self.op, self.operand))

    def eval(self, ctx: EvalContext) -> bool:
        return self.test(self.spec.get(ctx))


def _scalar_predicate(op: str, operand: Operand) -> Callable[[str], bool]:
    """Text tests shared by text fields and by each element of list fields."""
    text = "" if operand is None or isinstance(operand, (frozenset, re.Pattern)) else str(operand)
    if op == "contains":
        return lambda v: text in v
    if op == "icontains":
        low = text.lower()
        return lambda v: low in v.lower()
    if op == "startswith":
        return lambda v: v.startswith(text)
    if op == "endswith":
        return lambda v: v.endswith(text)
    if op == "glob":
        return lambda v: fnmatch.fnmatchcase(v, text)
    if op == "regex":
        search = operand.search  # type: ignore[union-attr]
        return lambda v: search(v) is not None
    raise ValueError(f"no text test for operator {op!r}")


def _predicate(ftype: str, op: str, operand: Operand) -> Callable[[object], bool]:
    if ftype == "list":
        if op in ("in", "intersects"):
            return lambda vs: any(v in operand for v in vs)  # type: ignore[operator,union-attr]
        if op == "contains":
            return lambda vs: operand in vs  # type: ignore[operator]
        if op == "exists":
            return bool
        one = _scalar_predicate(op, operand)
        return lambda vs: any(one(v) for v in vs)  # type: ignore[union-attr]
    if op == "in":
        return lambda v: v in operand  # type: ignore[operator]
    if op == "exists":
        return bool
    if op == "=":
        return lambda v: v == operand
    if op == "!=":
        return lambda v: v != operand
    if ftype == "num":
        x = float(operand)  # type: ignore[arg-type]
        return {
            "<": lambda v: v < x,
            "<=": lambda v: v <= x,
            ">": lambda v: v > x,
            ">=": lambda v: v >= x,
        }[op]
    return _scalar_predicate(op, operand)  # type: ignore[return-value]


# --- parser ------------------------------------------------------------------------------------
MacroResolver = Callable[[str, int], Union[Node, None]]
"""Returns the compiled macro, or None when no macro has that name (``pos`` is for errors)."""


class _Parser:
    def __init__(self, text: str, lists: Mapping[str, tuple[str, ...]], macros: MacroResolver) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.lists = lists
        self.macros = macros
        self.depth = 0

    # helpers
    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self, what: str) -> Token:
        tok = self.peek()
        if tok is None:
            raise ConditionError(f"unexpected end of condition, expected {what}", len(self.text.rstrip()))
        self.i += 1
        return tok

    def at_word(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "word" and tok.text == word

    # grammar
    def parse(self) -> Node:
        if not self.tokens:
            raise ConditionError("empty condition", 0)
        node = self.expr()
        tok = self.peek()
        if tok is not None:
            raise ConditionError(f"unexpected {tok.text!r}; expected 'and', 'or' or the end", tok.pos)
        return node

    def expr(self) -> Node:
        items = [self.conj()]
        while self.at_word("or"):
            self.i += 1
            items.append(self.conj())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conj(self) -> Node:
        items = [self.unary()]
        while self.at_word("and"):
            self.i += 1
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConditionError(f"condition nested deeper than {MAX_DEPTH} levels", self.tokens[self.i - 1].pos)
        try:
            if self.at_word("not"):
                self.i += 1
                return Not(self.unary())
            return self.atom()
        finally:
            self.depth -= 1

    def atom(self) -> Node:
        tok = self.next("a field, macro, 'not' or '('")
        if tok.kind == "punct" and tok.text == "(":
            node = self.expr()
            close = self.next("')'")
            if close.text != ")":
                raise ConditionError(f"expected ')' but found {close.text!r}", close.pos)
            return node
        if tok.kind != "word":
            raise ConditionError(f"expected a field, macro, 'not' or '(' but found {tok.text!r}", tok.pos)
        if tok.text in ("true", "false"):
            return Const(tok.text == "true")
        if tok.text in KEYWORDS:
            raise ConditionError(f"unexpected keyword {tok.text!r}", tok.pos)
        nxt = self.peek()
        is_op = nxt is not None and (nxt.kind == "op" or (nxt.kind == "word" and nxt.text in WORD_OPS | {"exists"}))
        if is_op:
            return self.comparison(tok)
        if tok.text in FIELDS:
            raise ConditionError(f"field {tok.text!r} needs an operator, e.g. '{tok.text} exists'", tok.pos)
        macro = self.macros(tok.text, tok.pos)
        if macro is None:
            raise ConditionError(f"unknown macro or field {tok.text!r}{_suggest(tok.text)}", tok.pos)
        return macro

    def comparison(self, name: Token) -> Node:
        spec = FIELDS.get(name.text)
        if spec is None:
            raise ConditionError(f"unknown field {name.text!r}{_suggest(name.text, FIELDS)}", name.pos)
        op_tok = self.next("an operator")
        op = SYMBOL_OPS.get(op_tok.text, op_tok.text)
        if op not in OPS_BY_TYPE[spec.type]:
            hint = " (it is a list: use contains, in or intersects)" if spec.type == "list" else ""
            raise ConditionError(
                f"operator {op_tok.text!r} does not apply to {spec.type} field {name.text!r}{hint}", op_tok.pos
            )
        if op == "exists":
            return Compare(name.text, op, None, spec)
        if op in ("in", "intersects"):
            items = self.value_list(spec.type)
            return Compare(name.text, op, items, spec)
        operand = self.scalar(spec.type, op)
        if op == "regex":
            operand = compile_regex(str(operand), op_tok.pos)
        return Compare(name.text, op, operand, spec)

    def scalar(self, ftype: str, op: str) -> str | float:
        tok = self.next("a value")
        if tok.kind == "str":
            value: str | float = _unquote(tok)
        elif tok.kind == "num":
            value = float(tok.text)
        elif tok.kind == "word" and tok.text not in KEYWORDS:
            value = tok.text
        else:
            raise ConditionError(f"expected a value after the operator but found {tok.text!r}", tok.pos)
        if ftype == "num":
            if not isinstance(value, float):
                raise ConditionError(f"expected a number but found {tok.text!r}", tok.pos)
            return value
        return value if isinstance(value, str) else tok.text

    def value_list(self, ftype: str) -> frozenset:
        tok = self.next("'(' or a list name")
        if tok.kind == "word" and tok.text not in KEYWORDS:
            if tok.text not in self.lists:
                raise ConditionError(f"unknown list {tok.text!r}{_suggest(tok.text, self.lists)}", tok.pos)
            return self._typed(self.lists[tok.text], ftype, tok)
        if tok.text != "(":
            raise ConditionError(f"expected '(' or a list name but found {tok.text!r}", tok.pos)
        items: list[str] = []
        while True:
            item = self.next("a value or ')'")
            if item.text == ")" and not items:
                break
            if item.kind == "str":
                items.append(_unquote(item))
            elif item.kind == "num":
                items.append(item.text)
            elif item.kind == "word" and item.text not in KEYWORDS:
                # Falco: a bare word naming a list expands to its items, otherwise it is a string.
                items.extend(self.lists.get(item.text, (item.text,)))
            else:
                raise ConditionError(f"expected a value in the list but found {item.text!r}", item.pos)
            sep = self.next("',' or ')'")
            if sep.text == ")":
                break
            if sep.text != ",":
                raise ConditionError(f"expected ',' or ')' but found {sep.text!r}", sep.pos)
        return self._typed(tuple(items), ftype, tok)

    @staticmethod
    def _typed(items: tuple[str, ...], ftype: str, tok: Token) -> frozenset:
        if ftype != "num":
            return frozenset(items)
        try:
            return frozenset(float(i) for i in items)
        except ValueError:
            raise ConditionError(f"the list for a number field must hold numbers: {list(items)!r}", tok.pos) from None


MAX_REGEX = 1_000
"""Longest regex accepted; longer ones are almost always a mistake and slow to compile."""


def compile_regex(text: str, pos: int) -> "re.Pattern[str]":
    """Compile a rule's regex, turning every way ``re`` can fail into a ConditionError."""
    if len(text) > MAX_REGEX:
        raise ConditionError(f"regex longer than {MAX_REGEX} characters", pos)
    try:
        return re.compile(text)
    except (re.error, RecursionError, OverflowError, ValueError) as e:
        raise ConditionError(f"bad regex {text[:60]!r}: {e or type(e).__name__}", pos) from None


def _suggest(name: str, choices: Mapping[str, object] | None = None) -> str:
    pool = list(choices) if choices is not None else list(FIELDS)
    close = difflib.get_close_matches(name, pool, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_compare(
    field: str, op: str, value: object, lists: Mapping[str, tuple[str, ...]] | None = None
) -> Node:
    """One comparison built from data (Falco ``exceptions`` rows), checked like parsed text."""
    spec = FIELDS.get(field)
    if spec is None:
        raise ConditionError(f"unknown field {field!r}{_suggest(field, FIELDS)}", 0)
    op = SYMBOL_OPS.get(op, op)
    if op not in OPS_BY_TYPE[spec.type] or op == "exists":
        raise ConditionError(f"operator {op!r} does not apply to {spec.type} field {field!r}", 0)
    if op in ("in", "intersects"):
        if isinstance(value, str) and lists and value in lists:
            items: tuple = lists[value]
        elif isinstance(value, (list, tuple)):
            items = tuple(str(v) for v in value)
        else:
            raise ConditionError(f"'{op}' needs a list of values or a list name for field {field!r}", 0)
        return Compare(field, op, _Parser._typed(items, spec.type, Token("str", "", 0)), spec)
    if isinstance(value, (list, tuple, dict)) or value is None:
        raise ConditionError(f"operator {op!r} on field {field!r} needs a single value", 0)
    if spec.type == "num":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConditionError(f"field {field!r} is a number; {value!r} is not", 0)
        return Compare(field, op, float(value), spec)
    text = str(value)
    if op == "regex":
        return Compare(field, op, compile_regex(text, 0), spec)
    return Compare(field, op, text, spec)


def parse_condition(
    text: str,
    lists: Mapping[str, tuple[str, ...]] | None = None,
    macros: MacroResolver | None = None,
) -> Node:
    """Parse a condition into an evaluable tree; raises ``ConditionError`` (a ``RuleError``) only."""
    if not isinstance(text, str):
        raise ConditionError(f"a condition must be text, not {type(text).__name__}", 0)
    return _Parser(text, lists or {}, macros or (lambda name, pos: None)).parse()
