"""Parsing rule text: the trees, the offsets, and the syntax errors."""

from __future__ import annotations

import warnings
from datetime import timedelta

import pytest

from automation.rules.ast import (
    And,
    Call,
    Compare,
    Field,
    In,
    IsNull,
    Literal,
    Node,
    Not,
    Or,
    RuleError,
)
from automation.rules.parser import parse


def shape(node: Node) -> object:
    """The tree without offsets, as nested tuples, to compare structure."""
    if isinstance(node, Field):
        return node.dotted
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Call):
        return (
            "call",
            node.name,
            tuple(shape(a) for a in node.args),
            tuple((k, shape(v)) for k, v in node.kwargs),
        )
    if isinstance(node, Compare):
        return (node.op, shape(node.left), shape(node.right))
    if isinstance(node, IsNull):
        return ("is not null" if node.negated else "is null", shape(node.operand))
    if isinstance(node, In):
        return ("not in" if node.negated else "in", shape(node.operand), tuple(shape(i) for i in node.items))
    if isinstance(node, And):
        return ("and", *(shape(i) for i in node.items))
    if isinstance(node, Or):
        return ("or", *(shape(i) for i in node.items))
    if isinstance(node, Not):
        return ("not", shape(node.operand))
    raise TypeError(node)


def syntax_error(text: str) -> RuleError:
    with pytest.raises(RuleError) as info:
        parse(text)
    return info.value


# -- structure ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a or b and c", ("or", "a", ("and", "b", "c"))),
        ("a and b or c", ("or", ("and", "a", "b"), "c")),
        ("not a and b", ("and", ("not", "a"), "b")),
        ("not a or b", ("or", ("not", "a"), "b")),
        ("a or not b and c", ("or", "a", ("and", ("not", "b"), "c"))),
        ("not not a", ("not", ("not", "a"))),
        ("(a or b) and c", ("and", ("or", "a", "b"), "c")),
        ("not (a or b)", ("not", ("or", "a", "b"))),
        ("a and (b or (c and d))", ("and", "a", ("or", "b", ("and", "c", "d")))),
        ("a and b and c", ("and", "a", "b", "c")),
        ("a or b or c or d", ("or", "a", "b", "c", "d")),
        ("((a))", "a"),
        ("not x == 3", ("not", ("==", "x", 3))),
        ("not x is null", ("not", ("is null", "x"))),
        ("x > 1 and y < 2 or z == 3", ("or", ("and", (">", "x", 1), ("<", "y", 2)), ("==", "z", 3))),
    ],
)
def test_precedence_not_binds_tighter_than_and_than_or(text: str, expected: object) -> None:
    assert shape(parse(text)) == expected


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
def test_every_comparison_operator(op: str) -> None:
    assert shape(parse(f"clv {op} 3")) == (op, "clv", 3)
    assert shape(parse(f"clv{op}3")) == (op, "clv", 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("orders_count > 1", (">", "orders_count", 1)),
        ("order == 2", ("==", "order", 2)),
        ("isx is null", ("is null", "isx")),
        ("nota in [1]", ("in", "nota", (1,))),
        ("android and island", ("and", "android", "island")),
        ("notes is not null", ("is not null", "notes")),
        ("nullable != trueish", ("!=", "nullable", "trueish")),
        ("in_stock == falsey", ("==", "in_stock", "falsey")),
        ("ordinal or nothing", ("or", "ordinal", "nothing")),
        ("within(x)", ("call", "within", ("x",), ())),
    ],
)
def test_keywords_only_match_whole_words(text: str, expected: object) -> None:
    assert shape(parse(text)) == expected


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("x == 3", 3, "number"),
        ("x == -3", -3, "number"),
        ("x == 2.5", 2.5, "number"),
        ("x == -0.5", -0.5, "number"),
        ("x == 007", 7, "number"),
        ('x == "pro"', "pro", "string"),
        ("x == 'pro'", "pro", "string"),
        ('x == ""', "", "string"),
        ('x == "a\\"b"', 'a"b', "string"),
        ("x == 'it\\'s'", "it's", "string"),
        ('x == "it\'s"', "it's", "string"),
        ('x == "tab\\tnew\\nline"', "tab\tnew\nline", "string"),
        ('x == "and or not"', "and or not", "string"),
        ("x == true", True, "bool"),
        ("x == false", False, "bool"),
        ("x == null", None, "null"),
        ("x == 30d", timedelta(days=30), "duration"),
        ("x == 1.5h", timedelta(minutes=90), "duration"),
        ("x == 2w", timedelta(weeks=2), "duration"),
        ("x == 90m", timedelta(minutes=90), "duration"),
        ("x == 45s", timedelta(seconds=45), "duration"),
    ],
)
def test_literals(text: str, value: object, kind: str) -> None:
    node = parse(text)
    assert isinstance(node, Compare)
    assert node.right == Literal(value, kind, 5)
    assert type(node.right.value) is type(value)


