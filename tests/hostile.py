"""A corpus of hostile and careless inputs: playbooks, test files, templates, CSV and JSON Lines files.

Each case is built from a good file of a project made by ``automation init`` (playbooks/lifecycle.yaml,
its test file and templates), so it fails for one reason only, and says at which line the tool must
report it. Large inputs are generated here rather than kept as files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """A hostile file: its name, how to make its text from the good file, and the line to report."""

    name: str
    make: Callable[[str], str | bytes]
    line: Callable[[str], int] | None  # of the good file's text; None: a file-level problem (no line)
    says: str  # a phrase the message must contain


def _append(extra: str) -> Callable[[str], str]:
    return lambda good: good + extra


def after(k: int) -> Callable[[str], int]:
    """The k-th line after the good file's last one (for appended text)."""
    return lambda good: len(good.splitlines()) + k


def at(line: int) -> Callable[[str], int]:
    return lambda _good: line


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """``l0: &l0 ["lol", ...]``, ``l1: &l1 [*l0, *l0, ...]``, ...: ``width ** levels`` values expanded."""
    lines = []
    for i in range(levels):
        item = f"*l{i - 1}" if i else '"lol"'
        lines.append(f"l{i}: &l{i} [" + ", ".join([item] * width) + "]")
    return "\n".join(lines) + "\n"


def _rule(good: str, rule: str) -> str:
    return good.replace("    when: orders_count >= 5", f"    when: {rule}")


RULE_LINE = 18  # `when: orders_count >= 5` in the playbook of `automation init`

PLAYBOOKS: list[Case] = [
    Case("alias-bomb", _append(alias_bomb()), after(6), "once aliases are expanded"),
    Case(
        "deep-flow", _append("deep: " + "[" * 20_000 + "]" * 20_000 + "\n"), after(1), "nested more than 50"
    ),
    Case(
        "deep-block",
        _append("".join("  " * i + f"k{i}:\n" for i in range(400))),
        after(51),
        "nested more than 50",
    ),
    Case(
        "python-tag",
        _append("hook: !!python/object/apply:os.system [touch pwned]\n"),
        after(1),
        "is not allowed",
    ),
    Case("custom-tag", _append("hook: !include /etc/passwd\n"), after(1), "is not allowed"),
    Case("self-alias", _append("loop: &loop [1, *loop]\n"), after(1), "refers to a value that contains it"),
    Case("huge-file", _append("#" * 1_100_000 + "\n"), None, "the limit is 1,048,576"),
    Case("not-utf8", lambda good: good.encode() + b"\xff\xfe\n", None, "cannot read the file"),
    Case(
        "rule-parens",
        lambda g: _rule(g, "(" * 400 + "clv > 1" + ")" * 400),
        at(RULE_LINE),
        "nests more than 32",
    ),
    Case("rule-nots", lambda g: _rule(g, "not " * 900 + "clv > 1"), at(RULE_LINE), "nests more than 32"),
    Case("rule-long", lambda g: _rule(g, "not " * 20_000 + "clv > 1"), at(RULE_LINE), "characters long"),
    Case(
        "rule-sql", lambda g: _rule(g, "clv > 1; DROP TABLE customer"), at(RULE_LINE), "unexpected character"
    ),
    Case("unknown-field", _append("owner: root\n"), after(1), "unknown field"),
    Case("not-a-mapping", lambda good: "- just\n- a list\n", at(1), "a playbook is a mapping"),
    Case("yaml-syntax", _append("broken: [\n"), after(2), "invalid YAML"),
]

TEST_FILES: list[Case] = [
    Case("test-alias-bomb", _append(alias_bomb()), after(6), "once aliases are expanded"),
    Case(
        "test-deep",
        _append("deep: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n"),
        after(1),
        "nested more than 50",
    ),
    Case(
        "test-python-tag",
        _append("x: !!python/object/new:os.system [touch pwned]\n"),
        after(1),
        "is not allowed",
    ),
]

_TAIL = "{% block text %}t{% endblock %}{% block html %}<p>h</p>{% endblock %}"

