"""Templates too large, not UTF-8, or nested too deeply are syntax errors at their line, found at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from automation.messages.sandbox import MAX_TEMPLATE_BYTES
from automation.messages.store import RenderError, TemplateStore

TAIL = "{% block text %}t{% endblock %}{% block html %}h{% endblock %}"


def problems_of(tmp_path: Path, source: bytes) -> list[tuple[int, str]]:
    (tmp_path / "hostile.email.j2").write_bytes(source)
    started = time.monotonic()
    problems = TemplateStore(tmp_path).check("hostile", "email")
    assert time.monotonic() - started < 2.0
    return [(p.line, p.message) for p in problems]


NESTED = "syntax error: the template is nested too deeply to compile; use fewer nested blocks or expressions"


@pytest.mark.parametrize(
    ("body", "line"),
    [
        pytest.param("{% if true %}" * 2000 + "x" + "{% endif %}" * 2000, 1, id="if-blocks"),
        pytest.param("\n{{ " + "(" * 2000 + "1" + ")" * 2000 + " }}", 2, id="parentheses"),
        pytest.param("\n\n{{ " + "+".join(["1"] * 5000) + " }}", 1, id="operator-chain"),
        pytest.param("{% for a in [1] %}" * 25 + "x" + "{% endfor %}" * 25, 1, id="python-loop-limit"),
    ],
)
def test_templates_nested_too_deeply_are_syntax_errors(tmp_path: Path, body: str, line: int) -> None:
    source = "{% block subject %}" + body + "{% endblock %}" + TAIL
    assert problems_of(tmp_path, source.encode()) == [(line, NESTED)]


def test_nesting_as_templates_use_it_compiles(tmp_path: Path) -> None:
    body = "{% if true %}" * 15 + "{% for a in [1] %}" * 10 + "{{ ((1 + 2) * 3) }}" + "{% endfor %}" * 10
    source = "{% block subject %}" + body + "{% endif %}" * 15 + "{% endblock %}" + TAIL
    assert problems_of(tmp_path, source.encode()) == []


def test_a_template_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    source = ("{% block subject %}s{% endblock %}" + TAIL).encode() + b"a" * MAX_TEMPLATE_BYTES
    ((line, message),) = problems_of(tmp_path, source)
    assert line == 1
    assert message == f"syntax error: the file is {len(source):,} bytes; the limit is {MAX_TEMPLATE_BYTES:,}"


def test_a_template_that_is_not_utf8_is_a_syntax_error(tmp_path: Path) -> None:
    assert problems_of(tmp_path, b"{% block subject %}\xff\xfe{% endblock %}" + TAIL.encode()) == [
        (1, "syntax error: not valid UTF-8 (byte 20)")
    ]


def test_rendering_a_hostile_template_is_a_render_error(tmp_path: Path) -> None:
    (tmp_path / "hostile.email.j2").write_text("{% block subject %}" + "{% if true %}" * 2000 + TAIL)
    with pytest.raises(RenderError) as caught:
        TemplateStore(tmp_path).render("hostile", "email", {})
    assert "nested too deeply" in str(caught.value)