def test_in_lists_is_null_and_calls() -> None:
    assert shape(parse('plan in ["a", "b"]')) == ("in", "plan", ("a", "b"))
    assert shape(parse("plan not in []")) == ("not in", "plan", ())
    assert shape(parse("nps in [1, 2.5, -3]")) == ("in", "nps", (1, 2.5, -3))
    assert shape(parse("x is not null")) == ("is not null", "x")
    assert shape(parse('events("login", within=3d) > 0')) == (
        ">",
        ("call", "events", ("login",), (("within", timedelta(days=3)),)),
        0,
    )
    assert shape(parse('events("a", within="7d")')) == ("call", "events", ("a",), (("within", "7d"),))
    assert shape(parse("f()")) == ("call", "f", (), ())
    assert shape(parse("f(g(h), k=l)")) == ("call", "f", (("call", "g", ("h",), ()),), (("k", "l"),))
    assert shape(parse("attributes.meta.level >= 2")) == (">=", "attributes.meta.level", 2)
    assert shape(parse("(clv > 1) == (nps < 2)")) == ("==", (">", "clv", 1), ("<", "nps", 2))
    assert shape(parse("anniversary(birthday)")) == ("call", "anniversary", ("birthday",), ())


def test_attribute_paths_are_split_on_dots() -> None:
    node = parse("attributes.meta.level == 2")
    assert isinstance(node, Compare) and isinstance(node.left, Field)
    assert node.left.path == ("attributes", "meta", "level")


# -- offsets -------------------------------------------------------------------------------------------


def test_positions_point_at_each_node() -> None:
    text = '  clv >= -3.5 and not plan in ["a", \'b\'] or events("x", within=3d) > 0'
    tree = parse(text)
    assert isinstance(tree, Or)
    conj, compare_events = tree.items
    assert isinstance(conj, And) and isinstance(compare_events, Compare)
    clv_compare, negation = conj.items
    assert isinstance(clv_compare, Compare) and isinstance(negation, Not)
    in_list = negation.operand
    assert isinstance(in_list, In)
    call = compare_events.left
    assert isinstance(call, Call)
    within = call.kwargs[0][1]

    def at(pos: int, snippet: str) -> None:
        assert text[pos : pos + len(snippet)] == snippet, (pos, snippet)

    assert tree.pos == conj.pos == clv_compare.pos == 2
    at(clv_compare.left.pos, "clv")
    at(clv_compare.op_pos, ">=")
    at(clv_compare.right.pos, "-3.5")
    at(negation.pos, "not plan")
    at(in_list.pos, "plan in")
    at(in_list.operand.pos, "plan")
    at(in_list.items[0].pos, '"a"')
    at(in_list.items[1].pos, "'b'")
    at(compare_events.pos, "events(")
    at(compare_events.op_pos, "> 0")
    at(call.pos, "events(")
    at(call.args[0].pos, '"x"')
    at(within.pos, "3d")
    at(compare_events.right.pos, "0")


@pytest.mark.parametrize(
    ("text", "snippet"),
    [
        ("x   ==   null", "null"),
        ("x == true", "true"),
        ("flag != false", "false"),
        ("a == 'q'", "'q'"),
        ("\tx\n ==  30d", "30d"),
    ],
)
def test_positions_of_literals(text: str, snippet: str) -> None:
    node = parse(text)
    assert isinstance(node, Compare)
    assert text[node.right.pos :].startswith(snippet)


def test_positions_of_is_null_not_and_parentheses() -> None:
    text = "a and (not   b or c is not null)"
    tree = parse(text)
    assert isinstance(tree, And)
    inner = tree.items[1]
    assert isinstance(inner, Or)
    negation, is_null = inner.items
    assert isinstance(negation, Not) and isinstance(is_null, IsNull)
    assert text[inner.pos] == "n"  # the group starts at its first token, inside the parenthesis
    assert text[negation.pos :].startswith("not   b")
    assert text[negation.operand.pos :].startswith("b or")
    assert text[is_null.pos :].startswith("c is not null")


