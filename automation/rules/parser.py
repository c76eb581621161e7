"""Parse rule text into the syntax tree of ``automation.rules.ast`` (lark, LALR).

A rule is at most ``MAX_RULE_LENGTH`` (4,000) characters and nests at most ``MAX_RULE_DEPTH`` (32)
levels: every open parenthesis or bracket and every ``not`` that applies to what follows it counts
one. Both are checked on the tokens before anything is built, so a rule of thousands of ``(`` or
``not`` is a clean error found at once, and every later step (which walks the tree recursively) sees
shallow trees only.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from automation.rules import ast
from automation.rules.ast import RuleError, parse_duration

GRAMMAR = Path(__file__).with_name("grammar.lark")
MAX_RULE_LENGTH = 4_000
MAX_RULE_DEPTH = 32

_EXPECTED_WORDS = {
    "NAME": "a field or function name",
    "NUMBER": "a number",
    "STRING": "a quoted string",
    "DURATION": "a duration like 30d",
    "COMP_OP": "a comparison (== != < <= > >=)",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "DOT": "'.'",
    "EQUAL": "'='",
    "_AND": "'and'",
    "_OR": "'or'",
    "_NOT": "'not'",
    "_IS": "'is'",
    "_IN": "'in'",
    "_NULL": "'null'",
    "_TRUE": "'true'",
    "_FALSE": "'false'",
    "$END": "the end of the rule",
}


RuleSyntaxError = RuleError


@cache
def _parser() -> Lark:
    return Lark(
        GRAMMAR.read_text(), parser="lalr", lexer="basic", propagate_positions=True, maybe_placeholders=False
    )


def _pos(meta: Any) -> int:
    return int(getattr(meta, "start_pos", 0) or 0)


@v_args(meta=True)
class _ToAst(Transformer[Token, ast.Node]):
    def or_(self, meta: Any, items: list[ast.Node]) -> ast.Node:
        return items[0] if len(items) == 1 else ast.Or(tuple(items), _pos(meta))

    def and_(self, meta: Any, items: list[ast.Node]) -> ast.Node:
        return items[0] if len(items) == 1 else ast.And(tuple(items), _pos(meta))

    def not_(self, meta: Any, items: list[ast.Node]) -> ast.Node:
        return ast.Not(items[0], _pos(meta))

    def compare(self, meta: Any, items: list[Any]) -> ast.Node:
        left, op, right = items
        return ast.Compare(str(op), left, right, _pos(meta), op.start_pos)

    def is_null(self, meta: Any, items: list[ast.Node]) -> ast.Node:
        return ast.IsNull(items[0], False, _pos(meta))

    def is_not_null(self, meta: Any, items: list[ast.Node]) -> ast.Node:
        return ast.IsNull(items[0], True, _pos(meta))

    def in_(self, meta: Any, items: list[Any]) -> ast.Node:
        return ast.In(items[0], tuple(items[1]), False, _pos(meta))

    def not_in(self, meta: Any, items: list[Any]) -> ast.Node:
        return ast.In(items[0], tuple(items[1]), True, _pos(meta))

    def items(self, meta: Any, items: list[ast.Node]) -> list[ast.Node]:
        return items

    def number(self, meta: Any, items: list[Token]) -> ast.Node:
        text = str(items[0])
        value: int | float = float(text) if "." in text else int(text)
        return ast.Literal(value, "number", items[0].start_pos or 0)

    def string(self, meta: Any, items: list[Token]) -> ast.Node:
        token = items[0]
        text = str(token)
        if "\n" in text or "\r" in text:
            raise RuleSyntaxError("a string cannot contain a line break; write \\n", token.start_pos or 0)
        return ast.Literal(_unquote(text), "string", token.start_pos or 0)

    def duration(self, meta: Any, items: list[Token]) -> ast.Node:
        return ast.Literal(parse_duration(str(items[0])), "duration", items[0].start_pos or 0)

    def true(self, meta: Any, items: list[Token]) -> ast.Node:
        return ast.Literal(True, "bool", _pos(meta))

    def false(self, meta: Any, items: list[Token]) -> ast.Node:
        return ast.Literal(False, "bool", _pos(meta))

    def null(self, meta: Any, items: list[Token]) -> ast.Node:
        return ast.Literal(None, "null", _pos(meta))

    def field(self, meta: Any, items: list[Token]) -> ast.Node:
        return ast.Field(tuple(str(t) for t in items), items[0].start_pos or 0)

    def call(self, meta: Any, items: list[Any]) -> ast.Node:
        name = items[0]
        arguments = items[1] if len(items) > 1 else []
        args = tuple(a for a in arguments if not isinstance(a, tuple))
        kwargs = tuple(a for a in arguments if isinstance(a, tuple))
        return ast.Call(str(name), args, kwargs, name.start_pos or 0)

    def arguments(self, meta: Any, items: list[Any]) -> list[Any]:
        seen_kw = False
        for item in items:
            if isinstance(item, tuple):
                seen_kw = True
            elif seen_kw:
                raise RuleSyntaxError("a positional argument cannot follow a keyword argument", _pos(meta))
        return items

    def kwarg(self, meta: Any, items: list[Any]) -> tuple[str, ast.Node]:
        return (str(items[0]), items[1])


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def _unquote(text: str) -> str:
    """The value of a quoted string: \\n \\t \\r \\\\ \\" \\' are escapes; any other backslash stays."""
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body) and body[i + 1] in _ESCAPES:
            out.append(_ESCAPES[body[i + 1]])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _describe(error: UnexpectedInput, text: str) -> RuleSyntaxError:
    if isinstance(error, UnexpectedEOF):
        return RuleSyntaxError("the rule ends too early", len(text))
    if isinstance(error, UnexpectedCharacters):
        at = error.pos_in_stream or 0
        char = text[at] if at < len(text) else ""
        hint = " (strings need matching quotes)" if char in "\"'" else ""
        return RuleSyntaxError(f"unexpected character {char!r}{hint}", at)
    if isinstance(error, UnexpectedToken):
        token = error.token
        pos = token.start_pos if token.start_pos is not None else len(text)
        if token.type == "$END":
            return RuleSyntaxError("the rule ends too early", len(text))
        if token.type == "EQUAL":
            return RuleSyntaxError("unexpected '='; use == to compare", pos)
        words = sorted({_EXPECTED_WORDS.get(e, e.lower()) for e in error.expected})
        expected = ", ".join(words)
        return RuleSyntaxError(f"unexpected {str(token)!r}; expected {expected}", pos)
    return RuleSyntaxError(str(error), 0)


