"""The playbook field ``react``: ``immediately`` by default, ``on schedule`` on request, and a wrong value
named with its file, line and column; the JSON Schema lists both values."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from automation.errors import PlaybookError
from automation.playbook.models import load_playbook
from automation.playbook.schema import playbook_schema

PLAYBOOK = """\
name: x
schedule: every 1 hours
REACT
segments:
  - name: s
    touch: none
stages:
  - name: t
    when: "true"
"""


def write(tmp_path: Path, react: str | None) -> Path:
    path = tmp_path / "pb.yaml"
    path.write_text(PLAYBOOK.replace("REACT\n", f"react: {react}\n" if react is not None else ""))
    return path


def test_react_defaults_to_immediately(tmp_path: Path) -> None:
    assert load_playbook(write(tmp_path, None)).playbook.react == "immediately"


@pytest.mark.parametrize("value", ["immediately", "on schedule", '"on schedule"'])
def test_react_takes_both_values(tmp_path: Path, value: str) -> None:
    assert load_playbook(write(tmp_path, value)).playbook.react == value.strip('"')


@pytest.mark.parametrize("value", ["sometimes", "true", "on", "1", "Immediately"])
def test_a_wrong_react_value_names_the_choices_and_its_position(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, value)
    with pytest.raises(PlaybookError) as info:
        load_playbook(path)
    (problem,) = info.value.problems
    rendered = problem.render()
    assert rendered.startswith(f"{path}:3:8: react: expected `immediately` or `on schedule`, got "), rendered


def test_the_schema_lists_the_react_values_with_the_default() -> None:
    schema = playbook_schema()
    react = schema["properties"]["react"]
    assert react["enum"] == ["immediately", "on schedule"]
    assert react["default"] == "immediately"
    assert "on schedule" in react["description"]
    validator = jsonschema.Draft202012Validator(schema)
    base = {
        "name": "x",
        "segments": [{"name": "s", "touch": "none"}],
        "stages": [{"name": "t", "when": "true"}],
    }
    assert not list(validator.iter_errors({**base, "react": "on schedule"}))
    assert list(validator.iter_errors({**base, "react": "sometimes"}))