TEMPLATES: list[Case] = [
    Case(
        "template-deep",
        lambda _: "{% block subject %}" + "{% if true %}" * 2000 + "{% endblock %}" + _TAIL,
        at(1),
        "nested too deeply",
    ),
    Case(
        "template-huge",
        lambda _: "{% block subject %}s{% endblock %}" + _TAIL + "a" * 300_000,
        at(1),
        "the limit is",
    ),
    Case("template-not-utf8", lambda _: b"{% block subject %}\xff{% endblock %}", at(1), "not valid UTF-8"),
    Case(
        "template-sandbox",
        lambda _: "{% block subject %}{{ ''.__class__.__mro__ }}{% endblock %}" + _TAIL,
        at(1),
        "not allowed in a template",
    ),
    Case(
        "template-range",
        lambda _: "{% block subject %}{{ range(10**9)|list|length }}{% endblock %}" + _TAIL,
        at(1),
        "",
    ),
]

_HEADER = "id,email,phone,first_name,timezone,orders_count,attributes\n"

CUSTOMER_FILES: list[tuple[str, str, bytes, int, str]] = [
    # (name, suffix, content, line of the first rejected row, phrase)
    ("csv-nul", "csv", (_HEADER + "cus_x,a@example.com,,A\x00B,UTC,1,{}\n").encode(), 2, "NUL"),
    ("csv-not-utf8", "csv", _HEADER.encode() + b"cus_x,a@example.com,,\xff\xfe,UTC,1,{}\n", 2, "UTF-8"),
    (
        "csv-crlf-id",
        "csv",
        (_HEADER + '"cus\r\nx",a@example.com,,A,UTC,1,{}\n').encode(),
        2,
        "control character",
    ),
    (
        "csv-huge-field",
        "csv",
        (_HEADER + "cus_x,a@example.com,,A" + "a" * 200_000 + ",UTC,1,{}\n").encode(),
        2,
        "",
    ),
    ("csv-deep-json", "csv", (_HEADER + 'cus_x,,,,,,"' + "[" * 100_000 + '"\n').encode(), 2, "attributes"),
    ("csv-bad-values", "csv", (_HEADER + "cus_x,not-an-email,12,A,Mars/Base,-1,[]\n").encode(), 2, "email"),
    ("jsonl-deep", "jsonl", ("[" * 100_000 + "\n").encode(), 1, "not valid JSON"),
    (
        "jsonl-huge-line",
        "jsonl",
        ('{"id": "cus_x", "first_name": "' + "a" * 5_000_000 + '"}\n').encode(),
        1,
        "",
    ),
    ("jsonl-big-int", "jsonl", ('{"id": "cus_x", "orders_count": ' + "9" * 5_000 + "}\n").encode(), 1, ""),
    ("jsonl-infinity", "jsonl", b'{"id": "cus_x", "clv": Infinity}\n{"id": "cus_y", "clv": 1e999}\n', 1, ""),
    ("jsonl-types", "jsonl", b'{"id": ["cus_x"], "email": {"a": 1}}\n{"id": "c\\u2028x"}\n', 1, "id"),
    ("jsonl-unknown", "jsonl", b'{"id": "cus_x", "__proto__": 1}\n', 1, "unknown column"),
]

EVENT_FILES: list[tuple[str, str, bytes, int, str]] = [
    (
        "events-unknown-customer",
        "jsonl",
        b'{"customer_id": "nobody", "name": "x", "occurred_at": "2026-01-01"}\n',
        1,
        "unknown customer",
    ),
    (
        "events-deep-properties",
        "jsonl",
        (
            '{"customer_id": "cus_00001", "name": "x", "occurred_at": "2026-01-01", "properties": '
            + "[" * 50_000
            + "]" * 50_000
            + "}\n"
        ).encode(),
        1,
        "",
    ),
    ("events-bad-time", "csv", b"customer_id,name,occurred_at\ncus_00001,x,yesterday\n", 2, "ISO 8601"),
]