def _check_depth(text: str) -> None:
    """Refuse a rule nested deeper than ``MAX_RULE_DEPTH``, from its tokens alone.

    ``chains`` holds, per open bracket level, how many ``not`` in a row are waiting for their operand;
    any other token at that level ends the chain. The depth at a token is the open brackets plus the
    waiting ``not``s of every level, which is never less than the tree's nesting there.
    """
    chains = [0]
    for token in _parser().lex(text):
        kind = token.type
        if kind == "_NOT":
            chains[-1] += 1
        elif kind in ("LPAR", "LSQB"):
            chains.append(0)
        elif kind in ("RPAR", "RSQB"):
            if len(chains) > 1:
                chains.pop()
            chains[-1] = 0
            continue
        else:
            chains[-1] = 0
            continue
        if len(chains) - 1 + sum(chains) > MAX_RULE_DEPTH:
            raise RuleSyntaxError(
                f"the rule nests more than {MAX_RULE_DEPTH} levels deep (parentheses, brackets and "
                "'not'); split it or simplify it",
                token.start_pos or 0,
            )


def parse(text: str) -> ast.Node:
    """Parse ``text``; raise ``RuleSyntaxError`` with the offset of the problem."""
    if not text.strip():
        raise RuleSyntaxError("the rule is empty", 0)
    if len(text) > MAX_RULE_LENGTH:
        raise RuleSyntaxError(
            f"the rule is {len(text):,} characters long; the limit is {MAX_RULE_LENGTH:,}", MAX_RULE_LENGTH
        )
    try:
        _check_depth(text)
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _describe(exc, text) from None
    try:
        result = _ToAst().transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, RuleSyntaxError):
            raise exc.orig_exc from None
        raise
    assert not isinstance(result, list)
    return result