# -- syntax errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pos", "message"),
    [
        ('plan == "abc', 8, "unexpected character '\"' (strings need matching quotes)"),
        ("plan == 'abc", 8, 'unexpected character "\'" (strings need matching quotes)'),
        ('plan in ["a", "b]', 14, "strings need matching quotes"),
        ('plan = "a"', 5, "unexpected '='; use == to compare"),
        ("clv >", 5, "the rule ends too early"),
        ("clv > 3 and", 11, "the rule ends too early"),
        ("clv > 3 or ", 11, "the rule ends too early"),
        ("not", 3, "the rule ends too early"),
        ("(a", 2, "the rule ends too early"),
        ("x in [1,", 8, "the rule ends too early"),
        ('events("a", within=30d', 22, "the rule ends too early"),
        ("x is", 4, "the rule ends too early"),
        ("", 0, "the rule is empty"),
        ("   \n\t", 0, "the rule is empty"),
        ("clv > 3 $", 8, "unexpected character '$'"),
        ("clv & 3", 4, "unexpected character '&'"),
        ("clv > 3 || nps > 1", 8, "unexpected character '|'"),
        ("clv ! 3", 4, "unexpected character '!'"),
    ],
)
def test_syntax_errors_have_offset_and_message(text: str, pos: int, message: str) -> None:
    error = syntax_error(text)
    assert error.pos == pos
    assert message in error.message
    assert str(error) == error.message


@pytest.mark.parametrize(
    ("text", "pos", "token"),
    [
        ("clv > 3 clv", 8, "clv"),
        ("== 3", 0, "=="),
        ("x ==== 3", 4, "=="),
        ("x in 3", 5, "3"),
        ("x is nul", 5, "nul"),
        ("x in [1 2]", 8, "2"),
        ("a and or b", 6, "or"),
        ("clv >= 3days", 8, "days"),
        ('x == "a" "b"', 9, '"b"'),
        ("f(,)", 2, ","),
        ("x == .5", 5, "."),
        ("clv > 3)", 7, ")"),
        ("x in [1,]", 8, "]"),
    ],
)
def test_unexpected_tokens_are_named_at_their_offset(text: str, pos: int, token: str) -> None:
    error = syntax_error(text)
    assert error.pos == pos
    assert error.message.startswith(f"unexpected {token!r}; expected ")


def test_expected_tokens_are_described_in_words() -> None:
    """Regression: the list used to be cut to six entries after sorting, so quoted punctuation
    crowded out the useful words ("a number" after `x ==`), and lark's end marker leaked as ``$end``."""
    after_operator = syntax_error("x == .5").message
    assert "a number" in after_operator and "a quoted string" in after_operator, after_operator
    after_value = syntax_error("clv > 3 clv").message
    assert "$end" not in after_value and "'or'" in after_value, after_value


def test_keyword_argument_before_positional_argument() -> None:
    error = syntax_error('events(within=3d, "a") > 0')
    assert error.message == "a positional argument cannot follow a keyword argument"
    assert error.pos == 7


@pytest.mark.parametrize(("text", "pos"), [('x == "a\nb"', 5), ("a or x == 'one\r\ntwo'", 10)])
def test_strings_cannot_span_lines(text: str, pos: int) -> None:
    error = syntax_error(text)
    assert error.message == "a string cannot contain a line break; write \\n"
    assert error.pos == pos


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ('"a\\q"', "a\\q"),
        ('"\\x4"', "\\x4"),
        ("'\\N{nope}'", "\\N{nope}"),
        ('"C:\\\\temp"', "C:\\temp"),
        ('"\\"quoted\\""', '"quoted"'),
        ('"trailing\\\\"', "trailing\\"),
    ],
)
def test_backslashes_other_than_the_known_escapes_stay_as_written(source: str, value: str) -> None:
    node = parse(f"plan == {source}")
    assert isinstance(node, Compare)
    assert node.right == Literal(value, "string", 8)


def test_unknown_escapes_parse_the_same_whatever_the_warnings_filter() -> None:
    """Regression: strings were decoded with ``ast.literal_eval``, which only *warns* about an
    unknown escape such as ``\\q``, so under ``-W error`` the same rule was a syntax error."""
    text = 'plan == "a\\q"'
    outcomes: list[tuple[str, object]] = []
    for action in ("ignore", "error"):
        with warnings.catch_warnings():
            warnings.simplefilter(action)
            try:
                outcomes.append(("tree", parse(text)))
            except RuleError as exc:
                outcomes.append(("error", exc.message))
    assert outcomes[0] == outcomes[1], outcomes
